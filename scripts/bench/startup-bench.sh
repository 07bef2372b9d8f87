#!/usr/bin/env bash
# Start-up benchmark (issues 11 and 15): short commands where the serial
# start and end of a run are most of it, A/B alternating, medians of wall and
# CPU (perf stat task-clock: /usr/bin/time's 10 ms ticks are too coarse here):
#   backup:  snapdump backup 900 --mode stop --storage r1 (a 64 MiB raw disk,
#            1 MiB of data, into a repository: every run after the first is an
#            incremental with nothing changed)
#   restore: snapdump restore <64 MiB VMA .zst> 901 --storage local --force
#   vmlist:  snapdump vm list
# Each binary gets its own config directory and storages, set up once.
#
# Usage (root): scripts/bench/startup-bench.sh A_BINARY B_BINARY
# Environment: RUNS=20 SNAPDUMP_BENCH_DIR=/var/tmp
set -euo pipefail
A=$(readlink -f "$1"); B=$(readlink -f "$2")
RUNS=${RUNS:-20}
WORK="${SNAPDUMP_BENCH_DIR:-/var/tmp}/snapdump-startup-bench-$$"
log() { echo "bench: $*" >&2; }
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT

setup() {  # setup NAME BINARY: storages, guest 900 with data, one VMA archive
  local n=$1 sd=$2 cfg=$WORK/$1/etc
  mkdir -p "$WORK/$n/store"
  "$sd" --config-dir "$cfg" storage add dir local --path "$WORK/$n/store" --content images,backup >/dev/null
  "$sd" --config-dir "$cfg" storage add repo r1 --path "$WORK/$n/repo" >/dev/null
  "$sd" --config-dir "$cfg" repo init r1 >/dev/null
  "$sd" --config-dir "$cfg" vm create 900 --scsi0 local:64M >/dev/null
  local disk; disk=$("$sd" --config-dir "$cfg" volume path local:900/vm-900-disk-0.raw)
  head -c 1048576 /dev/urandom | dd of="$disk" bs=1M seek=3 conv=notrunc status=none
  "$sd" --config-dir "$cfg" backup 900 --mode stop --storage r1 --quiet >/dev/null
  "$sd" --config-dir "$cfg" backup 900 --mode stop --storage local --compress zstd --quiet >/dev/null
  ls "$WORK/$n/store/dump/"vzdump-qemu-900-*.vma.zst | head -1
}

declare -A WALL CPU LAST
measure() {  # measure KEY BINARY ARGS...: wall (ms) and CPU (task-clock ms, all threads and children)
  local key=$1 sd=$2; shift 2
  local t0 t1 cpu
  t0=$(date +%s%N)
  cpu=$(perf stat -x, -e task-clock "$sd" "$@" 2>&1 >/dev/null | grep task-clock | cut -d, -f1)
  t1=$(date +%s%N)
  WALL[$key]+="$(( (t1 - t0) / 1000 ))e-3 "; CPU[$key]+="$cpu "
}
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR % 2) m=a[(NR+1)/2]; else m=(a[NR/2]+a[NR/2+1])/2; printf "%.1f\n", m}'; }

ARCH_A=$(setup A "$A"); ARCH_B=$(setup B "$B")
log "set up; load $(cut -d' ' -f1-3 /proc/loadavg)"
for i in $(seq 1 "$RUNS"); do
  for v in A B; do
    sd=$A; arch=$ARCH_A; [ $v = B ] && { sd=$B; arch=$ARCH_B; }
    cfg=$WORK/$v/etc
    # Snapshot names have one-second resolution: a backup in the second its previous one
    # ended waits for the next second. Start each in a fresh second, so no run measures that wait.
    while [ "$(date +%s)" -le "${LAST[$v]:-0}" ]; do sleep 0.02; done
    measure "backup $v" "$sd" --config-dir "$cfg" backup 900 --mode stop --storage r1 --quiet
    LAST[$v]=$(date +%s)
    measure "restore $v" "$sd" --config-dir "$cfg" restore "$arch" 901 --storage local --force
    measure "vmlist $v" "$sd" --config-dir "$cfg" vm list
  done
done
echo "| command | A wall (ms) | B wall (ms) | A CPU (ms) | B CPU (ms) |"
echo "|---|---|---|---|---|"
for c in backup restore vmlist; do
  echo "| $c | $(median <<<"${WALL[$c A]}") | $(median <<<"${WALL[$c B]}") | $(median <<<"${CPU[$c A]}") | $(median <<<"${CPU[$c B]}") |"
done
echo "runs: $RUNS each, alternating; load after: $(cut -d' ' -f1-3 /proc/loadavg)"
