#!/usr/bin/env bash
# Repository benchmark (issue 10): `snapdump backup --storage <repo>` against
# restic 0.14 and borg 1.2 (Debian's) on the same 2 GiB raw disk holding an
# ext4 full of real files (scripts/bench/real-disk.sh), runs interleaved,
# median of RUNS, page cache warm for everyone:
#   first:   snapdump backup --storage repo (fresh repository)
#            snapdump backup --dumpdir --compress zstd (VMA + zstd, the target to match)
#            restic backup (fresh repository, no encryption cannot be had: restic always encrypts)
#            borg create -C zstd,3 (fresh repository, -e none)
#   second:  the same three repositories again after real-disk.sh change … 1 (1 % of the files rewritten)
#   restore: snapdump restore repo:backup/… (every chunk digest checked) vs restic restore vs zstd -d
# For each: wall seconds, CPU seconds (user+sys), peak RSS, bytes stored (du of the repository).
# Every tool's output is synced before the clock stops (snapdump syncs before its manifest).
#
# Usage (root): scripts/bench/repo-bench.sh
# Environment: RUNS=3 SIZE_MIB=2048 SKIP_BUILD=1 SNAPDUMP_BENCH_DIR=/var/tmp SD=path/to/snapdump
set -euo pipefail
HERE=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
ROOT=$(readlink -f "$HERE/../..")
RUNS=${RUNS:-3}
SIZE_MIB=${SIZE_MIB:-2048}
WORK="${SNAPDUMP_BENCH_DIR:-/var/tmp}/snapdump-repo-bench-$$"
RESULTS=${BENCH_RESULTS:-$ROOT/.build/bench/repo-bench.md}
SD=${SD:-$ROOT/.build/release/snapdump}
log() { echo "bench: $*" >&2; }

for tool in restic borg zstd bc /usr/bin/time; do
  command -v "$tool" >/dev/null || { log "installing restic, borgbackup, zstd, bc, time"; apt-get install -y -q restic borgbackup zstd bc time >&2; break; }
done
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
[ -n "${SKIP_BUILD:-}" ] || (cd "$ROOT" && swift build -c release --product snapdump 2>&1 | tail -1 >&2)
IMG=$("$HERE/real-disk.sh" image "$SIZE_MIB")
mkdir -p "$WORK/store" "$WORK/out"
export SNAPDUMP_CONFIG_DIR=$WORK/etc
"$SD" storage add dir local --path "$WORK/store" --content images,backup
"$SD" storage add repo r1 --path "$WORK/repo"
"$SD" vm create 100 --scsi0 "local:${SIZE_MIB}M" >/dev/null
DISK=$("$SD" volume path local:100/vm-100-disk-0.raw)
export RESTIC_PASSWORD=bench RESTIC_CACHE_DIR=$WORK/restic-cache BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_BASE_DIR=$WORK/borg-base
zstd -q -3 -T1 -f "$IMG" -o "$WORK/disk.zst"

declare -A WALL CPU RSS BYTES
measure() {  # measure NAME REPO_DIR 'SHELL COMMAND': one run (CPU and RSS of its processes), appended to the tables
  local name=$1 dir=$2 cmd=$3
  local out; out=$(/usr/bin/time -f "%e %U %S %M" sh -c "$cmd" 2>&1 >/dev/null | tail -1)
  read -r e u s m <<<"$out"
  WALL[$name]+="$e "; CPU[$name]+="$(echo "$u + $s" | bc) "; RSS[$name]+="$((m / 1024)) "
  [ -z "$dir" ] || BYTES[$name]+="$(du -sb "$dir" | cut -f1) "
}
SYNC="sync -f '$WORK/out'"

for i in $(seq 1 "$RUNS"); do
  log "round $i of $RUNS: fresh disk, repositories"
  cp --sparse=always "$IMG" "$DISK"
  rm -rf "$WORK/repo" "$WORK/restic" "$WORK/borg" "$WORK/restic-cache" "$WORK/borg-base" "$WORK/out"/*
  "$SD" repo init r1 >/dev/null
  restic init -q --repo "$WORK/restic" >/dev/null
  borg init -e none "$WORK/borg"
  cat "$DISK" >/dev/null
  log "first backups"
  measure sd-repo-first "$WORK/repo" "'$SD' backup 100 --mode stop --storage r1 --quiet"
  measure restic-first "$WORK/restic" "restic backup -q --repo '$WORK/restic' '$DISK' && $SYNC"
  measure sd-vma-zstd "$WORK/out" "'$SD' backup 100 --mode stop --dumpdir '$WORK/out' --compress zstd --quiet"
  measure borg-first "$WORK/borg" "borg create -C zstd,3 '$WORK/borg::first' '$DISK' && $SYNC"
  rm -rf "$WORK/out"/*
  "$HERE/real-disk.sh" change "$DISK" 1 "$i" >/dev/null
  cat "$DISK" >/dev/null
  sleep 1  # a new second: the next snapshot's name
  log "second backups (1 % of the files changed)"
  measure sd-repo-second "$WORK/repo" "'$SD' backup 100 --mode stop --storage r1 --quiet"
  measure restic-second "$WORK/restic" "restic backup -q --repo '$WORK/restic' '$DISK' && $SYNC"
  measure borg-second "$WORK/borg" "borg create -C zstd,3 '$WORK/borg::second' '$DISK' && $SYNC"
  log "restores"
  SNAP=$("$SD" backup list r1 --output-format json | tr ',' '\n' | grep -o '"volid":"[^"]*"' | cut -d'"' -f4 | sort | tail -1)
  measure sd-restore "" "'$SD' restore '$SNAP' 101 --storage local"
  "$SD" vm destroy 101 >/dev/null 2>&1 || true
  measure restic-restore "" "restic restore -q --repo '$WORK/restic' latest --target '$WORK/out' && $SYNC"
  rm -rf "$WORK/out"/*
  measure zstd-d "" "zstd -q -d -f '$WORK/disk.zst' -o '$WORK/out/disk.raw' && $SYNC"
  rm -rf "$WORK/out"/*
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
mib() { awk -v b="$1" 'BEGIN { if (b == "") print "-"; else printf "%.0f", b / 1048576 }'; }
mkdir -p "$(dirname "$RESULTS")"
{
  echo "repo-bench: ${SIZE_MIB} MiB real-data disk ($(basename "$IMG")), median of $RUNS, $(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  echo "| run | wall s | CPU s | peak RSS MiB | repository MiB after |"
  echo "|---|---|---|---|---|"
  for n in sd-repo-first sd-vma-zstd restic-first borg-first sd-repo-second restic-second borg-second sd-restore restic-restore zstd-d; do
    b=""; [ -z "${BYTES[$n]:-}" ] || b=$(mib "$(echo "${BYTES[$n]}" | median)")
    echo "| $n | $(echo "${WALL[$n]}" | median) | $(echo "${CPU[$n]}" | median) | $(echo "${RSS[$n]}" | median) | ${b:--} |"
  done
  echo
  echo "raw walls: $(for n in "${!WALL[@]}"; do echo -n "$n=[${WALL[$n]}] "; done)"
} | tee "$RESULTS"
