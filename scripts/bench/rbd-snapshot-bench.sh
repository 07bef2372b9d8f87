#!/usr/bin/env bash
# rbd snapshot creation at 1 and 8 GiB side by side (issue 14's BENCHMARKS.md
# row): a single-node Ceph of its own (scripts/fixtures/ceph.sh with its own
# directory and ports; the shared test cluster is left alone), one 1 GiB and
# one 8 GiB image full of data, then RUNS rounds that alternate the two:
# `snapdump volume path` (CLI start-up + connect + image stat: the floor),
# then `snapdump snapshot create` and `snapshot delete`. Wall and CPU time
# (user+sys of the snapdump process) per call; medians. Then the librbd calls
# alone from one client (python3-rbd), alternating the images, INPROC_RUNS rounds.
#
# The images are filled with `rbd bench --io-type write` (4 MiB sequential
# writes, 8 in flight): every object of each image exists, as after a full
# disk; an RBD snapshot copies no data, so the content does not matter, and
# this fill is much faster than the qemu-nbd stream of storage-bench.sh
# (≈ 8.5 MB/s here, 16 min for 8 GiB).
#
# Free space is checked first (the OSD is a sparse file on $SNAPDUMP_BENCH_DIR;
# an earlier run died when the shared disk filled). Everything is removed on exit.
#
# Usage (root): scripts/bench/rbd-snapshot-bench.sh
# Environment:  RUNS=15  SIZES="1 8" (GiB)  SNAPDUMP_BENCH_BIN=PATH (default .build/debug/snapdump)
#               INPROC_RUNS=40  SNAPDUMP_BENCH_DIR=/var/tmp  MIN_FREE_GIB=20
set -euo pipefail

HERE=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
ROOT=$(readlink -f "$HERE/../..")
RUNS=${RUNS:-15}
SIZES=${SIZES:-"1 8"}
BASE=${SNAPDUMP_BENCH_DIR:-/var/tmp}
MIN_FREE_GIB=${MIN_FREE_GIB:-20}
WORK="$BASE/snapdump-rbdsnap-bench-$$"
BIN=${SNAPDUMP_BENCH_BIN:-$ROOT/.build/debug/snapdump}

log() { echo "bench: $*" >&2; }
die() { echo "bench: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root"
[ -x "$BIN" ] || die "$BIN not built (swift build)"
command -v rbd >/dev/null || die "rbd is missing (scripts/install-deps.sh)"
free_gib=$(( $(df --output=avail -B1 "$BASE" | tail -1) >> 30 ))
[ "$free_gib" -ge "$MIN_FREE_GIB" ] || die "$BASE has $free_gib GiB free, below MIN_FREE_GIB=$MIN_FREE_GIB"
log "$BASE: $free_gib GiB free"

export SNAPDUMP_CEPH_DIR="$WORK/ceph" SNAPDUMP_CEPH_ENV="$WORK/ceph.env" SNAPDUMP_CEPH_PORT=14500
CEPH_UP=""
cleanup() {
  set +e
  [ -n "$CEPH_UP" ] && "$ROOT/scripts/fixtures/ceph.sh" down
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$WORK/cfg"
CFG="$WORK/cfg"
sd() { "$BIN" "$@" --config-dir "$CFG"; }

median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print int((a[NR/2]+a[NR/2+1])/2)}'; }
minmax() { sort -n | awk 'NR==1{lo=$1} {hi=$1} END {print lo "–" hi}'; }

# Runs "$@" and prints "wall_ms cpu_ms" (cpu: user+sys of the process, 10 ms resolution).
timed() {
  local t0 t1
  t0=$(date +%s%N)
  /usr/bin/time -o "$WORK/time" -f "%U %S" "$@" >/dev/null || die "failed: $*"
  t1=$(date +%s%N)
  awk -v w=$(( (t1 - t0) / 1000000 )) '{printf "%d %d\n", w, ($1 + $2) * 1000}' "$WORK/time"
}

CEPH_UP=1
"$ROOT/scripts/fixtures/ceph.sh" up
# shellcheck disable=SC1090
. "$SNAPDUMP_CEPH_ENV"
sd storage add rbd brbd --pool "$SNAPDUMP_TEST_CEPH_POOL" --monhost "$SNAPDUMP_TEST_CEPH_MONHOST" --keyring "$SNAPDUMP_TEST_CEPH_KEYRING"

declare -A VOL
for s in $SIZES; do
  VOL[$s]=$(sd volume alloc brbd $((200 + s)) "${s}G" --format raw)
  img=${VOL[$s]#brbd:}
  log "filling $img ($s GiB)"
  t=$(date +%s%N)
  rbd --conf "$SNAPDUMP_TEST_CEPH_CONF" bench --io-type write --io-pattern seq --io-size 4M --io-threads 8 \
    --io-total "${s}G" "$SNAPDUMP_TEST_CEPH_POOL/$img" >/dev/null
  log "filled $img in $(( ($(date +%s%N) - t) / 1000000 )) ms"
  used=$(rbd --conf "$SNAPDUMP_TEST_CEPH_CONF" du "$SNAPDUMP_TEST_CEPH_POOL/$img" 2>/dev/null | awk 'NR==2 {print $4, $5}')
  log "$img: $used used"
done
sync

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
declare -A WALL CPU FLOOR
for i in $(seq 1 "$RUNS"); do
  for s in $SIZES; do
    read -r w _ < <(timed "$BIN" volume path "${VOL[$s]}" --config-dir "$CFG")
    FLOOR[$s]+="$w "
    read -r w c < <(timed "$BIN" snapshot create "${VOL[$s]}" --name "bench$i" --config-dir "$CFG")
    WALL[$s]+="$w "
    CPU[$s]+="$c "
    sd snapshot delete "${VOL[$s]}" --name "bench$i"
  done
  log "round $i: ${WALL[*]}"
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

echo "| volume | snapshot create median ms | range ms | CPU median ms | CLI start-up (volume path) median ms | net median ms |"
echo "|---|---:|---|---:|---:|---:|"
for s in $SIZES; do
  med=$(tr ' ' '\n' <<<"${WALL[$s]}" | grep . | median)
  fl=$(tr ' ' '\n' <<<"${FLOOR[$s]}" | grep . | median)
  echo "| $s GiB | $med | $(tr ' ' '\n' <<<"${WALL[$s]}" | grep . | minmax) | $(tr ' ' '\n' <<<"${CPU[$s]}" | grep . | median) | $fl | $((med - fl)) |"
done
echo
echo "runs (ms): $(for s in $SIZES; do printf '%s GiB: %s; ' "$s" "${WALL[$s]}"; done)"

# The same calls without the CLI: one librbd client (python3-rbd) times rbd_snap_create
# and rbd_snap_remove alone, alternating the images, INPROC_RUNS rounds.
echo
echo "| volume | rbd_snap_create median ms | range ms | rbd_snap_remove median ms | client CPU per create+remove ms |"
echo "|---|---:|---|---:|---:|"
INPROC_RUNS=${INPROC_RUNS:-40} CONF="$SNAPDUMP_TEST_CEPH_CONF" POOL="$SNAPDUMP_TEST_CEPH_POOL" \
IMAGES="$(for s in $SIZES; do printf '%s=%s ' "$s" "${VOL[$s]#brbd:}"; done)" /usr/bin/python3 - <<'PY'
import os, statistics, time, rados, rbd
runs = int(os.environ["INPROC_RUNS"])
images = [tuple(x.split("=")) for x in os.environ["IMAGES"].split()]
with rados.Rados(conffile=os.environ["CONF"]) as cluster, cluster.open_ioctx(os.environ["POOL"]) as io:
    opened = {size: rbd.Image(io, name) for size, name in images}
    create = {s: [] for s, _ in images}; remove = {s: [] for s, _ in images}; cpu = {s: [] for s, _ in images}
    for i in range(runs):
        for size, _ in images:
            img = opened[size]
            c0 = time.process_time(); t0 = time.perf_counter()
            img.create_snap("inproc%d" % i)
            t1 = time.perf_counter()
            img.remove_snap("inproc%d" % i)
            t2 = time.perf_counter(); c1 = time.process_time()
            create[size].append((t1 - t0) * 1000); remove[size].append((t2 - t1) * 1000); cpu[size].append((c1 - c0) * 1000)
    for size, _ in images:
        print("| %s GiB | %.0f | %.0f–%.0f | %.0f | %.1f |" % (size, statistics.median(create[size]), min(create[size]), max(create[size]),
              statistics.median(remove[size]), statistics.median(cpu[size])))
    for img in opened.values(): img.close()
PY
echo "load average: $LOAD_START at the start, $LOAD_END at the end; $RUNS alternating rounds; binary $BIN"
for s in $SIZES; do sd volume free "${VOL[$s]}"; done
