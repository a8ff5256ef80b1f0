#!/usr/bin/env bash
# The test command (README, CI): installs test dependencies, runs the whole
# suite on librdkafka's in-process mock broker, checks deploy/ and the
# Dockerfile offline, then runs the integration suite again against a tansu
# broker, which also stores transactional offsets (the mock does not), so the
# exactly-once commit test runs there.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh
# The BigQuery tests start this emulator (tests/it/common/warehouse.rs).
export ALERTSVC_BQEMULATOR="${ALERTSVC_BQEMULATOR:-${ALERTSVC_BQ_VENV:-$HOME/.cache/alertsvc/bqemulator-venv}/bin/bqemulator}"

echo "== tests on the in-process mock broker" >&2
cargo test

echo "== deployment: kustomize render, Kubernetes schemas, Dockerfile lint" >&2
scripts/check-deploy.sh

echo "== integration tests against tansu (transactions included)" >&2
export TANSU_DIR="${TANSU_DIR:-$(mktemp -d /tmp/alertsvc-tansu.XXXXXX)}"
bootstrap="$(scripts/tansu.sh start)"
trap 'scripts/tansu.sh stop' EXIT
ALERTSVC_TEST_BOOTSTRAP="$bootstrap" cargo test --test it -- --include-ignored
