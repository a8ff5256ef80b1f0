#!/usr/bin/env bash
# The test command (README, CI): installs test dependencies, runs the whole
# suite on librdkafka's in-process mock broker, runs each benchmark once
# with a small N (a smoke run), checks deploy/ and the
# Dockerfile offline, then runs the integration suite again against a tansu
# broker, which also stores transactional offsets (the mock does not), so the
# exactly-once commit test runs there.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh
# The BigQuery tests start this emulator (tests/it/common/warehouse.rs).
export ALERTSVC_BQEMULATOR="${ALERTSVC_BQEMULATOR:-${ALERTSVC_BQ_VENV:-$HOME/.cache/alertsvc/bqemulator-venv}/bin/bqemulator}"

# The integration tests wait (on brokers, timeouts, child processes) far
# more than they compute: at libtest's default of one thread per core the
# suite took 463 s of wall time and ~60 s of CPU on the 2-core machine; 8 at
# a time it took 127 s (150 s on tansu instead of 483 s), nothing else
# changed. ALERTSVC_TEST_THREADS overrides it.
threads="${ALERTSVC_TEST_THREADS:-8}"

echo "== tests on the in-process mock broker ($threads at a time)" >&2
cargo test -- --test-threads "$threads"

# The benchmarks are not tests, but they must keep compiling and running:
# each runs once with a small N and prints its figures, which nothing
# checks (a debug build's figures mean nothing). In the dev profile the
# benches reuse what `cargo test` just built; their release build would add
# ~5 min. 35 s on the 2-core machine, plus a few seconds to build them.
echo "== benchmark smoke run (dev profile, small N, figures not checked)" >&2
bench() { cargo bench --quiet --profile dev --bench "$@"; }
bench enrich -- core 2000
bench enrich -- bootstrap 20000
bench enrich -- e2e 3000
bench notify -- paced 10 4
bench notify -- unlimited 400
bench produce -- sql 1000 3000
bench produce -- bigquery 2000

echo "== deployment: kustomize render, Kubernetes schemas, Dockerfile lint" >&2
scripts/check-deploy.sh

echo "== integration tests against tansu (transactions included)" >&2
export TANSU_DIR="${TANSU_DIR:-$(mktemp -d /tmp/alertsvc-tansu.XXXXXX)}"
bootstrap="$(scripts/tansu.sh start)"
trap 'scripts/tansu.sh stop' EXIT
ALERTSVC_TEST_BOOTSTRAP="$bootstrap" cargo test --test it -- --include-ignored --test-threads "$threads"
