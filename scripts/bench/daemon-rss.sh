#!/usr/bin/env bash
# snapdumpd memory (issue 15): a job of GUESTS tiny stopped guests on a dir
# storage, scheduled every minute, RUNS runs; after each run the daemon's
# resident size (VmRSS) and its peak so far (VmHWM) from /proc/<pid>/status.
# Target: peak ≤ 256 MiB, and the RSS after each run back at the size after
# the first (no growth from run to run).
#
# Usage (root): scripts/bench/daemon-rss.sh
# Environment:  RUNS=20  GUESTS=30  DISK_MIB=64  DATA_MIB=16 (random data per disk)
#               SNAPDUMPD=PATH (default .build/release/snapdumpd; build it first)
#               SNAPDUMP=PATH  (default beside SNAPDUMPD)
#               SNAPDUMP_BENCH_DIR (default /var/tmp)  BENCH_RESULTS=FILE (default .build/bench/daemon-rss.md)
# Exits 1 when the peak exceeds 256 MiB or the last run's RSS exceeds the first's by more than 32 MiB.
set -euo pipefail

HERE=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
ROOT=$(readlink -f "$HERE/../..")
RUNS=${RUNS:-20}
GUESTS=${GUESTS:-30}
DISK_MIB=${DISK_MIB:-64}
DATA_MIB=${DATA_MIB:-16}
SNAPDUMPD=${SNAPDUMPD:-$ROOT/.build/release/snapdumpd}
SNAPDUMP=${SNAPDUMP:-$(dirname "$SNAPDUMPD")/snapdump}
BASE=${SNAPDUMP_BENCH_DIR:-/var/tmp}
WORK="$BASE/snapdump-daemon-rss-$$"
RESULTS=${BENCH_RESULTS:-$ROOT/.build/bench/daemon-rss.md}

log() { echo "daemon-rss: $*" >&2; }
die() { echo "daemon-rss: ERROR: $*" >&2; exit 1; }
[ -x "$SNAPDUMPD" ] && [ -x "$SNAPDUMP" ] || die "$SNAPDUMPD or $SNAPDUMP missing (swift build --product snapdumpd --product snapdump)"

DAEMON=""
cleanup() {
  set +e
  [ -n "$DAEMON" ] && kill -TERM "$DAEMON" 2>/dev/null && wait "$DAEMON" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

CFG="$WORK/etc"
sd() { "$SNAPDUMP" "$@" --config-dir "$CFG"; }
mkdir -p "$WORK/store"
sd storage add dir local --path "$WORK/store" --content images,backup >/dev/null
# Keep a few archives per guest, as a real job would (prune runs each time).
vmids=()
for i in $(seq 1 "$GUESTS"); do
  vmid=$((7000 + i))
  vol=$(sd volume alloc local $vmid "${DISK_MIB}M")
  head -c $((DATA_MIB << 20)) /dev/urandom | dd of="$(sd volume path "$vol")" bs=1M conv=notrunc status=none
  sd vm create $vmid --name "tiny$i" --scsi0 "$vol" >/dev/null
  vmids+=("$vmid")
done
sd job add --id rss --schedule '*/1' --vmid "$(IFS=,; echo "${vmids[*]}")" --storage local --mode stop \
  --compress zstd --prune-backups keep-last=2 >/dev/null

"$SNAPDUMPD" --config-dir "$CFG" >"$WORK/daemon.log" 2>&1 &
DAEMON=$!
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
status() { awk -v k="$1:" '$1 == k { print int($2 / 1024) }' "/proc/$DAEMON/status"; }
sleep 2
IDLE=$(status VmRSS)
log "snapdumpd $DAEMON ($SNAPDUMPD) idle before the first run: $IDLE MiB; $RUNS runs of $GUESTS guests, one a minute"

rows=()
rss=()
last_end=""
for run in $(seq 1 "$RUNS"); do
  # The run is over when the job state records an end newer than the last one seen.
  for _ in $(seq 1 300); do
    kill -0 "$DAEMON" 2>/dev/null || die "snapdumpd exited: $(tail -5 "$WORK/daemon.log")"
    end=$(jq -r '.lastRun.end // empty' "$CFG/jobs/rss.json" 2>/dev/null || true)
    [ -n "$end" ] && [ "$end" != "$last_end" ] && break
    sleep 1
  done
  [ -n "$end" ] && [ "$end" != "$last_end" ] || die "run $run did not finish within 5 minutes"
  last_end=$end
  result=$(jq -r '.lastRun.result' "$CFG/jobs/rss.json")
  [ "$result" = ok ] || die "run $run: $result: $(jq -r '.lastRun.error' "$CFG/jobs/rss.json")"
  sleep 1
  r=$(status VmRSS)
  h=$(status VmHWM)
  rss+=("$r")
  log "run $run: RSS $r MiB, peak so far $h MiB"
  rows+=("$run:$r:$h")
done

PEAK=$(status VmHWM)
FIRST=${rss[0]}
LAST=${rss[$((${#rss[@]} - 1))]}
MAX=$(printf '%s\n' "${rss[@]}" | sort -n | tail -1)
{
  echo "## snapdumpd memory — $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "Command: \`scripts/bench/daemon-rss.sh\` (RUNS=$RUNS GUESTS=$GUESTS DISK_MIB=$DISK_MIB DATA_MIB=$DATA_MIB), binary $SNAPDUMPD, commit $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?'), load average at start: $LOAD_START, at end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  echo "Idle before the first run: $IDLE MiB. After each run (MiB): $(printf '%s\n' "${rss[@]}" | paste -sd' ')"
  echo
  echo "| peak (VmHWM) | RSS after run 1 | after run $RUNS | highest after a run |"
  echo "|---:|---:|---:|---:|"
  echo "| $PEAK | $FIRST | $LAST | $MAX |"
} | tee "$WORK/report.md"
mkdir -p "$(dirname "$RESULTS")"
cp "$WORK/report.md" "$RESULTS"
[ "$PEAK" -le 256 ] && [ "$LAST" -le $((FIRST + 32)) ] || { log "over the target (peak ≤ 256 MiB, last ≤ first + 32 MiB)"; exit 1; }
