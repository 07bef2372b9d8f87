#!/usr/bin/env bash
# Backup benchmark (issue 4): the archive phase of `snapdump backup` against
# the tools a sysadmin would otherwise pipe together, on the same disk image,
# page cache warm, runs interleaved, median of RUNS:
#   none:   snapdump backup --compress 0              vs  cp --sparse=always disk file; sync file
#   zstd:   snapdump backup --compress zstd --zstd 1  vs  zstd -3 -T1 disk -o file; sync file
#   zstd/2: snapdump backup --compress zstd --zstd 0  vs  zstd -3 -T2 …; sync file (both use both cores)
#   restore: snapdump restore (digest checked)        vs  zstd -d archive -o file; sync file
# snapdump fsyncs its archive before renaming it (an archive is only visible
# when complete and durable), so every baseline syncs its output too.
# The guest is stopped (stop mode reads the disk as it is), so this measures
# snapdump's read → hash → VMA → compress → write pipeline, not QEMU.
# The disk holds SIZE_MIB of data: half random, half base64 text (compressible),
# and a hole of the same size (never read).
#
# Usage (root or not): scripts/bench/backup-bench.sh
# Environment: RUNS=5 SIZE_MIB=1024 SKIP_BUILD=1 SNAPDUMP_BENCH_DIR=/var/tmp
set -euo pipefail
HERE=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
ROOT=$(readlink -f "$HERE/../..")
RUNS=${RUNS:-5}
SIZE_MIB=${SIZE_MIB:-1024}
WORK="${SNAPDUMP_BENCH_DIR:-/var/tmp}/snapdump-backup-bench-$$"
RESULTS=${BENCH_RESULTS:-$ROOT/.build/bench/backup-bench.md}
SD=$ROOT/.build/release/snapdump
log() { echo "bench: $*" >&2; }

cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
[ -n "${SKIP_BUILD:-}" ] || (cd "$ROOT" && swift build -c release --product snapdump 2>&1 | tail -1 >&2)
mkdir -p "$WORK/store" "$WORK/out"
export SNAPDUMP_CONFIG_DIR=$WORK/etc
"$SD" storage add dir local --path "$WORK/store" --content images,backup
"$SD" vm create 100 --scsi0 "local:$((SIZE_MIB * 2))M" >/dev/null
DISK=$("$SD" volume path local:100/vm-100-disk-0.raw)
HALF=$((SIZE_MIB / 2))
log "writing $SIZE_MIB MiB of data into $DISK"
head -c $((HALF << 20)) /dev/urandom | dd of="$DISK" bs=4M conv=notrunc status=none
head -c $((HALF * 3 / 4 << 20)) /dev/urandom | base64 -w 0 | head -c $((HALF << 20)) |
  dd of="$DISK" bs=4M seek=$((HALF / 4)) conv=notrunc status=none
# The other SIZE_MIB stay a hole; prime the page cache.
cat "$DISK" > /dev/null

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
declare -A T
run() {  # run NAME CMD…  (time of one run, appended to T[NAME])
  local name=$1; shift
  rm -rf "$WORK/out"/* "$WORK/store/dump"
  local t0 t1; t0=$(now); "$@" >/dev/null 2>&1; t1=$(now)
  T[$name]+="$(echo "$t1 - $t0" | bc) "
}

ARCHIVE_ZST=""
for i in $(seq 1 "$RUNS"); do
  log "round $i of $RUNS"
  run sd-none  "$SD" backup 100 --dumpdir "$WORK/out" --compress 0 --quiet
  run cat      sh -c "cp --sparse=always '$DISK' '$WORK/out/copy' && sync '$WORK/out/copy'"
  run sd-zstd1 "$SD" backup 100 --dumpdir "$WORK/out" --compress zstd --zstd 1 --quiet
  run zstd1    sh -c "zstd -q -3 -T1 '$DISK' -o '$WORK/out/disk.zst' && sync '$WORK/out/disk.zst'"
  run sd-zstd2 "$SD" backup 100 --dumpdir "$WORK/out" --compress zstd --zstd 0 --quiet
  run zstd2    sh -c "zstd -q -3 -T2 '$DISK' -o '$WORK/out/disk.zst' && sync '$WORK/out/disk.zst'"
done
"$SD" backup 100 --dumpdir "$WORK/arch" --compress zstd --zstd 0 --quiet >/dev/null
ARCHIVE_ZST=$(ls "$WORK"/arch/*.vma.zst)
for i in $(seq 1 "$RUNS"); do
  "$SD" vm destroy 101 >/dev/null 2>&1 || true
  run sd-restore "$SD" restore "$ARCHIVE_ZST" 101
  "$SD" vm destroy 101 >/dev/null 2>&1 || true
  run unzstd     sh -c "zstd -q -d -f --sparse '$ARCHIVE_ZST' -o '$WORK/out/disk.raw' && sync '$WORK/out/disk.raw'"
done

med() { echo "${T[$1]}" | tr ' ' '\n' | grep . | median; }
row() {  # row LABEL SNAPDUMP BASELINE BASELINE-LABEL
  local a b; a=$(med "$2"); b=$(med "$3")
  printf '| %s | %.2f s | %.0f MiB/s | %s | %.2f s | %.0f MiB/s | %.2f× |\n' "$1" "$a" "$(echo "$SIZE_MIB / $a" | bc -l)" \
    "$4" "$b" "$(echo "$SIZE_MIB / $b" | bc -l)" "$(echo "$b / $a" | bc -l)"
}
mkdir -p "$(dirname "$RESULTS")"
{
  echo "Disk: $((SIZE_MIB * 2)) MiB raw, $SIZE_MIB MiB data (half random, half base64), the rest a hole. Median of $RUNS, warm cache."
  echo "MiB/s are of data ($SIZE_MIB MiB). Ratio = baseline time / snapdump time (> 1: snapdump is faster)."
  echo
  echo "| snapdump | time | rate | baseline | time | rate | ratio |"
  echo "|---|---:|---:|---|---:|---:|---:|"
  row "backup --compress 0" sd-none cat "cp --sparse=always + sync"
  row "backup --compress zstd --zstd 1" sd-zstd1 zstd1 "zstd -3 -T1 + sync"
  row "backup --compress zstd --zstd 0 (2 threads)" sd-zstd2 zstd2 "zstd -3 -T2 + sync"
  row "restore (SHA-256 checked)" sd-restore unzstd "zstd -d --sparse + sync"
  echo
  echo "Single runs (s):"
  for k in sd-none cat sd-zstd1 zstd1 sd-zstd2 zstd2 sd-restore unzstd; do echo "- $k: ${T[$k]}"; done
} | tee "$RESULTS"
