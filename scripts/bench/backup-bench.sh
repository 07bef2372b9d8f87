#!/usr/bin/env bash
# Backup and restore against like-for-like baselines (issue 15), on a raw
# disk holding a full ext4 of real trees (scripts/bench/real-disk.sh), at each
# size in SIZES, stop mode, release build, page cache warm:
#
#   backup --compress zstd --zstd 2 (level 3)   vs  zstd -3 -T2 disk -o f && sync f
#   backup --compress zstd --zstd 2             vs  zstd -1 -T2 …            (context)
#   backup --compress 0                         vs  cp --sparse=always disk f && sync f
#   restore of snapdump's archive               vs  zstd -d --sparse disk.zst -o f && sync f
#   restore of a single-frame archive           vs  the same zstd -d
#     (snapdump's VMA stream recompressed by `zstd -3 -T2` into one frame, as
#     Proxmox's vzdump writes it)
#
# The baselines read the same file the backup reads; `disk.zst` is
# `zstd -3 -T2` of the disk, so both restores rebuild the same disk from a
# compressed file of the same size. snapdump fsyncs what it writes, so every
# baseline syncs its output. Each pair runs A/B, the next round B/A; the table
# has the median of RUNS for wall time, CPU time (user + sys of the process and
# its children, from /usr/bin/time) and peak RSS. Ratios are throughput
# ratios: baseline time / snapdump time (> 1: snapdump is faster).
#
# Usage (root: the image is built through a loop mount): scripts/bench/backup-bench.sh
# Environment: RUNS=3 SIZES="2048 8192" SKIP_BUILD=1 SNAPDUMP_BENCH_DIR=/var/tmp
#              SNAPDUMP_BENCH_IMAGES (real-disk.sh's cache) BENCH_RESULTS=file
set -euo pipefail
HERE=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
ROOT=$(readlink -f "$HERE/../..")
RUNS=${RUNS:-3}
SIZES=${SIZES:-2048 8192}
WORK="${SNAPDUMP_BENCH_DIR:-/var/tmp}/snapdump-backup-bench-$$"
RESULTS=${BENCH_RESULTS:-$ROOT/.build/bench/backup-bench.md}
# SNAPDUMP_BENCH_BIN: a snapdump binary to measure instead of building one (e.g. an older commit's).
SD=${SNAPDUMP_BENCH_BIN:-$ROOT/.build/release/snapdump}
[ -z "${SNAPDUMP_BENCH_BIN:-}" ] || SKIP_BUILD=1
TIME=/usr/bin/time
log() { echo "bench: $*" >&2; }
die() { echo "Error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "backup-bench.sh needs root (real-disk.sh loop-mounts the image it builds)"
for tool in zstd cp sync bc awk; do command -v "$tool" >/dev/null || die "'$tool' not found (install it; the bench installs nothing)"; done
[ -x "$TIME" ] || die "$TIME not found (Debian package 'time'); the bench needs it for CPU time and peak RSS"

cleanup() {
  [ -n "${SNAPDUMP_CONFIG_DIR:-}" ] && [ -x "$SD" ] && { "$SD" vm destroy 101 >/dev/null 2>&1 || true; }
  rm -rf "$WORK"
}
trap cleanup EXIT
[ -n "${SKIP_BUILD:-}" ] || (cd "$ROOT" && swift build -c release --product snapdump 2>&1 | tail -1 >&2)
[ -x "$SD" ] || die "$SD not built (run without SKIP_BUILD)"

declare -A WALL CPU RSS
# measure NAME CMD…: one run; appends wall s, cpu s (user+sys, children included) and peak RSS KiB.
measure() {
  local name=$1; shift
  local t="$WORK/time.$name"
  "$TIME" -f '%e %U %S %M' -o "$t" "$@" >/dev/null 2>"$WORK/err.$name" ||
    { cat "$WORK/err.$name" >&2; die "run '$name' failed: $*"; }
  read -r e u s m <"$t"
  WALL[$name]+="$e "
  CPU[$name]+="$(echo "$u + $s" | bc) "
  RSS[$name]+="$m "
}
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
med() { local -n arr=$1; echo "${arr[$2]}" | median; }

run_size() {  # run_size SIZE_MIB
  local size=$1 img disk arch single out=$WORK/out
  img=$("$HERE/real-disk.sh" image "$size")
  # The disk, the outputs of a run, a restored disk, and the three compressed files the restores read.
  local need=$((size * 4)) avail
  avail=$(df -m --output=avail "$(dirname "$WORK")" | tail -1)
  [ "$avail" -ge "$need" ] || die "$size MiB: $need MiB free needed under $(dirname "$WORK"), $avail MiB free"
  rm -rf "$WORK/store" "$WORK/etc" "$WORK/arch" "$out"
  mkdir -p "$WORK/store" "$WORK/arch" "$out"
  export SNAPDUMP_CONFIG_DIR=$WORK/etc
  "$SD" storage add dir local --path "$WORK/store" --content images,backup
  "$SD" vm create 100 --scsi0 "local:${size}M" >/dev/null
  disk=$("$SD" volume path local:100/vm-100-disk-0.raw)
  cp --sparse=always "$img" "$disk"
  log "$size MiB: disk $disk ($(du -m "$disk" | cut -f1) MiB allocated), copy of $img"
  cat "$disk" >/dev/null

  # The compressed files the restores read, made once.
  "$SD" backup 100 --dumpdir "$WORK/arch" --compress zstd --zstd 2 --quiet >/dev/null
  arch=$(ls "$WORK"/arch/*.vma.zst)
  mkdir -p "$WORK/single"
  single="$WORK/single/$(basename "$arch")"
  zstd -q -d -c "$arch" | zstd -q -3 -T2 -o "$single"
  zstd -q -3 -T2 "$disk" -o "$WORK/disk.zst"
  log "$size MiB: archive $(du -m "$arch" | cut -f1) MiB, single-frame $(du -m "$single" | cut -f1) MiB, disk.zst $(du -m "$WORK/disk.zst" | cut -f1) MiB"
  cat "$arch" "$single" "$WORK/disk.zst" >/dev/null

  local p="$size:"
  sd_zstd() { rm -rf "$out"/*; measure "${p}sd-zstd" "$SD" backup 100 --dumpdir "$out" --compress zstd --zstd 2 --quiet; }
  zstd3() { rm -rf "$out"/*; measure "${p}zstd3" sh -c "zstd -q -3 -T2 '$disk' -o '$out/disk.zst' && sync '$out/disk.zst'"; }
  zstd1() { rm -rf "$out"/*; measure "${p}zstd1" sh -c "zstd -q -1 -T2 '$disk' -o '$out/disk.zst' && sync '$out/disk.zst'"; }
  sd_none() { rm -rf "$out"/*; measure "${p}sd-none" "$SD" backup 100 --dumpdir "$out" --compress 0 --quiet; }
  cpsparse() { rm -rf "$out"/*; measure "${p}cp" sh -c "cp --sparse=always '$disk' '$out/copy' && sync '$out/copy'"; }
  sd_restore() { "$SD" vm destroy 101 >/dev/null 2>&1 || true; measure "${p}sd-restore" "$SD" restore "$arch" 101; }
  sd_restore1() { "$SD" vm destroy 101 >/dev/null 2>&1 || true; measure "${p}sd-restore1" "$SD" restore "$single" 101; }
  unzstd() { rm -rf "$out"/*; measure "${p}unzstd" sh -c "zstd -q -d -f --sparse '$WORK/disk.zst' -o '$out/disk.raw' && sync '$out/disk.raw'"; }

  local i
  for i in $(seq 1 "$RUNS"); do
    log "$size MiB: round $i of $RUNS"
    if [ $((i % 2)) = 1 ]; then
      sd_zstd; zstd3; zstd1; sd_none; cpsparse; sd_restore; unzstd; sd_restore1
    else
      zstd1; zstd3; sd_zstd; cpsparse; sd_none; sd_restore1; unzstd; sd_restore
    fi
  done
  "$SD" vm destroy 101 >/dev/null 2>&1 || true
  rm -rf "$out"/* "$WORK/arch" "$WORK/single" "$WORK/disk.zst"
  "$SD" vm destroy 100 >/dev/null 2>&1 || true
}

row() {  # row SIZE LABEL SNAPDUMP BASELINE BASELINE-LABEL
  local p="$1:" aw ac am bw bc bm
  aw=$(med WALL "$p$3"); ac=$(med CPU "$p$3"); am=$(med RSS "$p$3")
  bw=$(med WALL "$p$4"); bc=$(med CPU "$p$4"); bm=$(med RSS "$p$4")
  printf '| %s | %.2f s | %.2f s | %d MiB | %s | %.2f s | %.2f s | %d MiB | **%.2f×** | %.2f× |\n' \
    "$2" "$aw" "$ac" "$((am / 1024))" "$5" "$bw" "$bc" "$((bm / 1024))" \
    "$(echo "$bw / $aw" | bc -l)" "$(echo "$bc / $ac" | bc -l)"
}

mkdir -p "$WORK"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for size in $SIZES; do run_size "$size"; done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

mkdir -p "$(dirname "$RESULTS")"
{
  echo "Commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load average before $LOAD_BEFORE, after $LOAD_AFTER."
  echo "Disk: raw image of a full ext4 of real trees (scripts/bench/real-disk.sh), stop mode, release build, warm cache;"
  echo "median of $RUNS alternating runs. CPU = user + sys (children included). Ratio = baseline time / snapdump time (> 1: snapdump is faster)."
  for size in $SIZES; do
    echo
    echo "**$size MiB disk**"
    echo
    echo "| snapdump | wall | cpu | peak RSS | baseline | wall | cpu | peak RSS | ratio wall | ratio cpu |"
    echo "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"
    row "$size" "backup --compress zstd (level 3, 2 threads)" sd-zstd zstd3 "zstd -3 -T2 + sync"
    row "$size" "backup --compress zstd (context)" sd-zstd zstd1 "zstd -1 -T2 + sync"
    row "$size" "backup --compress 0" sd-none cp "cp --sparse=always + sync"
    row "$size" "restore of snapdump's archive" sd-restore unzstd "zstd -d --sparse + sync"
    row "$size" "restore of a single-frame archive" sd-restore1 unzstd "zstd -d --sparse + sync"
  done
  echo
  echo "Single runs (wall s / cpu s / RSS KiB):"
  for size in $SIZES; do
    for k in sd-zstd zstd3 zstd1 sd-none cp sd-restore sd-restore1 unzstd; do
      echo "- $size $k: ${WALL[$size:$k]}/ ${CPU[$size:$k]}/ ${RSS[$size:$k]}"
    done
  done
} | tee "$RESULTS"
