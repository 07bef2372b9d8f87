#!/usr/bin/env bash
# `make demo`: the seed article's story, end to end, on this machine.
#
#  1. storages: a plain dir storage `local` (raw images + backups) and, as
#     root, a loop-backed btrfs storage `demo-btrfs` (qcow2 on dir when not root);
#  2. VM 100: the test guest, its disk on `local`, writing records;
#  3. a snapshot-mode backup there: raw files on dir cannot snapshot, so it
#     falls back to suspend — loudly — and reports its downtime; then the
#     same with fleecing (`--fleecing enabled=1,storage=local`): QEMU keeps
#     the point-in-time view, the guest is never paused;
#  4. `vm move-disk 100 scsi0 demo-btrfs` while the guest writes;
#  5. a snapshot-mode backup again: downtime of milliseconds;
#  6. restore to VM 101 and check its records are crash-consistent and end
#     between the heartbeats seen just before and after the backup;
#  7. a table: mode, storage, downtime, longest heartbeat gap seen from the
#     host during the backup, archive size, throughput.
# Everything it creates is removed on exit, on every path.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

CONFIG=${SNAPDUMP_DEMO_BUILD:-release}
DEMO=${SNAPDUMP_DEMO_DIR:-/var/tmp/snapdump-demo}
export SNAPDUMP_CONFIG_DIR=$DEMO/etc
GUEST=$ROOT/.build/test-guest
SD=$ROOT/.build/$CONFIG/snapdump
MNT=$DEMO/btrfs
LOOP=""

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

cleanup() {
  set +e
  say "cleaning up"
  for vmid in 100 101; do
    if [ -f "$SNAPDUMP_CONFIG_DIR/qemu/$vmid.conf" ]; then
      "$SD" vm unlock $vmid >/dev/null 2>&1
      "$SD" vm stop $vmid >/dev/null 2>&1
      "$SD" vm destroy $vmid >/dev/null 2>&1
    fi
  done
  if mountpoint -q "$MNT" 2>/dev/null; then
    btrfs subvolume list -o "$MNT" 2>/dev/null | awk '{print $NF}' | sort -r | while read -r sv; do
      btrfs -q subvolume delete "$MNT/${sv#*/}" 2>/dev/null || btrfs -q subvolume delete "$MNT/$sv" 2>/dev/null
    done
    umount "$MNT" || umount -l "$MNT"
  fi
  [ -n "$LOOP" ] && losetup -d "$LOOP" 2>/dev/null
  rm -rf "$DEMO"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

scripts/install-deps.sh
say "building snapdump ($CONFIG) and the test guest"
swift build -c "$CONFIG" 2>&1 | grep -E 'error|warning: |Compiling|Build complete' | tail -3
scripts/test-guest/build.sh "$GUEST" >/dev/null

rm -rf "$DEMO"
mkdir -p "$DEMO/local" "$SNAPDUMP_CONFIG_DIR"

say "storages"
"$SD" storage add dir local --path "$DEMO/local" --content images,backup
if [ "$(id -u)" = 0 ]; then
  truncate -s 3G "$DEMO/btrfs.img"
  LOOP=$(losetup -f --show "$DEMO/btrfs.img")
  mkfs.btrfs -q "$LOOP"
  mkdir -p "$MNT"
  mount "$LOOP" "$MNT"
  TARGET=demo-btrfs
  "$SD" storage add btrfs "$TARGET" --path "$MNT" --content images
  TARGET_FORMAT=raw
else
  TARGET=local-qcow2
  mkdir -p "$DEMO/qcow2"
  "$SD" storage add dir "$TARGET" --path "$DEMO/qcow2" --content images --format qcow2
  TARGET_FORMAT=qcow2
fi
"$SD" storage status

say "VM 100: the test guest on raw dir storage 'local'"
# scsi1 holds a filesystem the guest mounts (snapdump.fsdisk), so the agent's
# fs-freeze has something to freeze and the downtime shown is a real one.
"$SD" vm create 100 --name demo --memory 256 --scsi0 local:1G --scsi1 local:64M --agent 1 \
  --kernel "$GUEST/vmlinuz" --initrd "$GUEST/initramfs.gz" \
  --append "console=ttyS0 quiet panic=-1 snapdump.interval_ms=10 snapdump.fsdisk=/dev/sdb"
# Give the disk some real data (as an installed system would have), far from where the workload writes.
dd if=/dev/urandom of="$("$SD" volume path local:100/vm-100-disk-0.raw)" bs=1M count=256 seek=512 conv=notrunc status=none
"$SD" vm start 100
CONSOLE=$SNAPDUMP_CONFIG_DIR/run/qemu/100.serial.log
for _ in $(seq 1 120); do grep -q '^HB ' "$CONSOLE" 2>/dev/null && break; sleep 0.5; done
grep -q '^HB ' "$CONSOLE" || { echo "demo: the guest did not start writing" >&2; exit 1; }
last_hb() { grep -a '^HB ' "$CONSOLE" | tail -1 | tr -d '\r' | awk '{print $2}'; }
echo "guest is writing records: heartbeat $(last_hb)"
sleep 2

RESULTS=$DEMO/results.jsonl
# Samples the last heartbeat every 50 ms while a backup runs: a paused guest shows as a gap.
watch_heartbeats() {
  while :; do echo "$(date +%s.%N) $(tail -c 2048 "$CONSOLE" | grep -a '^HB ' | tail -1 | tr -d '\r' | awk '{print $2}')"; sleep 0.05; done > "$DEMO/beats.txt"
}
backup() {
  local label=$1
  shift
  say "$label"
  watch_heartbeats & local watcher=$!
  # The summary as JSON on stdout; the task log (JSON events on stderr) shown as vzdump's text lines.
  "$SD" backup 100 --mode snapshot --storage local --compress zstd --zstd 0 --output-format json "$@" > "$DEMO/last.json" \
    2> >(python3 -c 'import json, sys
for line in sys.stdin:
    try:
        e = json.loads(line)
        print(e["level"] + ": " + e["message"], file=sys.stderr, flush=True)
    except (ValueError, KeyError):
        print(line, end="", file=sys.stderr, flush=True)')
  kill "$watcher"; wait "$watcher" 2>/dev/null || true
  python3 - "$DEMO/last.json" "$DEMO/beats.txt" >> "$RESULTS" <<'PY'
import json, sys
beats = [l.split() for l in open(sys.argv[2]) if len(l.split()) == 2]
# The longest time between two samples that saw a new heartbeat (or until the end).
gap, since, last = 0.0, None, None
for t, hb in beats:
    t = float(t)
    if hb != last:
        if since is not None: gap = max(gap, t - since)
        since, last = t, hb
if since is not None: gap = max(gap, float(beats[-1][0]) - since)
for x in json.load(open(sys.argv[1])):
    x["heartbeatGap"] = gap
    print(json.dumps(x))
PY
}

backup "snapshot-mode backup on raw dir storage (cannot snapshot: loud fallback to suspend)"
backup "the same with fleecing on raw dir storage (QEMU copy-before-write; the guest is not paused)" --fleecing enabled=1,storage=local
say "moving scsi0 live to $TARGET while the guest writes"
"$SD" vm move-disk 100 scsi0 "$TARGET" --format "$TARGET_FORMAT" --delete
"$SD" vm move-disk 100 scsi1 "$TARGET" --format "$TARGET_FORMAT" --delete
"$SD" vm config 100 | grep scsi
sleep 2
BEFORE=$(last_hb)
backup "snapshot-mode backup on $TARGET (storage snapshot, milliseconds of downtime)"
AFTER=$(last_hb)
ARCHIVE=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[0]["archive"])' "$DEMO/last.json")

say "restore to VM 101 and check the guest's records"
"$SD" restore "$ARCHIVE" 101 --storage local
DISK=$("$SD" volume path local:101/vm-101-disk-0.raw)
"$GUEST/snapdump-record-check" "$DISK" | tee "$DEMO/check.txt" | grep -E 'last_contiguous|status'
LAST=$(awk -F= '$1=="last_contiguous"{print $2}' "$DEMO/check.txt")
grep -q 'status=consistent' "$DEMO/check.txt" || { echo "demo: restored disk is NOT crash-consistent" >&2; exit 1; }
if [ "$LAST" -lt "$BEFORE" ] || [ "$LAST" -gt $((AFTER + 10)) ]; then
  echo "demo: last record $LAST is not between heartbeats $BEFORE (before) and $AFTER (after)" >&2
  exit 1
fi
echo "restored disk: crash-consistent, last record $LAST lies between heartbeat $BEFORE (before backup) and $AFTER (after)"
"$SD" vm shutdown 100 --timeout 30 --force-stop

say "summary"
python3 - "$RESULTS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def size(n):
    for u in ["B", "KiB", "MiB", "GiB"]:
        if n < 1024: return f"{n:.1f} {u}"
        n /= 1024
    return f"{n:.1f} TiB"
hdr = ["mode (requested → used)", "storage", "guest downtime", "heartbeat gap", "archive size", "throughput"]
out = []
for r in rows:
    mode = f'{r["requestedMode"]} → {r.get("mode", "-")}' + (f' ({r["method"]})' if r.get("method") else "")
    dt = f'{r["downtimeMs"]} ms ({r.get("downtimeKind", "")})' if "downtimeMs" in r else "0 ms"
    if r.get("downtimeParts"):
        dt += " = " + ", ".join(f"{k} {v} ms" for k, v in r["downtimeParts"].items())
    tp = size(r["diskBytes"] / r["seconds"]) + "/s" if r["seconds"] > 0 else "-"
    out.append([mode, ",".join(r["storages"]), dt, f'{r["heartbeatGap"]:.2f} s', size(r["archiveBytes"]), tp])
w = [max(len(x[i]) for x in out + [hdr]) for i in range(len(hdr))]
for line in [hdr] + out:
    print("  ".join(c.ljust(w[i]) for i, c in enumerate(line)))
PY
