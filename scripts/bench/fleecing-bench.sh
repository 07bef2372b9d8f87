#!/usr/bin/env bash
# Fleecing benchmark (issue 9), against the running test guest writing as fast
# as it can (snapdump.interval_ms=0: 4 KiB records, O_DIRECT|O_SYNC, sequential,
# over a disk prefilled with random data, so every 64 KiB cluster it reaches
# during a fleecing backup is copied to the fleecing image first):
#   idle:      the guest's write rate with no backup running;
#   fleecing:  snapshot mode on raw `dir` with --fleecing (storage 'fl'): the
#              guest's write rate meanwhile, the fleecing image's largest size
#              vs what the guest wrote, backup throughput;
#   snapshot:  the same disk file, reached through a `dir` storage with
#              `reflink 1` (XFS): a storage-snapshot backup, for comparison.
# Runs interleaved (idle, fleecing, snapshot) RUNS times; medians.
# The disk lives on a scratch XFS loop filesystem (reflink=1), defined twice in
# storage.cfg (`xn` without reflink → fleecing, `xr` with reflink → snapshot);
# the VM config's volid is switched between runs while the guest runs (QEMU
# keeps the same file open). Page cache dropped for the disk file
# (posix_fadvise DONTNEED) before each backup.
#
# Usage (root): scripts/bench/fleecing-bench.sh
# Environment: RUNS=3 DISK_MIB=1024 SNAPDUMP_BIN=.build/release/snapdump SNAPDUMP_GUEST_DIR SNAPDUMP_BENCH_DIR=/var/tmp
set -euo pipefail
HERE=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
ROOT=$(readlink -f "$HERE/../..")
RUNS=${RUNS:-3}
DISK_MIB=${DISK_MIB:-1024}
WORK="${SNAPDUMP_BENCH_DIR:-/var/tmp}/snapdump-fleecing-bench-$$"
RESULTS=${BENCH_RESULTS:-$ROOT/.build/bench/fleecing-bench.md}
SD=${SNAPDUMP_BIN:-$ROOT/.build/release/snapdump}
GUEST=${SNAPDUMP_GUEST_DIR:-$ROOT/.build/test-guest}
VMID=900
LOOP=""
log() { echo "bench: $*" >&2; }

cleanup() {
  set +e
  "$SD" vm unlock $VMID >/dev/null 2>&1
  "$SD" vm stop $VMID >/dev/null 2>&1
  "$SD" vm destroy $VMID >/dev/null 2>&1
  mountpoint -q "$WORK/xfs" 2>/dev/null && umount "$WORK/xfs"
  [ -n "$LOOP" ] && losetup -d "$LOOP"
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
[ "$(id -u)" = 0 ] || { echo "fleecing-bench: needs root (loop XFS)" >&2; exit 1; }
[ -x "$SD" ] || (cd "$ROOT" && swift build -c release --product snapdump 2>&1 | tail -1 >&2)
"$ROOT/scripts/test-guest/build.sh" "$GUEST" >/dev/null

mkdir -p "$WORK/xfs" "$WORK/fl" "$WORK/bk"
truncate -s $((DISK_MIB + 512))M "$WORK/xfs.img"
LOOP=$(losetup -f --show "$WORK/xfs.img")
mkfs.xfs -q -m reflink=1 "$LOOP"
mount "$LOOP" "$WORK/xfs"
export SNAPDUMP_CONFIG_DIR=$WORK/etc
"$SD" storage add dir xn --path "$WORK/xfs" --content images >/dev/null
"$SD" storage add dir xr --path "$WORK/xfs" --content images --reflink 1 >/dev/null
"$SD" storage add dir fl --path "$WORK/fl" --content images >/dev/null
"$SD" storage add dir bk --path "$WORK/bk" --content backup >/dev/null
"$SD" vm create $VMID --name bench --memory 256 --scsi0 "xn:${DISK_MIB}M" --agent 1 \
  --kernel "$GUEST/vmlinuz" --initrd "$GUEST/initramfs.gz" \
  --append "console=ttyS0 quiet panic=-1 snapdump.interval_ms=0" >/dev/null
DISK=$("$SD" volume path xn:$VMID/vm-$VMID-disk-0.raw)
log "prefilling $DISK with random data"
dd if=/dev/urandom of="$DISK" bs=4M seek=0 count=$((DISK_MIB / 4)) conv=notrunc,fsync status=none
"$SD" vm start $VMID >/dev/null
CONSOLE=$SNAPDUMP_CONFIG_DIR/run/qemu/$VMID.serial.log
# The last heartbeat the guest finished printing: a line still being written ("HB 12" of
# "HB 12345") would read as fewer records than before (a negative count, seen once).
hb() {
  local c
  c=$(tail -c 2048 "$CONSOLE"; echo x); c=${c%x}
  [[ $c == *$'\n' ]] || c=${c%$'\n'*}
  grep -a '^HB ' <<<"$c" | tail -1 | tr -d '\r' | awk '{print $2}'
}
for _ in $(seq 1 240); do [ -n "$(hb)" ] && break; sleep 0.5; done
[ -n "$(hb)" ] || { echo "fleecing-bench: the guest did not start writing" >&2; exit 1; }
sleep 3
CONF=$SNAPDUMP_CONFIG_DIR/qemu/$VMID.conf
use_storage() { sed -i -E "s/^scsi0: x[nr]:/scsi0: $1:/" "$CONF"; }
drop_cache() { python3 -c 'import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd,0,0,os.POSIX_FADV_DONTNEED)' "$DISK"; }
now() { date +%s.%N; }
OUT=$WORK/rows.txt
: > "$OUT"

# One measurement: kind, seconds, records written, fleecing image peak bytes, backup bytes read, backup seconds.
idle() {
  local t0 h0 t1 h1
  t0=$(now); h0=$(hb); sleep 10; t1=$(now); h1=$(hb)
  echo "idle $(echo "$t1 - $t0" | bc) $((h1 - h0)) 0 0 0" >> "$OUT"
}
backup() {
  local kind=$1; shift
  local t0 h0 t1 h1 peak=0 s
  drop_cache
  t0=$(now); h0=$(hb)
  "$SD" backup $VMID --mode snapshot --storage bk --output-format json "$@" > "$WORK/last.json" 2> "$WORK/last.err" &
  local pid=$!
  while kill -0 $pid 2>/dev/null; do
    for f in "$WORK"/fl/images/$VMID/vm-$VMID-fleece-*.qcow2; do
      [ -e "$f" ] && s=$(stat -c '%b*%B' "$f" 2>/dev/null | bc) && [ "${s:-0}" -gt "$peak" ] && peak=$s
    done
    sleep 0.1
  done
  wait $pid || { cat "$WORK/last.err" >&2; exit 1; }
  t1=$(now); h1=$(hb)
  read -r bytes secs < <(python3 -c 'import json,sys; s=json.load(open(sys.argv[1]))[0]; print(s["readBytes"], s["seconds"])' "$WORK/last.json")
  echo "$kind $(echo "$t1 - $t0" | bc) $((h1 - h0)) $peak $bytes $secs" >> "$OUT"
  rm -f "$WORK"/bk/dump/*
}

for i in $(seq 1 "$RUNS"); do
  log "run $i/$RUNS: idle"
  idle
  log "run $i/$RUNS: fleecing"
  use_storage xn
  backup fleecing --fleecing enabled=1,storage=fl
  log "run $i/$RUNS: storage snapshot (reflink)"
  use_storage xr
  backup snapshot
done
use_storage xn

mkdir -p "$(dirname "$RESULTS")"
python3 - "$OUT" "$DISK_MIB" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)" > "$RESULTS" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
def med(xs): return statistics.median(xs) if xs else 0
by = {}
for k, secs, recs, peak, read, bsecs in rows:
    by.setdefault(k, []).append((float(secs), int(recs), int(peak), int(read), float(bsecs)))
print(f"Disk {sys.argv[2]} MiB raw, prefilled with random data; guest writes 4 KiB records (O_DIRECT|O_SYNC) as fast as it can (TCG).")
print(f"{sys.argv[3]} shared cores, load average at the end: {sys.argv[4]}. Medians of {len(by.get('idle', []))} runs, interleaved.\n")
print("| | guest writes | guest MiB/s | vs idle | fleecing image peak | image / guest writes | backup read | backup MiB/s |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
idle = med([r / s for s, r, *_ in by.get("idle", [])])
for k, label in [("idle", "no backup"), ("fleecing", "fleecing backup (raw dir)"), ("snapshot", "storage-snapshot backup (reflink)")]:
    xs = by.get(k, [])
    if not xs: continue
    rate = med([r / s for s, r, *_ in xs])
    mib = rate * 4096 / 2**20
    wrote = med([r * 4096 / 2**20 for _, r, *_ in xs])
    peak = med([p / 2**20 for _, _, p, _, _ in xs])
    ratio = med([p / (r * 4096) for _, r, p, _, _ in xs if r > 0]) if k == "fleecing" else 0
    read = med([b / 2**20 for *_, b, _ in xs])
    tput = med([b / 2**20 / bs for *_, b, bs in xs if bs > 0])
    if k == "idle":
        print(f"| {label} | {wrote:.1f} MiB in 10 s | {mib:.2f} | 1.00× | – | – | – | – |")
    else:
        print(f"| {label} | {wrote:.1f} MiB | {mib:.2f} | {rate / idle:.2f}× | {peak:.1f} MiB |"
              f" {ratio:.2f} | {read:.0f} MiB | {tput:.0f} |" if k == "fleecing" else
              f"| {label} | {wrote:.1f} MiB | {mib:.2f} | {rate / idle:.2f}× | – | – | {read:.0f} MiB | {tput:.0f} |")
print("\nSingle runs (kind, wall s, records, image peak bytes, bytes read, backup s):")
for r in rows: print("- " + " ".join(r))
PY
cat "$RESULTS"
