#!/usr/bin/env bash
# Snapshot-mode downtime benchmark (issue 15): how long the test guest is
# frozen by `snapdump backup --mode snapshot`, and what is inside the window.
#
# Per storage type and disk size: the test guest (agent on, its second disk a
# mounted ext2 filesystem — `snapdump.fsdisk` — so fs-freeze has something to
# freeze, no workload), scsi0 of SIZE GiB and the fsdisk both on that storage;
# RUNS backups in each of two states:
#   idle  — nothing written since the last backup (host caches clean);
#   dirty — right before the backup the host wrote SIZE GiB (dd, no sync, so
#           gigabytes of dirty page cache): into scsi0 itself for raw storages
#           (the guest never reads scsi0 here: no workload), into a file beside
#           the image for qcow2 (QEMU holds the image); rbd has no host page
#           cache (librbd), so only idle.
# Each backup's summary gives the window's parts (fs-freeze, snapshot or
# overlay, fs-thaw); the host's part is the total less the guest's freeze and thaw.
#
# Storages: btrfs, dir reflink on XFS (FICLONE), zfspool on zfs-fuse (a pool of
# its own on a file vdev), dir qcow2 (QEMU overlay), rbd (the shared test
# Ceph, /run/snapdump-test/ceph.env; without it a single-node cluster of the
# bench's own, scripts/fixtures/ceph.sh). Loop filesystems, the pool and the
# cluster are the bench's own, under $SNAPDUMP_BENCH_DIR (default /var/tmp),
# all removed on exit.
#
# Usage (root): scripts/bench/downtime-bench.sh
# Environment:  RUNS=3  SIZES="1 8"  ZFS_SIZES="1"  STORAGES="btrfs xfs zfs qcow2 rbd"
#               TARGET=dump (VMA archives) or repo (a repository: incremental forever, so the
#               window also starts the next backup's base — a dirty bitmap on qcow2)
#               SNAPDUMP_GUEST_DIR (default /var/tmp/snapdump-guest)  SKIP_BUILD=1
#               SNAPDUMP_BENCH_BIN=PATH  BENCH_RESULTS=FILE (default .build/bench/downtime-bench.md)
set -euo pipefail

HERE=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
ROOT=$(readlink -f "$HERE/../..")
RUNS=${RUNS:-3}
SIZES=${SIZES:-"1 8"}
ZFS_SIZES=${ZFS_SIZES:-"1"}
STORAGES=${STORAGES:-"btrfs xfs zfs qcow2 rbd"}
GUEST=${SNAPDUMP_GUEST_DIR:-/var/tmp/snapdump-guest}
BASE=${SNAPDUMP_BENCH_DIR:-/var/tmp}
WORK="$BASE/snapdump-downtime-$$"
RESULTS=${BENCH_RESULTS:-$ROOT/.build/bench/downtime-bench.md}
VMID=9150

log() { echo "downtime-bench: $*" >&2; }
die() { echo "downtime-bench: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (loop filesystems, QEMU)"
for f in vmlinuz initramfs.gz; do [ -f "$GUEST/$f" ] || die "test guest missing: $GUEST/$f (scripts/test-guest/build.sh $GUEST)"; done
for t in mkfs.btrfs mkfs.xfs jq; do command -v "$t" >/dev/null || die "$t is missing"; done

export SNAPDUMP_CONFIG_DIR="$WORK/etc"
MOUNTS=()
ZPOOL=""
RBD_STORE=""
CEPH_UP=""
cleanup() {
  set +e
  if [ -f "$SNAPDUMP_CONFIG_DIR/qemu/$VMID.conf" ]; then
    "$BIN" vm unlock $VMID >/dev/null 2>&1
    "$BIN" vm stop $VMID >/dev/null 2>&1
    "$BIN" vm destroy $VMID >/dev/null 2>&1
  fi
  if [ -n "$ZPOOL" ]; then
    for _ in 1 2 3 4 5 6 7 8 9 10; do zpool destroy -f "$ZPOOL" 2>/dev/null && break; sleep 1; done
  fi
  [ -n "$CEPH_UP" ] && "$ROOT/scripts/fixtures/ceph.sh" down
  for m in "${MOUNTS[@]}"; do
    umount "$m" 2>/dev/null || { sleep 1; umount "$m" 2>/dev/null; } || umount -l "$m"
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -z "${SKIP_BUILD:-}" ] && [ -z "${SNAPDUMP_BENCH_BIN:-}" ]; then
  log "swift build -c release --product snapdump"
  (cd "$ROOT" && swift build -c release --product snapdump >&2)
fi
BIN=${SNAPDUMP_BENCH_BIN:-$ROOT/.build/release/snapdump}
[ -x "$BIN" ] || die "$BIN not built"
sd() { "$BIN" "$@"; }

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
mkdir -p "$WORK/dump" "$SNAPDUMP_CONFIG_DIR"
sd storage add dir bdump --path "$WORK/dump" --content backup >/dev/null
TARGET=${TARGET:-dump}
case "$TARGET" in
  dump) TARGET_STORAGE=bdump ;;
  repo) sd storage add repo brepo --path "$WORK/repo" >/dev/null; sd repo init brepo >/dev/null; TARGET_STORAGE=brepo ;;
  *) die "TARGET must be dump or repo" ;;
esac

loop_fs() { # name size-GiB mkfs-command… ; sets $mnt
  local name=$1 size=$2 img
  shift 2
  img="$WORK/$name.img"
  mnt="$WORK/$name"
  truncate -s "${size}G" "$img"
  "$@" "$img" >/dev/null
  mkdir -p "$mnt"
  mount -o loop "$img" "$mnt"
  MOUNTS+=("$mnt")
}

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%d\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

start_guest() { # storage size-GiB format
  local console="$SNAPDUMP_CONFIG_DIR/run/qemu/$VMID.serial.log"
  sd vm create $VMID --name downtime --memory 256 --agent 1 \
    --scsi0 "$1:$2G" --scsi1 "$1:64M" \
    --kernel "$GUEST/vmlinuz" --initrd "$GUEST/initramfs.gz" \
    --append "console=ttyS0 quiet panic=-1 snapdump.workload=0 snapdump.fsdisk=/dev/sdb" >/dev/null
  sd vm start $VMID >/dev/null
  for _ in $(seq 1 240); do grep -aq 'SNAPDUMP-GUEST READY' "$console" 2>/dev/null && break; sleep 0.5; done
  grep -aq 'SNAPDUMP-GUEST READY' "$console" || die "guest did not boot on $1: $(tail -5 "$console")"
  grep -aq 'SNAPDUMP-GUEST ERROR' "$console" && die "guest error on $1: $(grep -a 'SNAPDUMP-GUEST ERROR' "$console")"
  sleep 2 # the agent answers a moment after READY
}

stop_guest() {
  sd vm stop $VMID >/dev/null 2>&1 || true
  sd vm destroy $VMID >/dev/null
}

ROWS=()
# RUNS backups; one table row per (storage, size, state) with medians and every run's total.
bench_state() { # label size state dirty-target
  local label=$1 size=$2 state=$3 target=$4 i out totals=() freezes=() snaps=() thaws=() hosts=() flushes=()
  for i in $(seq 1 "$RUNS"); do
    if [ "$state" = dirty ]; then
      # Dirty page cache: no sync, no O_DIRECT; dd returns once the kernel took the data.
      dd if=/dev/zero of="$target" bs=4M count=$((size * 256)) conv=notrunc status=none
      log "$label $size GiB dirty: $(awk '/^Dirty:/ { print $2 / 1024 " MiB" }' /proc/meminfo) dirty before the backup"
    fi
    out=$(sd backup $VMID --mode snapshot --storage "$TARGET_STORAGE" --compress 0 --output-format json 2>"$WORK/backup.err") ||
      die "backup failed on $label: $(tail -5 "$WORK/backup.err")"
    local s f sn th total host fl
    s=$(echo "$out" | jq -c '.[0]')
    [ "$(echo "$s" | jq -r .ok)" = true ] || die "backup not ok on $label: $s"
    total=$(echo "$s" | jq -r '.downtimeMs // 0')
    f=$(echo "$s" | jq -r '.downtimeParts["fs-freeze"] // 0')
    th=$(echo "$s" | jq -r '.downtimeParts["fs-thaw"] // 0')
    sn=$(echo "$s" | jq -r '(.downtimeParts["snapshot"] // 0) + (.downtimeParts["overlay"] // 0)')
    host=$((total - f - th))
    fl=$(grep -ao 'flushed host caches of [0-9]* disk(s) before the freeze ([0-9]* ms)' "$WORK/backup.err" | grep -o '([0-9]* ms)' | tr -dc 0-9)
    log "$label $size GiB $state #$i: $(grep -a 'guest downtime' "$WORK/backup.err" | sed "s/.*guest downtime/guest downtime/; s/\".*//") — host part $host ms, flush before ${fl:-?} ms"
    totals+=("$total"); freezes+=("$f"); snaps+=("$sn"); thaws+=("$th"); hosts+=("$host"); flushes+=("${fl:-0}")
    rm -f "$WORK"/dump/dump/vzdump-qemu-$VMID-* "$WORK"/dump/vzdump-qemu-$VMID-* 2>/dev/null || true
    # btrfs frees a deleted snapshot's extents in the background: wait, or the next rewrite runs out of room.
    [ -n "${BTRFS_MNT:-}" ] && btrfs subvolume sync "$BTRFS_MNT" >/dev/null 2>&1 || true
    sleep 1 # archive names have a one-second resolution
  done
  m() { printf '%s\n' "$@" | median; }
  ROWS+=("| $label | $size GiB | $state | $(m "${totals[@]}") | $(m "${freezes[@]}") | $(m "${snaps[@]}") | $(m "${thaws[@]}") | **$(m "${hosts[@]}")** | $(m "${flushes[@]}") | ${totals[*]} / ${hosts[*]} |")
  log "row: ${ROWS[-1]}"
}

bench_storage() { # label storage size format
  local label=$1 store=$2 size=$3 fmt=${4:-} disk
  log "$label, $size GiB: starting the guest"
  start_guest "$store" "$size" "$fmt"
  disk=$(sd volume path "$(awk -F'[ ,]' '/^scsi0:/ { print $2 }' "$SNAPDUMP_CONFIG_DIR/qemu/$VMID.conf")")
  bench_state "$label" "$size" idle ""
  case "$fmt" in
    qcow2) bench_state "$label" "$size" dirty "$(dirname "$disk")/host-written.bin" ;;
    rbd) ;;
    *) bench_state "$label" "$size" dirty "$disk" ;;
  esac
  stop_guest
  rm -f "$(dirname "$disk")/host-written.bin"
}

max_size=0
for s in $SIZES; do [ "$s" -gt "$max_size" ] && max_size=$s; done

for st in $STORAGES; do
  case "$st" in
    btrfs)
      loop_fs btrfs $((2 * max_size + 3)) mkfs.btrfs -q -f
      BTRFS_MNT=$mnt
      sd storage add btrfs dbtrfs --path "$mnt" --content images >/dev/null
      for s in $SIZES; do bench_storage "btrfs (subvolume snapshot ioctl)" dbtrfs "$s"; done
      BTRFS_MNT=""
      ;;
    xfs)
      loop_fs xfs $((2 * max_size + 3)) mkfs.xfs -q -f -m reflink=1
      sd storage add dir dxfs --path "$mnt" --content images --reflink 1 >/dev/null
      for s in $SIZES; do bench_storage "dir reflink on XFS (FICLONE)" dxfs "$s"; done
      ;;
    qcow2)
      loop_fs qcow2 $((2 * max_size + 3)) mkfs.ext4 -q -F
      sd storage add dir dqcow2 --path "$mnt" --content images --format qcow2 >/dev/null
      for s in $SIZES; do bench_storage "dir qcow2 on ext4 (QEMU overlay)" dqcow2 "$s" qcow2; done
      ;;
    zfs)
      if ! zpool list >/dev/null 2>&1; then
        log "zfs: no zfs daemon answers 'zpool list': skipped"
        ROWS+=("| zfspool on zfs-fuse | — | skipped: no zfs-fuse daemon | | | | | | | |")
        continue
      fi
      zmax=0
      for s in $ZFS_SIZES; do [ "$s" -gt "$zmax" ] && zmax=$s; done
      truncate -s $((2 * zmax + 3))G "$WORK/zpool.img"
      ZPOOL="snapdumpdt$$"
      mkdir -p "$WORK/zmnt"
      zpool create -m "$WORK/zmnt" "$ZPOOL" "$WORK/zpool.img"
      sd storage add zfspool dzfs --pool "$ZPOOL" --content images >/dev/null
      for s in $ZFS_SIZES; do bench_storage "zfspool on zfs-fuse (zfs snapshot)" dzfs "$s"; done
      ;;
    rbd)
      if [ -f /run/snapdump-test/ceph.env ]; then
        # shellcheck disable=SC1091
        . /run/snapdump-test/ceph.env
      else
        # No test Ceph: a cluster of its own (ports off the test fixture's and storage-bench's), down on exit.
        export SNAPDUMP_CEPH_DIR="$WORK/ceph" SNAPDUMP_CEPH_ENV="$WORK/ceph.env" SNAPDUMP_CEPH_PORT=14400
        CEPH_UP=1
        "$ROOT/scripts/fixtures/ceph.sh" up || die "rbd: the bench's own Ceph did not come up"
        # shellcheck disable=SC1091
        . "$WORK/ceph.env"
      fi
      sd storage add rbd drbd --pool "$SNAPDUMP_TEST_CEPH_POOL" --monhost "$SNAPDUMP_TEST_CEPH_MONHOST" \
        --keyring "$SNAPDUMP_TEST_CEPH_KEYRING" --content images >/dev/null
      for s in $SIZES; do bench_storage "rbd, single-node Ceph (librbd snap_create)" drbd "$s" rbd; done
      ;;
    *) die "unknown storage '$st' in STORAGES" ;;
  esac
done

{
  echo "## Snapshot-mode downtime — $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "Command: \`scripts/bench/downtime-bench.sh\` (RUNS=$RUNS SIZES=\"$SIZES\" ZFS_SIZES=\"$ZFS_SIZES\" TARGET=$TARGET), ${SNAPDUMP_BENCH_BIN:+binary $SNAPDUMP_BENCH_BIN, not }release build, commit $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?'), QEMU under TCG, load average at start: $LOAD_START, at end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  echo "Test guest with the agent and a mounted ext2 (\`snapdump.fsdisk\`), both disks on the storage; medians of $RUNS backups, ms. host part = total − fs-freeze − fs-thaw (the snapshot call and the window's bookkeeping); flush = the host flush before the window (outside it)."
  echo
  echo "| storage | scsi0 | host state | total | fs-freeze | snapshot | fs-thaw | host part | flush before | runs: total / host part |"
  echo "|---|---|---|---:|---:|---:|---:|---:|---:|---|"
  printf '%s\n' "${ROWS[@]}"
} | tee "$WORK/report.md"
mkdir -p "$(dirname "$RESULTS")"
cp "$WORK/report.md" "$RESULTS"
log "report saved to $RESULTS"
