#!/usr/bin/env bash
# Incremental-forever benchmark (issue 11), through the CLI of a release
# build: `snapdump backup --mode stop --storage <repo>` of a guest whose disk
# holds a real-data image (scripts/bench/real-disk.sh image SIZE_MIB), on
# btrfs (btrfs send), reflink XFS (FIEMAP), zfs-fuse (zfs send -i), each on
# a loop filesystem / file-vdev pool of its own made here, and a qcow2 image on
# a dir storage (its persistent dirty bitmap in stop mode: `qemu-img bitmap`,
# the bitmap read from the image file; the change written with qemu-io), all into one
# repository (so only the first guest's first backup stores the image; disk
# space: 8 GiB needs ~35 GiB free). First backup (full), then `real-disk.sh
# change` of PCT % of the disk (another seed per storage: no change is
# stored twice), written out to the disk (syncfs; zfs-fuse: a throwaway
# snapshot), then the second backup, timed: only the changed ranges
# are read. Against `restic backup` and `borg create -C zstd,1` of each
# guest's disk file where it lives (the raw file on btrfs, XFS and zfs-fuse,
# the qcow2 file), before and after the same change (their second run timed):
# what a user of that storage would run. The summary gives each storage's
# ratio against the baselines on the same storage and against the fastest
# baseline of the run (whatever storage it read from). borg compresses at
# zstd level 1, the level snapdump's chunks use (PBS's; BORG_COMPRESSION
# overrides: the bench before session 14 used zstd,3); restic 0.14 has no
# level to choose and runs its default (`auto`).
#
# RUNS > 1 repeats change + second backups (new seed each time, snapdump on
# every storage, then restic and borg on every storage) and reports each.
#
# Per run: wall and CPU seconds (/usr/bin/time; CPU of the process and its
# children, e.g. btrfs send, zfs send), bytes read from the disk (snapdump's
# log and JSON summary; restic/borg: rchar from /proc/<pid>/io, sampled),
# bytes stored (snapdump: new chunks compressed; restic/borg: repository growth).
#
# Usage (root): scripts/bench/incremental-bench.sh [SIZE_MIB [PCT [SEED [MODE [RUNS]]]]]
#   defaults 2048 1 11 extents 1. Runs the self-contained release binary the package installs
#   (`make release`: .build/static/release/snapdump), else .build/release/snapdump, or SNAPDUMP_BIN.
#   SKIP_BASELINES=1: snapdump only. Results appended to .build/bench/incremental-bench.md.
#   PROFILE_DIR=DIR: each second backup runs under `perf record -F 4999 -g` (DIR/second-STORAGE-RUN.data;
#   its times then include perf's overhead). TRACE_DIR=DIR: under `strace -f -tt -T` (DIR/second-STORAGE-RUN.strace;
#   TRACE_SYSCALLS=execve,fsync,…: only those, through seccomp-bpf). EVENTS_DIR=DIR: the processes' forks,
#   execs and exits, system-wide (`perf record -a -e sched:…`; `perf script -i DIR/second-STORAGE-RUN.data`),
#   a timeline of the child processes at little cost (ptrace, even filtered, slows every spawn).
#   STORAGES="qc": only these of bt (btrfs) xf (XFS reflink) zf (zfs-fuse) qc (qcow2), default all four;
#   the others' filesystems are not made. ZFS_WRITE_OUT=0: zfs-fuse's dirty data is not written out
#   before the timed backup (see written_out below; the other storages' syncfs is done either way).
#   COLD=1: the page cache dropped before each timed run (snapdump's and the baselines').
set -euo pipefail
HERE=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
ROOT=$(readlink -f "$HERE/../..")
# shellcheck source=../fixtures/lib.sh
source "$ROOT/scripts/fixtures/lib.sh"   # zfs_fuse_for_bench; its log() is replaced below
SIZE=${1:-2048} PCT=${2:-1} SEED=${3:-11} MODE=${4:-extents} RUNS=${5:-1}
BIN=${SNAPDUMP_BIN:-}
if [ -z "$BIN" ]; then
  BIN=$ROOT/.build/static/release/snapdump
  [ -x "$BIN" ] || BIN=$ROOT/.build/release/snapdump
fi
RESULTS=${BENCH_RESULTS:-$ROOT/.build/bench/incremental-bench.md}
[ -x "$BIN" ] || { echo "bench: no snapdump binary at $BIN (make release)" >&2; exit 1; }
read -r -a STORAGES <<<"${STORAGES:-bt xf zf qc}"
BORG_COMPRESSION=${BORG_COMPRESSION:-zstd,1}
has() { [[ " ${STORAGES[*]} " == *" $1 "* ]]; }
W=$(mktemp -d "${SNAPDUMP_BENCH_DIR:-/var/tmp}/snapdump-incr-bench.XXXXXX")
CONF=$W/etc
log() { echo "bench: $*" >&2; }
ZPOOL=sdincr$$
declare -A LABEL=([bt]="btrfs (btrfs send)" [xf]="dir reflink on XFS (FIEMAP)" [zf]="zfspool on zfs-fuse (zfs send -i)"
                  [qc]="dir qcow2 (persistent dirty bitmap)")
declare -A VMID=([bt]=901 [xf]=902 [zf]=903 [qc]=904)
ZFS_OURS=
cleanup() {
  for s in "${STORAGES[@]}"; do "$BIN" vm destroy "${VMID[$s]}" --config-dir "$CONF" >/dev/null 2>&1 || true; done
  for _ in 1 2 3 4 5 6 7 8 9 10; do zpool destroy -f "$ZPOOL" 2>/dev/null && break; zpool list "$ZPOOL" >/dev/null 2>&1 || break; sleep 1; done
  for m in "$W/btrfs" "$W/xfs"; do umount "$m" 2>/dev/null || true; done
  rm -rf "$W"
  [ -z "$ZFS_OURS" ] || stop_our_zfs_fuse || true
}
trap cleanup EXIT
sd() { "$BIN" "$@" --config-dir "$CONF"; }

IMG=$("$HERE/real-disk.sh" image "$SIZE")
mkdir -p "$W/btrfs" "$W/xfs" "$CONF" "$(dirname "$RESULTS")"
if has bt; then
  truncate -s $((SIZE * 3))M "$W/btrfs.img"
  mkfs.btrfs -q "$W/btrfs.img" && mount -o loop "$W/btrfs.img" "$W/btrfs"
  mkdir -p "$W/btrfs/store"
  sd storage add btrfs bt --path "$W/btrfs/store" >/dev/null
fi
if has xf; then
  truncate -s $((SIZE * 3))M "$W/xfs.img"
  mkfs.xfs -q -m reflink=1 "$W/xfs.img" && mount -o loop "$W/xfs.img" "$W/xfs"
  mkdir -p "$W/xfs/store"
  sd storage add dir xf --path "$W/xfs/store" --reflink 1 >/dev/null
fi
if has zf; then
  ZFS_OURS=$(zfs_fuse_for_bench)
  truncate -s $((SIZE * 3))M "$W/zpool.img"
  zpool create -m "$W/zmnt" "$ZPOOL" "$W/zpool.img"
  sd storage add zfspool zf --pool "$ZPOOL" >/dev/null
fi
if has qc; then
  mkdir -p "$W/qdir"
  sd storage add dir qc --path "$W/qdir" --content images --format qcow2 >/dev/null
fi

# The guests: one disk each, filled with the image (zfs-fuse: a plain copy, its files have no holes to keep).
declare -A DISK CHANGED
sd storage add repo r1 --path "$W/repo" >/dev/null
sd repo init r1 >/dev/null
declare -A SEEDOFF=([bt]=0 [xf]=1000 [zf]=2000 [qc]=3000)
for s in "${STORAGES[@]}"; do
  sd vm create "${VMID[$s]}" --memory 256 --scsi0 "$s:${SIZE}M" >/dev/null
  volid=$(sed -n 's/^scsi0: *\([^,]*\).*/\1/p' "$(find "$CONF" -name "${VMID[$s]}.conf" | head -1)")
  DISK[$s]=$(sd volume path "$volid")
  if [ "$s" = qc ]; then
    # The stopped guest's image: the first backup adds its base bitmap (qemu-img bitmap), qemu-io's writes mark it.
    qemu-img convert -f raw -O qcow2 "$IMG" "${DISK[$s]}"
  else
    cp --sparse=$([ "$s" = zf ] && echo never || echo always) "$IMG" "${DISK[$s]}"
  fi
  sync -f "${DISK[$s]}"
done

# written_out S: the change on disk before the timed backup, on every storage alike. syncfs does it
# on btrfs, XFS and the qcow2 file's filesystem, but never reaches zfs-fuse's daemon (FUSE has no
# syncfs): there the 20 MiB stayed dirty and snapdump's own `zfs snapshot` waited for their write-out
# inside its timed run (48–130 ms), while the baselines, run later, read a written-out disk. A
# throwaway snapshot (created and destroyed: two transaction groups) writes it out.
# ZFS_WRITE_OUT=0: not done (the bench before session 13).
written_out() {
  sync -f "${DISK[$1]}"
  if [ "$1" = zf ] && [ "${ZFS_WRITE_OUT:-1}" = 1 ]; then
    zfs snapshot "$ZPOOL/vm-${VMID[zf]}@bench-write-out" && zfs destroy "$ZPOOL/vm-${VMID[zf]}@bench-write-out"
  fi
  cold
}
# Before every timed run, every tool alike: what the runs before it wrote is written out (a
# baseline's repository writes left to writeback otherwise ran into the next timed run).
# COLD=1: nothing cached either, as a nightly run finds the repository and the disk.
cold() { sync; if [ -n "${COLD:-}" ]; then echo 3 >/proc/sys/vm/drop_caches; fi; }

# timed OUT CMD…: runs CMD, stdout to OUT.out, stderr to OUT.err; prints "wall cpu rchar"
# (rchar: bytes the process read, sampled from /proc/<pid>/io every 0.1 s, so a lower bound).
# NO_SAMPLE=1: no sampling, rchar 0 (snapdump says what it read itself; the sampler's pgrep and
# awk every 0.1 s would take CPU from a run that keeps both cores busy for a fifth of a second).
timed() {
  local out=$1; shift
  /usr/bin/time -f '%e %U %S' -o "$out.time" "$@" >"$out.out" 2>"$out.err" &
  local tpid=$! rchar=0 child r
  while [ -z "${NO_SAMPLE:-}" ] && kill -0 "$tpid" 2>/dev/null; do
    child=$(pgrep -P "$tpid" | head -1 || true)
    if [ -n "$child" ]; then r=$(awk '/^rchar/ {print $2}' "/proc/$child/io" 2>/dev/null || true); [ -n "$r" ] && rchar=$r; fi
    sleep 0.1
  done
  wait "$tpid" || { log "failed: $*"; tail -20 "$out.err" >&2; return 1; }
  awk -v r="$rchar" '{printf "%.2f %.2f %.0f\n", $1, $2 + $3, r}' "$out.time"
}
mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1048576}'; }
load() { cut -d' ' -f1 /proc/loadavg; }

# snapdump's numbers from a backup's JSON summary (stdout) and log (stderr).
summary() {  # summary OUT → "read_bytes chunks_read chunks_total stored_bytes patched"
  python3 - "$1" <<'EOF'
import json, re, sys
base = sys.argv[1]
s = json.load(open(base + ".out"))[0]
def get(d, k):  # camelCase or snake_case keys
    return d.get(k, d.get(re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), k), 0))
c = s.get("chunks") or {}
err = open(base + ".err").read()
m = re.search(r"incremental: (\d+) of (\d+) chunks read .*?, (\d+) chunks patched", err)
read_chunks, total, patched = (m.group(1), m.group(2), m.group(3)) if m else (get(c, "read"), "?", 0)
print(get(s, "readBytes"), read_chunks, total, get(c, "storedBytes"), patched)
EOF
}

SIZE_BYTES=$(stat -c %s "$IMG")
out="$W/snapdump.md"; : >"$out"
log "first backups ($SIZE MiB, release binary $BIN)"
declare -A FIRST
for s in "${STORAGES[@]}"; do
  FIRST[$s]=$(NO_SAMPLE=1 timed "$W/first-$s" "$BIN" backup "${VMID[$s]}" --mode stop --storage r1 --output-format json --config-dir "$CONF")
done

baselines=1
[ -n "${SKIP_BASELINES:-}" ] && baselines=
if [ -n "$baselines" ]; then
  for tool in restic borg; do
    command -v "$tool" >/dev/null || { log "installing restic, borgbackup"; apt-get install -y -q restic borgbackup >&2; break; }
  done
  # restic writes temporary packs to $TMPDIR (a small /tmp filled up at 8 GiB).
  export TMPDIR=$W
  export RESTIC_PASSWORD=bench BORG_PASSPHRASE=bench BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
  restic init -q -r "$W/restic" >/dev/null
  borg init -e none "$W/borg"
  # One repository per tool for every disk, as snapdump's: later disks' first backups deduplicate.
  declare -A R1 B1
  for s in "${STORAGES[@]}"; do
    R1[$s]=$(timed "$W/restic-1-$s" restic backup -q -r "$W/restic" "${DISK[$s]}")
    B1[$s]=$(timed "$W/borg-1-$s" borg create -C "$BORG_COMPRESSION" "$W/borg::one-$s" "${DISK[$s]}")
  done
fi
du_b() { du -sb "$1" | cut -f1; }

{
  echo "### incremental-bench $(date -u +%FT%TZ): $SIZE MiB real disk, $PCT % changed ($MODE), $RUNS run(s), release build, load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  for s in "${STORAGES[@]}"; do
    read -r w c _ <<<"${FIRST[$s]}"
    read -r rb _ _ st _ <<<"$(summary "$W/first-$s")"
    echo "first backup, ${LABEL[$s]}: $w s wall, $c s CPU, $(mib "$rb") MiB read, $(mib "$st") MiB stored"
  done
  if [ -n "$baselines" ]; then
    for s in "${STORAGES[@]}"; do
      read -r w c _ <<<"${R1[$s]}"
      echo "first restic backup of the ${LABEL[$s]%% (*} disk: $w s wall, $c s CPU; first borg create: $(cut -d' ' -f1 <<<"${B1[$s]}") s wall, $(cut -d' ' -f2 <<<"${B1[$s]}") s CPU"
    done
  fi
  echo
  echo "| run | tool | changed | second backup: wall | CPU | read from the disk | chunks read (patched) | stored | load |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
} >>"$out"

for run in $(seq 1 "$RUNS"); do
  seed=$((SEED + run - 1))
  for s in "${STORAGES[@]}"; do
    changed=$("$HERE/real-disk.sh" change "${DISK[$s]}" "$PCT" $((seed + SEEDOFF[$s])) "$MODE")
    CHANGED[$s]=$changed
    written_out "$s"
    sleep 1   # one backup per second and guest
    prof=()
    EVENTS=sched:sched_process_exec,sched:sched_process_exit,sched:sched_process_fork
    for c in ioctl fsync fdatasync syncfs rename renameat2 unlink flock pread64 pwrite64 linkat exit_group; do EVENTS+=,syscalls:sys_enter_$c; done
    [ -n "${PROFILE_DIR:-}" ] && mkdir -p "$PROFILE_DIR" && prof=(perf record -q -F 4999 -g -o "$PROFILE_DIR/second-$s-$run.data" --)
    [ -n "${EVENTS_DIR:-}" ] && mkdir -p "$EVENTS_DIR" && prof=(perf record -q -a -e "$EVENTS" -o "$EVENTS_DIR/second-$s-$run.data" --)
    [ -n "${TRACE_DIR:-}" ] && mkdir -p "$TRACE_DIR" && prof=(strace -f -tt -T ${TRACE_SYSCALLS:+--seccomp-bpf -e trace=$TRACE_SYSCALLS} -o "$TRACE_DIR/second-$s-$run.strace")
    t=$(NO_SAMPLE=1 timed "$W/second-$s-$run" "${prof[@]}" "$BIN" backup "${VMID[$s]}" --mode stop --storage r1 --output-format json --config-dir "$CONF")
    read -r w c _ <<<"$t"
    echo "$s snapdump $w" >>"$W/walls"
    read -r rb cr ct st pa <<<"$(summary "$W/second-$s-$run")"
    pct=$(awk -v r="$rb" -v t="$SIZE_BYTES" 'BEGIN {printf "%.2f", 100 * r / t}')
    echo "| $run | snapdump, ${LABEL[$s]} | $(mib "$changed") MiB | **$w s** | $c s | $(mib "$rb") MiB ($pct %) | $cr of $ct ($pa) | $(mib "$st") MiB | $(load) |" >>"$out"
    grep -h "incremental: \|full read" "$W/second-$s-$run.err" | sed 's/^/    /' >&2 || true
  done
  if [ -n "$baselines" ]; then
    # Each guest's disk where it lives, changed above (the same change snapdump read).
    for s in "${STORAGES[@]}"; do
      changed=${CHANGED[$s]}
      before=$(du_b "$W/restic")
      cold
      t=$(timed "$W/restic-2-$s-$run" restic backup -q -r "$W/restic" "${DISK[$s]}")
      read -r w c rc <<<"$t"
      echo "$s restic $w" >>"$W/walls"
      echo "| $run | restic $(restic version | cut -d' ' -f2), ${LABEL[$s]%% (*} disk | $(mib "$changed") MiB | $w s | $c s | ≥ $(mib "$rc") MiB | | $(mib $(( $(du_b "$W/restic") - before ))) MiB | $(load) |" >>"$out"
      before=$(du_b "$W/borg")
      cold
      t=$(timed "$W/borg-2-$s-$run" borg create -C "$BORG_COMPRESSION" "$W/borg::two-$s-$run" "${DISK[$s]}")
      read -r w c rc <<<"$t"
      echo "$s borg $w" >>"$W/walls"
      echo "| $run | borg $(borg --version | cut -d' ' -f2) \`-C $BORG_COMPRESSION\`, ${LABEL[$s]%% (*} disk | $(mib "$changed") MiB | $w s | $c s | ≥ $(mib "$rc") MiB | | $(mib $(( $(du_b "$W/borg") - before ))) MiB | $(load) |" >>"$out"
    done
  fi
done
if [ -n "$baselines" ]; then
  # Medians of the second backups' wall times; ratios against the same storage's baselines
  # and against the fastest baseline median of the run.
  names=$(for s in "${STORAGES[@]}"; do printf '%s=%s\n' "$s" "${LABEL[$s]%% (*}"; done)
  python3 - "$W/walls" "$names" >>"$out" <<'EOF'
import statistics, sys
name = dict(l.split("=", 1) for l in sys.argv[2].splitlines())
walls = {}
for line in open(sys.argv[1]):
    s, tool, w = line.split()
    walls.setdefault(s, {}).setdefault(tool, []).append(float(w))
med = {s: {t: statistics.median(v) for t, v in d.items()} for s, d in walls.items()}
fast = {t: min(m[t] for m in med.values()) for t in ("restic", "borg")}
print()
print("| median second backup | snapdump | borg, same disk | × | restic, same disk | × | × fastest borg (%.2f s) | × fastest restic (%.2f s) |" % (fast["borg"], fast["restic"]))
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for s, m in med.items():
    sd = m["snapdump"]
    print("| %s | %.2f s | %.2f s | %.1f× | %.2f s | %.1f× | %.1f× | %.1f× |" % (name.get(s, s), sd, m["borg"], m["borg"] / sd, m["restic"], m["restic"] / sd, fast["borg"] / sd, fast["restic"] / sd))
EOF
fi
echo >>"$out"
tee -a "$RESULTS" <"$out"
# The backups' logs (JSON lines with times) beside the results, for where the time went.
logs="$(dirname "$RESULTS")/incremental-bench-logs/$(date -u +%Y%m%dT%H%M%SZ)-$SIZE"
mkdir -p "$logs" && cp "$W"/*.err "$W"/*.out "$logs/" 2>/dev/null || true
log "logs in $logs"
