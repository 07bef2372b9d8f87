#!/usr/bin/env bash
# Storage benchmark (issue 2): on this machine, measure
#   1. snapshot creation time per plugin (btrfs, dir reflink on XFS, dir qcow2
#      offline, zfspool on zfs-fuse, rbd on a single-node Ceph of its own) for
#      volumes full of data, median of RUNS;
#   2. `snapdump volume export --output - > /dev/null` against
#      `cat FILE > /dev/null` on the same file, page cache dropped before each
#      run (cold) and warm, medians and the ratio.
#
# Everything runs on scratch storage of its own under $SNAPDUMP_BENCH_DIR
# (default /var/tmp): a btrfs and an XFS loop filesystem big enough for the
# largest volume, a plain directory for qcow2 and the export test, and a
# zfs-fuse pool on a file vdev (through the zfs-fuse daemon that is running; the
# zfs-fuse part is skipped without one). All of it is removed on exit.
#
# Usage (root): scripts/bench/storage-bench.sh
# Environment:  RUNS=5 (snapshots)  EXPORT_RUNS=7  SIZES="1 8"  ZFS_SIZES="1 8"  EXPORT_SIZE=4  (GiB)
#               PLUGINS="btrfs xfs qcow2 zfs rbd"  SKIP_EXPORT=1  SKIP_BUILD=1
#               SNAPDUMP_BENCH_BIN=PATH (a snapdump binary to use instead of the release build)
#               BENCH_RESULTS=FILE (default .build/bench/storage-bench.md)
# Prints a Markdown report on stdout (progress on stderr) and saves it to BENCH_RESULTS.
set -euo pipefail

HERE=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
ROOT=$(readlink -f "$HERE/../..")
RUNS=${RUNS:-5}
SIZES=${SIZES:-"1 8"}
ZFS_SIZES=${ZFS_SIZES:-"1 8"}
EXPORT_SIZE=${EXPORT_SIZE:-4}
EXPORT_RUNS=${EXPORT_RUNS:-7}
PLUGINS=${PLUGINS:-"btrfs xfs qcow2 zfs rbd"}
BASE=${SNAPDUMP_BENCH_DIR:-/var/tmp}
WORK="$BASE/snapdump-bench-$$"
RESULTS=${BENCH_RESULTS:-$ROOT/.build/bench/storage-bench.md}
GiB=$((1 << 30))

log() { echo "bench: $*" >&2; }
die() { echo "bench: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (loop filesystems, drop_caches)"
for t in mkfs.btrfs mkfs.xfs qemu-img qemu-nbd nbdcopy openssl losetup; do
  command -v "$t" >/dev/null || die "$t is missing (scripts/install-deps.sh)"
done

# ------------------------------------------------------------------ cleanup
MOUNTS=()
ZPOOL=""
CEPH_UP=""
cleanup() {
  local m
  set +e
  [ -n "$CEPH_UP" ] && SNAPDUMP_CEPH_DIR="$WORK/ceph" SNAPDUMP_CEPH_ENV="$WORK/ceph.env" "$ROOT/scripts/fixtures/ceph.sh" down
  if [ -n "$ZPOOL" ]; then
    for _ in 1 2 3 4 5 6 7 8 9 10; do zpool destroy -f "$ZPOOL" 2>/dev/null && break; sleep 1; done
  fi
  for m in "${MOUNTS[@]}"; do
    umount "$m" 2>/dev/null || { sleep 1; umount "$m" 2>/dev/null; } || umount -l "$m"
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
mkdir -p "$WORK/cfg"
CFG="$WORK/cfg"

# ------------------------------------------------------------------ build
if [ -z "${SKIP_BUILD:-}" ] && [ -z "${SNAPDUMP_BENCH_BIN:-}" ]; then
  log "swift build -c release"
  (cd "$ROOT" && swift build -c release --product snapdump >&2)
fi
BIN=${SNAPDUMP_BENCH_BIN:-$ROOT/.build/release/snapdump}
[ -x "$BIN" ] || die "$BIN not built"
sd() { "$BIN" "$@" --config-dir "$CFG"; }

# ------------------------------------------------------------------ helpers
now_ns() { date +%s%N; }
ms_since() { echo $(( ($(now_ns) - $1) / 1000000 )); }
# Median of numbers on stdin (one per line); the mean of the middle two for an even count.
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%d\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
minmax() { sort -n | awk 'NR == 1 { lo = $1 } { hi = $1 } END { print lo "–" hi }'; }

# Incompressible data, fast: AES-CTR keystream (random data, not zeros, not sparse).
data_stream() { # bytes
  # openssl dies of SIGPIPE when head has enough: not an error (pipefail).
  { openssl enc -aes-128-ctr -pass pass:snapdump-bench -nosalt -pbkdf2 -in /dev/zero 2>/dev/null || true; } | head -c "$1"
}

fill_volume() { # volid bytes format
  local path
  path=$(sd volume path "$1")
  case "$3" in
    raw) data_stream "$2" | dd of="$path" bs=4M iflag=fullblock oflag=direct conv=notrunc,fsync status=none ;;
    qcow2) data_stream "$2" | nbdcopy --flush -- - [ qemu-nbd -f qcow2 "$path" ] ;;
    # An RBD volume path is QEMU's rbd: filename; qemu-nbd writes it through librbd.
    rbd) data_stream "$2" | nbdcopy --flush -- - [ qemu-nbd -f raw "$path" ] ;;
  esac
}

loop_fs() { # name size-GiB mkfs-command… ; sets $mnt (not a subshell: MOUNTS must stick)
  local name=$1 size=$2 img
  shift 2
  img="$WORK/$name.img"
  mnt="$WORK/$name"
  truncate -s "${size}G" "$img"
  "$@" "$img" >/dev/null
  mkdir -p "$mnt"
  # -o loop: the loop device autoclears when unmounted.
  mount -o loop "$img" "$mnt"
  MOUNTS+=("$mnt")
}

SNAP_ROWS=()
GROUP_ROWS=()
CLI_FLOOR=""

# Times `snapshot create` RUNS times on a full volume (deleting it in between).
bench_snapshots() { # label storage format size-GiB
  local label=$1 store=$2 fmt=$3 size=$4 vmid vol i t times=() floor=()
  vmid=$((200 + size))
  vol=$(sd volume alloc "$store" "$vmid" "${size}G" --format "${fmt/rbd/raw}")
  log "$label: filling $vol with $size GiB of data"
  t=$(now_ns)
  fill_volume "$vol" $((size * GiB)) "$fmt"
  log "$label: filled in $(ms_since "$t") ms; $RUNS snapshots"
  sync
  for i in $(seq 1 "$RUNS"); do
    t=$(now_ns)
    sd volume path "$vol" >/dev/null
    floor+=("$(ms_since "$t")")
    t=$(now_ns)
    sd snapshot create "$vol" --name "bench$i"
    times+=("$(ms_since "$t")")
    sd snapshot delete "$vol" --name "bench$i"
  done
  # rbd: the same volume and a second, empty image of the guest in one call, as a
  # backup of a guest with two disks takes them: one group snapshot (RBD group vm-<vmid>).
  if [ "$fmt" = rbd ]; then
    local second gtimes=()
    second=$(sd volume alloc "$store" "$vmid" 1G --format raw)
    for i in $(seq 1 "$RUNS"); do
      t=$(now_ns)
      sd snapshot create "$vol" "$second" --name "group$i"
      gtimes+=("$(ms_since "$t")")
      sd snapshot delete "$vol" "$second" --name "group$i"
    done
    sd volume free "$second"
    log "$label $size GiB + 1 GiB image, group snapshot: median $(printf '%s\n' "${gtimes[@]}" | median) ms (runs: ${gtimes[*]})"
    GROUP_ROWS+=("| rbd group snapshot (\`rbd_group_snap_create\`), 2 images | $size GiB + 1 GiB | $(printf '%s\n' "${gtimes[@]}" | median) | $(printf '%s\n' "${gtimes[@]}" | minmax) | |")
  fi
  sd volume free "$vol"
  local med spread fl
  med=$(printf '%s\n' "${times[@]}" | median)
  spread=$(printf '%s\n' "${times[@]}" | minmax)
  fl=$(printf '%s\n' "${floor[@]}" | median)
  CLI_FLOOR="$CLI_FLOOR $fl"
  log "$label $size GiB: snapshot create median $med ms (runs: ${times[*]}; CLI start-up $fl ms)"
  SNAP_ROWS+=("| $label | $size GiB | $med | $spread | $fl |")
}

# ------------------------------------------------------------------ snapshots
max_size=0
for s in $SIZES; do [ "$s" -gt "$max_size" ] && max_size=$s; done

for p in $PLUGINS; do
  case "$p" in
    btrfs)
      loop_fs btrfs $((max_size + 3)) mkfs.btrfs -q -f
      sd storage add btrfs bbtrfs --path "$mnt"
      for s in $SIZES; do bench_snapshots "btrfs (subvolume snapshot)" bbtrfs raw "$s"; done
      sd storage remove bbtrfs
      ;;
    xfs)
      loop_fs xfs $((max_size + 3)) mkfs.xfs -q -f -m reflink=1
      sd storage add dir bxfs --path "$mnt" --reflink 1
      for s in $SIZES; do bench_snapshots "dir reflink 1 on XFS (FICLONE)" bxfs raw "$s"; done
      sd storage remove bxfs
      ;;
    qcow2)
      mkdir -p "$WORK/qcow2"
      sd storage add dir bqcow2 --path "$WORK/qcow2" --format qcow2
      for s in $SIZES; do bench_snapshots "dir qcow2, offline (qemu-img snapshot)" bqcow2 qcow2 "$s"; done
      sd storage remove bqcow2
      ;;
    zfs)
      if ! zpool list >/dev/null 2>&1; then
        log "zfs: no zfs daemon answers 'zpool list': skipped"
        SNAP_ROWS+=("| zfspool on zfs-fuse | — | skipped: no zfs-fuse daemon | | |")
        continue
      fi
      zmax=0
      for s in $ZFS_SIZES; do [ "$s" -gt "$zmax" ] && zmax=$s; done
      truncate -s $((zmax + 2))G "$WORK/zpool.img"
      ZPOOL="snapdumpbench$$"
      mkdir -p "$WORK/zmnt"
      zpool create -m "$WORK/zmnt" "$ZPOOL" "$WORK/zpool.img"
      sd storage add zfspool bzfs --pool "$ZPOOL"
      for s in $ZFS_SIZES; do bench_snapshots "zfspool on zfs-fuse (zfs snapshot)" bzfs raw "$s"; done
      sd storage remove bzfs
      for _ in 1 2 3 4 5 6 7 8 9 10; do zpool destroy -f "$ZPOOL" 2>/dev/null && break; sleep 1; done
      ZPOOL=""
      ;;
    rbd)
      # A cluster of its own (ports off the test fixture's), torn down on exit.
      export SNAPDUMP_CEPH_DIR="$WORK/ceph" SNAPDUMP_CEPH_ENV="$WORK/ceph.env" SNAPDUMP_CEPH_PORT=14300
      CEPH_UP=1
      "$ROOT/scripts/fixtures/ceph.sh" up
      # shellcheck disable=SC1091
      . "$WORK/ceph.env"
      sd storage add rbd brbd --pool "$SNAPDUMP_TEST_CEPH_POOL" --monhost "$SNAPDUMP_TEST_CEPH_MONHOST" --keyring "$SNAPDUMP_TEST_CEPH_KEYRING"
      for s in $SIZES; do bench_snapshots "rbd, single-node Ceph (rbd snap create via librbd)" brbd rbd "$s"; done
      sd storage remove brbd
      "$ROOT/scripts/fixtures/ceph.sh" down
      CEPH_UP=""
      ;;
    *) die "unknown plugin '$p' in PLUGINS" ;;
  esac
  # Give the disk space back before the next plugin.
  for m in "${MOUNTS[@]}"; do umount "$m" 2>/dev/null || true; done
  MOUNTS=()
  rm -f "$WORK"/*.img
done

# ------------------------------------------------------------------ export vs cat
EXPORT_ROWS=()
if [ -z "${SKIP_EXPORT:-}" ]; then
  mkdir -p "$WORK/export"
  sd storage add dir bexport --path "$WORK/export"
  vol=$(sd volume alloc bexport 300 "${EXPORT_SIZE}G")
  file=$(sd volume path "$vol")
  log "export: filling $vol ($EXPORT_SIZE GiB) with data"
  fill_volume "$vol" $((EXPORT_SIZE * GiB)) raw
  sync
  bytes=$(stat -c %s "$file")
  mbps() { awk -v b="$bytes" -v ms="$1" 'BEGIN { printf "%.0f", b / 1e6 / (ms / 1000) }'; }
  drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
  run_cat() { cat "$file" >/dev/null; }
  # Context: the export's read size (4 MiB) with nothing but the kernel's readahead.
  run_dd() { dd if="$file" of=/dev/null bs=4M status=none; }
  run_export() { sd volume export "$vol" --output - >/dev/null; }
  # The output must be the file's bytes.
  [ "$(sd volume export "$vol" --output - | cmp - "$file" && echo same)" = same ] || die "export differs from $file"

  for mode in cold warm; do
    cat_ms=()
    exp_ms=()
    dd_ms=()
    start_ms=()
    [ "$mode" = warm ] && run_cat
    for i in $(seq 1 "$EXPORT_RUNS"); do
      # Interleaved, so drift on a shared machine hits both alike.
      [ "$mode" = cold ] && drop
      t=$(now_ns); run_cat; cat_ms+=("$(ms_since "$t")")
      [ "$mode" = cold ] && drop
      t=$(now_ns); run_export; exp_ms+=("$(ms_since "$t")")
      [ "$mode" = cold ] && drop
      t=$(now_ns); run_dd; dd_ms+=("$(ms_since "$t")")
      # The process start alone (the cold one loads ~40 shared libraries from disk).
      [ "$mode" = cold ] && drop
      t=$(now_ns); "$BIN" --help >/dev/null; start_ms+=("$(ms_since "$t")")
    done
    c=$(printf '%s\n' "${cat_ms[@]}" | median)
    e=$(printf '%s\n' "${exp_ms[@]}" | median)
    st=$(printf '%s\n' "${start_ms[@]}" | median)
    d=$(printf '%s\n' "${dd_ms[@]}" | median)
    ratio=$(awk -v c="$c" -v e="$e" 'BEGIN { printf "%.2f", c / e }')
    log "export $mode: cat ${cat_ms[*]} ms, export ${exp_ms[*]} ms, dd ${dd_ms[*]} ms, start ${start_ms[*]} ms → ratio $ratio"
    EXPORT_ROWS+=("| $mode | $(mbps "$c") MB/s ($c ms) | $(mbps "$e") MB/s ($e ms) | **${ratio}×** | $(mbps "$d") MB/s ($d ms) | $st | ${cat_ms[*]} / ${exp_ms[*]} / ${dd_ms[*]} |")
  done
  sd volume free "$vol"
  sd storage remove bexport
fi

# ------------------------------------------------------------------ report
{
  echo "## Storage benchmark — $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "Command: \`scripts/bench/storage-bench.sh\` (RUNS=$RUNS EXPORT_RUNS=$EXPORT_RUNS SIZES=\"$SIZES\" ZFS_SIZES=\"$ZFS_SIZES\" EXPORT_SIZE=$EXPORT_SIZE), ${SNAPDUMP_BENCH_BIN:+binary $SNAPDUMP_BENCH_BIN, not }release build, commit $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?'), load average at start: $LOAD_START"
  echo
  src=$(df --output=source "$BASE" | tail -1)
  echo "Machine: $(nproc) CPUs ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), $(free -g | awk '/^Mem:/ { print $2 }') GiB RAM, kernel $(uname -r); scratch $BASE on $src ($(findmnt -no FSTYPE --target "$BASE"), $(lsblk -dno SIZE "$src" 2>/dev/null | tr -d ' ') disk, rotational=$(lsblk -dno ROTA "$src" 2>/dev/null | tr -d ' '))"
  echo
  echo "### Snapshot creation (\`snapdump snapshot create\`, whole CLI process), volume full of data"
  echo
  echo "| plugin | volume | median ms | range ms | CLI start-up ms (\`volume path\`) |"
  echo "|---|---|---:|---|---:|"
  printf '%s\n' "${SNAP_ROWS[@]}"
  [ ${#GROUP_ROWS[@]} -eq 0 ] || printf '%s\n' "${GROUP_ROWS[@]}"
  if [ ${#EXPORT_ROWS[@]} -gt 0 ]; then
    echo
    echo "### \`volume export --output - > /dev/null\` vs \`cat FILE > /dev/null\`, same $EXPORT_SIZE GiB raw file (dir storage on $(findmnt -no FSTYPE --target "$BASE"))"
    echo
    echo "| page cache | cat | export | export/cat | dd bs=4M | snapdump start-up ms | runs ms (cat / export / dd) |"
    echo "|---|---:|---:|---:|---:|---:|---|"
    printf '%s\n' "${EXPORT_ROWS[@]}"
  fi
} | tee "$WORK/report.md"
mkdir -p "$(dirname "$RESULTS")"
cp "$WORK/report.md" "$RESULTS"
log "report saved to $RESULTS"
