#!/usr/bin/env bash
# The README's first command: the whole pipeline on embedded defaults
# (`alertsvc demo`): an in-process Kafka broker, a SQLite warehouse,
# produce → enrich → notify, and a local Slack stand-in whose alerts print
# here and show on http://127.0.0.1:8090/. Runs until Ctrl-C; arguments go
# to `alertsvc demo` (`--events N`, `--exit-after 2m` end it by itself).
set -euo pipefail
cd "$(dirname "$0")/.."

# The first build compiles ~480 crates and librdkafka: say so, and let
# cargo show its progress, rather than leave a silent terminal.
binary="${CARGO_TARGET_DIR:-target}/debug/alertsvc"
if [[ ! -x "$binary" ]]; then
  echo "demo: first build of alertsvc (about 4 minutes on 2 cores; cargo's progress follows)." >&2
  echo "demo: later runs start in seconds." >&2
fi
cargo build --bin alertsvc
exec "$binary" demo "$@"
