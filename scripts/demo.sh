#!/usr/bin/env bash
# The README's first command: the whole pipeline on embedded defaults
# (`alertsvc demo`): an in-process Kafka broker, a SQLite warehouse,
# produce → enrich → notify, and a local Slack stand-in whose alerts print
# here and show on http://127.0.0.1:8090/. Runs until Ctrl-C; arguments go
# to `alertsvc demo` (`--events N`, `--exit-after 2m` end it by itself).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --quiet --bin alertsvc -- demo "$@"
