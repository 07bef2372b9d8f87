#!/usr/bin/env bash
# Restore against its like-for-like baseline (issue 15), release build:
#
#  1. A raw disk full of real data (real-disk.sh image SIZE: ext4 holding
#     copies of /usr/lib, /opt …), backed up with --compress zstd (16 MiB
#     frames). Restored from that archive and from the same VMA stream
#     recompressed as ONE frame (`zstd -3 -T2`, what Proxmox's vzdump and
#     older snapdump wrote), each against `zstd -d --sparse` + sync of the
#     same archive. Runs alternate A/B; medians of wall time, CPU time
#     (user + sys) and peak RSS; one `perf stat` instruction count each
#     ("n/a" where the VM has no hardware counters).
#  2. A thin disk (THIN_GIB, default 256 GiB) holding 100 MiB of real data:
#     backup and restore time (cost must follow the data), the restored
#     volume checked sparse and equal where the data is (restore itself
#     checks the SHA-256 of the whole device).
#
# Results: stdout and $BENCH_RESULTS (default .build/bench/restore-bench.md).
#   RUNS=5 RESTORE_BENCH_SIZES="2048 8192" THIN_GIB=256 scripts/bench/restore-bench.sh
set -euo pipefail
HERE=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
ROOT=$(readlink -f "$HERE/../..")
RUNS=${RUNS:-5}
SIZES=${RESTORE_BENCH_SIZES:-2048}
THIN_GIB=${THIN_GIB:-256}
WORK="${SNAPDUMP_BENCH_DIR:-/var/tmp}/snapdump-restore-bench-$$"
RESULTS=${BENCH_RESULTS:-$ROOT/.build/bench/restore-bench.md}
SD=${SNAPDUMP_BIN:-$ROOT/.build/release/snapdump}
log() { echo "restore-bench: $*" >&2; }

cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
[ -n "${SKIP_BUILD:-}" ] || (cd "$ROOT" && swift build -c release --product snapdump 2>&1 | tail -1 >&2)
mkdir -p "$WORK/store" "$WORK/out"
export SNAPDUMP_CONFIG_DIR=$WORK/etc
"$SD" storage add dir local --path "$WORK/store" --content images,backup >/dev/null

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
declare -A WALL CPU RSS INSN
measure() {  # measure NAME CMD…: wall, user+sys CPU, peak RSS of one run
  local name=$1; shift
  cat "$ARCHIVE_IN_USE" > /dev/null   # warm cache: the archive is read from memory by both sides
  /usr/bin/time -f "%e %U %S %M" -o "$WORK/time" "$@" >/dev/null 2>"$WORK/stderr" ||
    { cat "$WORK/stderr" >&2; log "$name failed"; exit 1; }
  read -r e u s m < <(tail -1 "$WORK/time")
  WALL[$name]+="$e "
  CPU[$name]+="$(echo "$u + $s" | bc) "
  RSS[$name]+="$((m / 1024)) "
}
instructions() {  # instructions NAME CMD…: user-space instructions of one run (repeatable on a loaded machine)
  local name=$1; shift
  INSN[$name]=$(perf stat -x, -e instructions:u -o "$WORK/perf" "$@" >/dev/null 2>&1 && awk -F, '/instructions/ {print ($1 ~ /^[0-9.]+$/) ? sprintf("%.2f", $1 / 1e9) : "n/a"}' "$WORK/perf" || echo "n/a")
}
med() { echo "${!1}" | tr ' ' '\n' | grep . | median; }
fresh() { "$SD" vm destroy 101 >/dev/null 2>&1 || true; rm -f "$WORK/out/stream"; }
# The baseline: zstd -d --sparse ARCHIVE -o OUT, then sync OUT (as restore fsyncs its volume).
UNZSTD=(sh -c 'zstd -q -d -f --sparse "$0" -o "$1" && sync "$1"')

mkdir -p "$(dirname "$RESULTS")"
: > "$RESULTS.tmp"
out() { tee -a "$RESULTS.tmp"; }
echo "Restore bench, $(date -u +%FT%TZ), load average before: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores. Median of $RUNS alternating runs, warm cache." | out

for SIZE in $SIZES; do
  IMG=$("$HERE/real-disk.sh" image "$SIZE")
  "$SD" vm destroy 100 >/dev/null 2>&1 || true
  "$SD" vm create 100 --scsi0 "local:${SIZE}M" >/dev/null
  DISK=$("$SD" volume path local:100/vm-100-disk-0.raw)
  cp --sparse=always "$IMG" "$DISK"
  rm -rf "$WORK/arch"
  "$SD" backup 100 --dumpdir "$WORK/arch" --compress zstd --zstd 0 --quiet >/dev/null
  MULTI=$(ls "$WORK"/arch/*.vma.zst)
  SINGLE=${MULTI%.vma.zst}-single.vma.zst
  zstd -q -d -c "$MULTI" | zstd -q -3 -T2 -o "$SINGLE"
  "$SD" vm destroy 100 >/dev/null   # the source disk is not needed any more (keeps a tmpfs run small)
  frames() { zstd -lv "$1" 2>/dev/null | awk '/^# Zstandard Frames/ {print $NF}'; }
  log "$SIZE MiB: multi-frame $(stat -c %s "$MULTI") bytes ($(frames "$MULTI") frames), single-frame $(stat -c %s "$SINGLE") bytes"
  WALL=(); CPU=(); RSS=(); INSN=()
  for i in $(seq 1 "$RUNS"); do
    log "$SIZE MiB: round $i of $RUNS"
    for A in MULTI SINGLE; do
      ARCHIVE_IN_USE=${!A}
      fresh; measure "sd-$A" "$SD" restore "${!A}" 101
      fresh; measure "zstd-$A" "${UNZSTD[@]}" "${!A}" "$WORK/out/stream"
    done
  done
  for A in MULTI SINGLE; do
    ARCHIVE_IN_USE=${!A}
    fresh; instructions "sd-$A" "$SD" restore "${!A}" 101
    fresh; instructions "zstd-$A" "${UNZSTD[@]}" "${!A}" "$WORK/out/stream"
  done
  fresh
  {
    echo
    echo "### ${SIZE} MiB disk of real data ($(du -m --apparent-size "$IMG" | cut -f1) MiB image), load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "Archives: multi-frame $(stat -c %s "$MULTI") bytes ($(frames "$MULTI") frames), single frame $(stat -c %s "$SINGLE") bytes."
    echo "Ratio = zstd time / snapdump time (> 1: snapdump restores faster)."
    echo
    echo "| archive | snapdump restore wall | cpu | peak RSS | Ginsn | \`zstd -d --sparse\` + sync wall | cpu | peak RSS | Ginsn | ratio wall | ratio cpu |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for A in MULTI SINGLE; do
      sw=$(med "WALL[sd-$A]"); sc=$(med "CPU[sd-$A]"); zw=$(med "WALL[zstd-$A]"); zc=$(med "CPU[zstd-$A]")
      printf '| %s | %.2f s | %.2f s | %s MiB | %s | %.2f s | %.2f s | %s MiB | %s | **%.2f×** | %.2f× |\n' \
        "$([ $A = MULTI ] && echo "snapdump, 16 MiB frames" || echo "one frame (zstd -3 -T2)")" \
        "$sw" "$sc" "$(med "RSS[sd-$A]")" "${INSN[sd-$A]}" "$zw" "$zc" "$(med "RSS[zstd-$A]")" "${INSN[zstd-$A]}" \
        "$(echo "$zw / $sw" | bc -l)" "$(echo "$zc / $sc" | bc -l)"
    done
    echo
    echo "Single runs, wall s:"
    for k in sd-MULTI zstd-MULTI sd-SINGLE zstd-SINGLE; do echo "- $k: ${WALL[$k]}"; done
  } | out
  "$SD" vm destroy 100 >/dev/null 2>&1 || true
  rm -rf "$WORK/arch"
done

# Thin disk: cost follows the data.
IMG=$("$HERE/real-disk.sh" image 2048)
"$SD" vm create 102 --scsi0 "local:${THIN_GIB}G" >/dev/null
THIN=$("$SD" volume path local:102/vm-102-disk-0.raw)
for k in $(seq 0 9); do   # 10 × 10 MiB of real data spread over the disk
  dd if="$IMG" of="$THIN" bs=1M skip=$((100 + k * 150)) count=10 seek=$((k * THIN_GIB * 1024 / 10)) conv=notrunc status=none
done
WALL=(); CPU=(); RSS=()
ARCHIVE_IN_USE=/dev/null
for i in $(seq 1 "$RUNS"); do
  log "thin ${THIN_GIB} GiB: round $i of $RUNS"
  rm -rf "$WORK/thin"
  measure thin-backup "$SD" backup 102 --dumpdir "$WORK/thin" --compress zstd --zstd 0 --quiet
  TA=$(ls "$WORK"/thin/*.vma.zst)
  "$SD" vm destroy 103 >/dev/null 2>&1 || true
  ARCHIVE_IN_USE=$TA
  measure thin-restore "$SD" restore "$TA" 103
  ARCHIVE_IN_USE=/dev/null
done
RESTORED=$("$SD" volume path local:103/vm-103-disk-0.raw)
alloc=$(du -m "$RESTORED" | cut -f1)
same=yes
for k in $(seq 0 9); do
  off=$((k * THIN_GIB * 1024 / 10))
  cmp -s <(dd if="$THIN" bs=1M skip=$off count=10 status=none) <(dd if="$RESTORED" bs=1M skip=$off count=10 status=none) || same=no
done
{
  echo
  echo "### Thin disk: ${THIN_GIB} GiB holding 100 MiB of real data, load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  echo "| operation | wall | cpu | peak RSS |"
  echo "|---|---:|---:|---:|"
  for k in thin-backup thin-restore; do
    printf '| %s | %.2f s | %.2f s | %s MiB |\n' "$k" "$(med "WALL[$k]")" "$(med "CPU[$k]")" "$(med "RSS[$k]")"
  done
  printf '\nrestore / backup wall: **%.2f×** (target ≤ 2×). Restored volume: %s MiB allocated of %s GiB; data ranges equal: %s; SHA-256 of the device checked by the restore.\n' \
    "$(echo "$(med "WALL[thin-restore]") / $(med "WALL[thin-backup]")" | bc -l)" "$alloc" "$THIN_GIB" "$same"
  echo
  echo "Single runs, wall s: backup ${WALL[thin-backup]}; restore ${WALL[thin-restore]}"
} | out
"$SD" vm destroy 102 >/dev/null 2>&1 || true
"$SD" vm destroy 103 >/dev/null 2>&1 || true
mv "$RESULTS.tmp" "$RESULTS"
[ "$same" = yes ] && [ "$alloc" -lt 1024 ] || { log "thin restore: data differs or the volume is not sparse"; exit 1; }
