#!/usr/bin/env bash
# zfs-fuse incremental A/B (issue 11, BENCHMARKS.md "zfs-fuse: the waiting"):
# two release binaries, each with a guest of its own on one file-vdev pool made
# here, a 2 GiB real-data disk; per run 1 % changed (real-disk.sh change …
# extents), then a timed second backup; A and B alternate. With STRACE=1 the
# last run of each is traced and every child is listed with its wall time.
#
# Usage (root): scripts/bench/zfs-incremental-ab.sh BIN_A BIN_B [RUNS [SIZE_MIB]]
set -euo pipefail
HERE=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
A=$1 B=$2 RUNS=${3:-5} SIZE=${4:-2048}
W=$(mktemp -d "${SNAPDUMP_BENCH_DIR:-/var/tmp}/snapdump-zfs-ab.XXXXXX")
CONF=$W/etc ZPOOL=sdzfsab$$
cleanup() {
  for v in 951 952; do "$A" vm destroy $v --config-dir "$CONF" >/dev/null 2>&1 || true; done
  for _ in 1 2 3 4 5 6 7 8 9 10; do zpool destroy -f "$ZPOOL" 2>/dev/null && break; zpool list "$ZPOOL" >/dev/null 2>&1 || break; sleep 1; done
  rm -rf "$W"
}
trap cleanup EXIT
IMG=$("$HERE/real-disk.sh" image "$SIZE")
mkdir -p "$CONF"
truncate -s $((SIZE * 3))M "$W/zpool.img"
zpool create -m "$W/zmnt" "$ZPOOL" "$W/zpool.img"
sd() { "$A" "$@" --config-dir "$CONF"; }
sd storage add zfspool zf --pool "$ZPOOL" >/dev/null
sd storage add repo r1 --path "$W/repo" >/dev/null
sd repo init r1 >/dev/null
declare -A DISK BIN=([951]=$A [952]=$B)
for v in 951 952; do
  sd vm create $v --memory 256 --scsi0 "zf:${SIZE}M" >/dev/null
  volid=$(sed -n 's/^scsi0: *\([^,]*\).*/\1/p' "$(find "$CONF" -name "$v.conf" | head -1)")
  DISK[$v]=$(sd volume path "$volid")
  cp --sparse=never "$IMG" "${DISK[$v]}" && sync -f "${DISK[$v]}"
  "${BIN[$v]}" backup $v --mode stop --storage r1 --config-dir "$CONF" >/dev/null 2>"$W/first-$v.err"
done
children() {  # the children of a strace -f -tt log: start, wall, argv
  python3 - "$1" "$2" <<'PY'
import re, sys
def t(s): h, m, x = s.split(':'); return int(h) * 3600 + int(m) * 60 + float(x)
start, argv, end, first = {}, {}, {}, None
for l in open(sys.argv[1]):
    m = re.match(r'(\d+)\s+(\S+) (.*)', l)
    if not m: continue
    pid, ts, rest = int(m.group(1)), t(m.group(2)), m.group(3)
    first = ts if first is None else first
    if rest.startswith('execve(') and 'ENOENT' not in rest:
        a = re.search(r'\[(.*?)\]', rest)
        start.setdefault(pid, ts); argv[pid] = ' '.join(re.findall(r'"([^"]*)"', a.group(1))) if a else rest
    if rest.startswith('+++'): end[pid] = ts
rows = sorted((start[p], end.get(p, start[p]), argv[p]) for p in start if argv[p].split(' ')[0] not in ('/usr/bin/time', sys.argv[2]))
for s, e, a in rows: print(f"{s - first:7.3f} s  {1000 * (e - s):5.0f} ms  {a[:140]}")
print(f"{len(rows)} children, {sum(e - s for s, e, _ in rows):.3f} s summed")
PY
}
seed=100
for i in $(seq "$RUNS"); do
  for v in 951 952; do
    seed=$((seed + 1))
    "$HERE/real-disk.sh" change "${DISK[$v]}" 1 $seed extents >/dev/null 2>&1 && sync -f "${DISK[$v]}"
    pre=()
    [ -n "${STRACE:-}" ] && [ "$i" = "$RUNS" ] && pre=(strace -f -tt -T -o "$W/strace-$v" -e trace=process,wait4,clock_nanosleep,ppoll,pselect6)
    "${pre[@]}" /usr/bin/time -f '%e %U %S' -o "$W/t" "${BIN[$v]}" backup $v --mode stop --storage r1 --config-dir "$CONF" >/dev/null 2>"$W/run.err"
    grep -q "incremental: " "$W/run.err" || { echo "not incremental:" >&2; cat "$W/run.err" >&2; exit 1; }
    read -r wall u s <"$W/t"
    echo "run $i $([ $v = 951 ] && echo A || echo B) ${BIN[$v]}: ${wall} s wall, $(awk -v u="$u" -v s="$s" 'BEGIN {print u + s}') s CPU, load $(cut -d' ' -f1 /proc/loadavg)"
  done
done
if [ -n "${STRACE:-}" ]; then
  for v in 951 952; do echo "children of ${BIN[$v]}'s last run:"; children "$W/strace-$v" "${BIN[$v]}"; done
fi
