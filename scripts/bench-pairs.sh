#!/bin/bash
# usage: BENCH_DIR=DIR scripts/bench-pairs.sh N OUT ARGS...
# Runs the binaries DIR/base and DIR/new (or those named in BINS) alternating,
# N rounds, each with ARGS (e.g. `core 200000`), appending to OUT their
# `worker(s)` and per-step lines (or the lines GREP matches, an extended
# regex: e.g. GREP='unlimited:|CPU per post|threads|alone' for the notify
# bench's `unlimited`) with `uptime` per round.
# "others" = CPU (in cores) used by everything but the bench during its run,
# from /proc/stat busy ticks minus the bench's own user+sys time.
# Needs /usr/bin/time and bc.
n=$1; out=$2; shift 2; bins=${BINS:-base new}
busy() { awk '/^cpu /{print ($2+$3+$4+$7+$8+$9)}' /proc/stat; }
hz=$(getconf CLK_TCK)
# Waits (up to QUIET_MAX s) until others used < 0.15 cores over 2 s, so
# pairs start in the machine's quiet moments; both binaries alike.
quiet() {
  local waited=0
  while [ $waited -lt ${QUIET_MAX:-120} ]; do
    a=$(busy); sleep 2; b=$(busy)
    if [ $(echo "($b-$a)/$hz/2 < 0.15" | bc -l) = 1 ]; then return; fi
    waited=$((waited+2))
  done
}
for i in $(seq 1 $n); do
  quiet
  echo "== pair $i $(date -u +%H:%M:%S) $(uptime)" >> $out
  for b in $bins; do
    b0=$(busy); t0=$(date +%s.%N)
    /usr/bin/time -f "TIME %U %S %e" -o ${TMPDIR:-/tmp}/pairs-time.txt ${BENCH_DIR:?}/$b "$@" > ${TMPDIR:-/tmp}/pairs-out.txt 2>&1
    b1=$(busy); t1=$(date +%s.%N)
    read _ u s e < ${TMPDIR:-/tmp}/pairs-time.txt
    others=$(echo "($b1-$b0)/$hz - $u - $s" | bc -l); wall=$(echo "$t1-$t0" | bc -l)
    printf -- "-- %s others %.2f cores (%.1f s of CPU over %.1f s)\n" $b $(echo "$others/$wall" | bc -l) $others $wall >> $out
    grep -E "${GREP:-worker\(s\)|core, tables as enrich keeps them|emitted event, decode and encode included}" ${TMPDIR:-/tmp}/pairs-out.txt >> $out
  done
done
echo finished >> $out
