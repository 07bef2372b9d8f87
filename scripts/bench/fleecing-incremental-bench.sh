#!/usr/bin/env bash
# Incremental forever through fleecing (issue 11): the running test guest (no
# workload) on a raw `dir` disk holding the cached 2 GiB ext4 of real files
# (real-disk.sh), backed up with --fleecing into a repository: a full backup,
# then 1 % of the disk (82 × 256 KiB at seeded random offsets) written through
# QEMU's device (HMP qemu-io), an incremental backup (QEMU dirty bitmap), and
# one more with nothing changed. Prints wall time and what each read.
# Usage (root): scripts/bench/fleecing-incremental-bench.sh
# Environment: SNAPDUMP_BIN (default the debug build), SNAPDUMP_GUEST_DIR, SNAPDUMP_BENCH_DIR=/var/tmp
set -euo pipefail
HERE=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
ROOT=$(readlink -f "$HERE/../..")
SD=${SNAPDUMP_BIN:-$ROOT/.build/debug/snapdump}
G=${SNAPDUMP_GUEST_DIR:-/var/tmp/snapdump-guest}
W=${SNAPDUMP_BENCH_DIR:-/var/tmp}/snapdump-fleece-incr-bench-$$
export SNAPDUMP_CONFIG_DIR=/tmp/snapdump-fib-$$
VMID=981
cleanup() { set +e; "$SD" vm unlock $VMID >/dev/null 2>&1; "$SD" vm stop $VMID >/dev/null 2>&1; "$SD" vm destroy $VMID >/dev/null 2>&1; rm -rf "$W" "$SNAPDUMP_CONFIG_DIR"; }
trap cleanup EXIT
mkdir -p "$W/img" "$W/fl"
"$SD" storage add dir local --path "$W/img" --content images >/dev/null
"$SD" storage add dir fl --path "$W/fl" --content images >/dev/null
"$SD" storage add repo r1 --path "$W/repo" >/dev/null
"$SD" repo init r1 >/dev/null
"$SD" vm create $VMID --name bench --memory 256 --scsi0 local:2048M --agent 1 --kernel $G/vmlinuz --initrd $G/initramfs.gz \
  --append "console=ttyS0 quiet panic=-1 snapdump.workload=0" >/dev/null
DISK=$("$SD" volume path local:$VMID/vm-$VMID-disk-0.raw)
SRC=$("$ROOT/scripts/bench/real-disk.sh" image 2048)
cp --sparse=always "$SRC" "$DISK"
"$SD" vm start $VMID >/dev/null
sleep 20
bk() { local t0=$(date +%s.%N); "$SD" backup $VMID --mode snapshot --storage r1 --fleecing enabled=1,storage=fl --output-format json > "$W/out.json" 2> "$W/err.txt"; local t1=$(date +%s.%N)
  python3 - "$W/out.json" "$1" "$(echo "$t1 - $t0" | bc)" <<'PY'
import json,sys
s=json.load(open(sys.argv[1]))[0]; d=s["disks"][0]
print(f'{sys.argv[2]}: wall {float(sys.argv[3]):.2f} s, snapdump seconds {s["seconds"]:.2f}, method {d["method"]}, read {d["read"]}/{d["chunks"]} chunks, {d["bytesRead"]/1048576:.1f} MiB read, fromPrevious {d["fromPrevious"]}')
PY
  grep -a "full read\|incremental:" "$W/err.txt" | sed 's/^/   /' | cut -c1-200; }
bk full
python3 - > "$W/writes.txt" <<'PY'
import random
r=random.Random(11); size=2048<<20
for i in range(82):
    off=r.randrange(0, size-(256<<10), 4096)
    print(off)
PY
python3 - "$SNAPDUMP_CONFIG_DIR/run/qemu/$VMID.qmp" "$W/writes.txt" <<'PY'
import socket,json,sys
s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f=s.makefile('rw')
f.readline(); f.write(json.dumps({"execute":"qmp_capabilities"})+"\n"); f.flush(); f.readline()
for off in open(sys.argv[2]):
    cmd='qemu-io -d scsi0 "write -P 0x6b %d 262144"' % int(off)
    f.write(json.dumps({"execute":"human-monitor-command","arguments":{"command-line":cmd}})+"\n"); f.flush()
    while True:
        l=json.loads(f.readline())
        if "return" in l or "error" in l: break
PY
echo "wrote 82 x 256 KiB = 20.5 MiB (1 %) through QEMU"
bk incremental
bk "incremental, nothing changed"
uptime
