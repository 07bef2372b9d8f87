#!/usr/bin/env bash
# Incremental-forever benchmark (issue 11): a second backup after PCT % of a
# real disk changed (scripts/bench/real-disk.sh image SIZE_MIB, changed with
# `real-disk.sh change … PCT SEED MODE`), where the storage says what changed,
# against `restic backup` and `borg create -C zstd,3` of the same image before
# and after the same change.
#
# snapdump: Tests/StorageTests/IncrementalBench.swift on btrfs (btrfs send)
# and reflink XFS (FIEMAP), each on a loop filesystem of its own made here;
# it also times a full re-read of the changed snapshot (the repository
# without change tracking) and checks both indexes are equal.
# and zfs-fuse (zfs send -i), on a pool of its own on a file vdev.
#
# Usage (root): scripts/bench/incremental-bench.sh [SIZE_MIB [PCT [SEED [MODE]]]]
#   defaults 2048 1 11 extents. The debug test bundle must be built
#   (swift build --build-tests). Results appended to .build/bench/incremental-bench.md.
set -euo pipefail
HERE=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
ROOT=$(readlink -f "$HERE/../..")
SIZE=${1:-2048} PCT=${2:-1} SEED=${3:-11} MODE=${4:-extents}
RESULTS=${BENCH_RESULTS:-$ROOT/.build/bench/incremental-bench.md}
W=$(mktemp -d "${SNAPDUMP_BENCH_DIR:-/var/tmp}/snapdump-incr-bench.XXXXXX")
log() { echo "bench: $*" >&2; }
ZPOOL=sdincr$$
cleanup() {
  for _ in 1 2 3 4 5 6 7 8 9 10; do zpool destroy -f "$ZPOOL" 2>/dev/null && break; zpool list "$ZPOOL" >/dev/null 2>&1 || break; sleep 1; done
  for m in "$W/btrfs" "$W/xfs"; do umount "$m" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT
IMG=$("$HERE/real-disk.sh" image "$SIZE")
mkdir -p "$W/btrfs" "$W/xfs" "$(dirname "$RESULTS")"
truncate -s $((SIZE * 3))M "$W/btrfs.img" "$W/xfs.img"
mkfs.btrfs -q "$W/btrfs.img" && mount -o loop "$W/btrfs.img" "$W/btrfs"
mkfs.xfs -q -m reflink=1 "$W/xfs.img" && mount -o loop "$W/xfs.img" "$W/xfs"
truncate -s $((SIZE * 3))M "$W/zpool.img"
zpool create -m "$W/zmnt" "$ZPOOL" "$W/zpool.img"

out="$W/snapdump.md"
log "snapdump on btrfs, reflink XFS and zfs-fuse ($SIZE MiB, $PCT % $MODE, seed $SEED)"
(cd "$ROOT" && SNAPDUMP_BENCH_IMAGE="$IMG" SNAPDUMP_BENCH_CHANGE="$PCT $SEED $MODE" \
  SNAPDUMP_BENCH_BTRFS="$W/btrfs" SNAPDUMP_BENCH_XFS="$W/xfs" SNAPDUMP_BENCH_ZPOOL="$ZPOOL" \
  SNAPDUMP_BENCH_OUT="$out" SNAPDUMP_BENCH_WORK="$W" \
  swift test --skip-build --no-parallel --filter IncrementalBench >"$W/test.log" 2>&1) || { tail -30 "$W/test.log" >&2; exit 1; }

if [ -n "${SKIP_BASELINES:-}" ]; then { echo "### incremental-bench $(date -u +%FT%TZ): $SIZE MiB, $PCT % ($MODE, seed $SEED)"; cat "$out"; } | tee -a "$RESULTS"; exit 0; fi
# restic and borg: the same image, backed up, changed the same way, backed up again.
for tool in restic borg bc; do
  command -v "$tool" >/dev/null || { log "installing restic, borgbackup, bc"; apt-get install -y -q restic borgbackup bc >&2; break; }
done
cp --sparse=always "$IMG" "$W/disk.raw"
secs() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null 2>&1; t1=$(date +%s.%N); echo "$t1 - $t0" | bc; }
export RESTIC_PASSWORD=bench BORG_PASSPHRASE=bench BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
restic init -q -r "$W/restic" >/dev/null
borg init -e none "$W/borg"
r1=$(secs restic backup -q -r "$W/restic" "$W/disk.raw")
b1=$(secs borg create -C zstd,3 "$W/borg::one" "$W/disk.raw")
changed=$("$HERE/real-disk.sh" change "$W/disk.raw" "$PCT" "$SEED" "$MODE")
r2=$(secs restic backup -q -r "$W/restic" "$W/disk.raw")
b2=$(secs borg create -C zstd,3 "$W/borg::two" "$W/disk.raw")

{
  echo "### incremental-bench $(date -u +%FT%TZ): $SIZE MiB real disk, $PCT % changed ($MODE, seed $SEED, $changed B), load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  echo "| storage | first (full) backup | change | incremental: chunks read | incremental time | full re-read (no tracking) | load |"
  echo "|---|---|---|---|---|---|---|"
  cat "$out"
  echo
  echo "restic $(restic version | cut -d' ' -f2): first $r1 s, second $r2 s. borg $(borg --version | cut -d' ' -f2) (zstd,3): first $b1 s, second $b2 s."
  echo
} | tee -a "$RESULTS"
