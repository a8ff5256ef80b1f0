# syntax=docker/dockerfile:1
#
# alertsvc container image: one binary, its subcommands are the services
# (`enrich`, `notify`, `produce`, `migrate`, `config check`).
#
#   docker build -t alertsvc:dev .
#   docker run --rm alertsvc:dev config check
#
# Build stage: rust on Debian bookworm, the same glibc as the runtime stage.
# librdkafka is compiled from source by rdkafka-sys (configure + make, no
# cmake) and linked statically; OpenSSL and zlib are linked dynamically.
FROM rust:1.95.0-bookworm AS builder

# The full rust image already carries these; installed explicitly so that the
# build does not depend on what the base image happens to ship.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      gcc make perl pkg-config libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /build

# 1. Dependency layer: only the manifests, with stub targets. It is rebuilt
#    when Cargo.toml or Cargo.lock change, not on every source edit. Cargo
#    refuses a manifest whose declared targets are missing, so every
#    [[bench]] and [[test]] of Cargo.toml gets a stub here
#    (scripts/check_deploy.py checks that this list matches Cargo.toml).
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches tests/it \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && for stub in benches/enrich.rs benches/notify.rs benches/produce.rs tests/it/main.rs; do \
      echo 'fn main() {}' > "$stub"; \
    done \
 && cargo build --release --locked --bin alertsvc \
 && rm -rf src

# 2. The real build. `sqlx::migrate!("./migrations/…")` embeds migrations/
#    at compile time, so it must be in the build context. The stubs' mtimes
#    are older than their fingerprints; touching the entry points makes cargo
#    rebuild the crate instead of keeping the stub binary.
COPY src ./src
COPY migrations ./migrations
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin alertsvc \
 && install -m 0755 target/release/alertsvc /usr/local/bin/alertsvc \
 && /usr/local/bin/alertsvc --version

# Runtime stage: glibc, OpenSSL 3 (librdkafka's TLS), zlib (in the base
# image) and CA certificates (Kafka over TLS, Slack, BigQuery, Schema
# Registry). Nothing else.
FROM debian:bookworm-slim AS runtime

# Exact package versions are not pinned: bookworm's security updates replace
# them, which would make a pinned build fail; the base image tag pins the
# release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 alertsvc \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /var/lib/alertsvc --shell /usr/sbin/nologin alertsvc \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/alertsvc

COPY --from=builder /usr/local/bin/alertsvc /usr/local/bin/alertsvc
# default.toml, schemas/, templates/, queries/. Kubernetes mounts the
# ConfigMap made from the same files over this directory.
COPY config/ /etc/alertsvc/

ENV ALERTSVC_CONFIG_DIR=/etc/alertsvc
# SQLite files of the default config (notify's ledger, produce's state) are
# relative paths: they land here. Mount a volume for anything that must last.
WORKDIR /var/lib/alertsvc
USER 10001:10001

# enrich, notify (/slack/interactions too), produce --schedule:
# /healthz, /readyz, /metrics.
EXPOSE 8080 8081 8082

ENTRYPOINT ["/usr/local/bin/alertsvc"]
CMD ["--help"]
