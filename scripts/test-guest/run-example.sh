#!/usr/bin/env bash
# End-to-end demo of the test guest under QEMU (TCG):
#   build -> boot with a fresh raw disk -> READY -> heartbeats -> guest-ping
#   -> pause + check the disk -> resume -> system_powerdown -> check again.
#
#   scripts/test-guest/run-example.sh [--disk-size SIZE] [--seconds N]
#                                     [--scsi] [--keep]
#
#   --disk-size SIZE  raw disk size for truncate (default 64M)
#   --seconds N       let the workload run N seconds before pausing (default 3)
#   --scsi            attach the disk as scsi0 on virtio-scsi (/dev/sda)
#                     instead of virtio0 on virtio-blk (/dev/vda)
#   --keep            keep the work directory (image, console log, sockets)
#
# Environment: SNAPDUMP_GUEST_DIR (build output, default scripts/test-guest/out).
# Never uses KVM (on these hosts KVM guests hang).  The QEMU started here is
# killed (by PID) on every exit path.
set -euo pipefail

src=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
outdir=${SNAPDUMP_GUEST_DIR:-$src/out}
disk_size=64M
run_seconds=3
bus=virtio
keep=0
while [ $# -gt 0 ]; do
    case "$1" in
    --disk-size) disk_size=$2; shift ;;
    --seconds) run_seconds=$2; shift ;;
    --scsi) bus=scsi ;;
    --keep) keep=1 ;;
    *) echo "usage: $0 [--disk-size SIZE] [--seconds N] [--scsi] [--keep]" >&2; exit 2 ;;
    esac
    shift
done

"$src/build.sh" "$outdir"

check=$outdir/snapdump-record-check
qmp() { python3 "$src/qmp.py" "$@"; }
work=$(mktemp -d /tmp/snapdump-testguest.XXXXXX)
img=$work/disk.raw
log=$work/console.log
qemu_pid=
nap_pid=
failed=1

cleanup() {
    [ -z "$nap_pid" ] || kill "$nap_pid" 2>/dev/null || true
    if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
        echo "run-example: stopping QEMU (pid $qemu_pid)" >&2
        kill -TERM "$qemu_pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$qemu_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$qemu_pid" 2>/dev/null || true
        wait "$qemu_pid" 2>/dev/null || true
    fi
    if [ "$failed" = 1 ]; then
        echo "run-example: FAILED; console log tail:" >&2
        tail -n 15 "$log" >&2 2>/dev/null || true
        echo "run-example: work directory kept: $work" >&2
    elif [ "$keep" = 1 ]; then
        echo "run-example: work directory kept: $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# sleep that a trapped signal interrupts (bash runs traps only between commands)
nap() { sleep "$1" & nap_pid=$!; wait "$nap_pid" || true; nap_pid=; }
die() { echo "run-example: error: $*" >&2; exit 1; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
# The guest's tty turns "\n" into "\r\n".
# A final line without its newline may be cut short (VM paused mid-line): skip it.
hb_lines() {
    if [ -z "$(tail -c 1 "$log")" ]; then cat "$log"; else sed '$d' "$log"; fi |
        tr -d '\r' | grep -a '^HB [0-9][0-9]*$' || true
}
last_hb() { hb_lines | tail -n 1 | cut -d' ' -f2; }
hb_count() { hb_lines | wc -l; }
field() { sed -n "s/^$1=//p"; } # field KEY < checker output

truncate -s "$disk_size" "$img"

if [ "$bus" = scsi ]; then
    disk_dev=(-device virtio-scsi-pci,id=scsihw0
              -device scsi-hd,bus=scsihw0.0,channel=0,scsi-id=0,lun=0,drive=disk0,id=scsi0)
else
    disk_dev=(-device virtio-blk-pci,drive=disk0,id=virtio0)
fi
qemu_cmd=(qemu-system-x86_64
    -accel tcg -machine pc -m 256 -smp 1 -nodefaults -no-user-config -no-reboot
    -kernel "$outdir/vmlinuz" -initrd "$outdir/initramfs.gz"
    -append "console=ttyS0 quiet panic=-1 snapdump.interval_ms=10"
    -qmp "unix:$work/qmp.sock,server=on,wait=off"
    -chardev "socket,path=$work/qga.sock,server=on,wait=off,id=qga0"
    -device virtio-serial -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0
    -blockdev "node-name=disk0-file,driver=file,filename=$img,cache.direct=on"
    -blockdev node-name=disk0,driver=raw,file=disk0-file
    "${disk_dev[@]}"
    -serial "file:$log" -display none -monitor none)

echo "run-example: ${qemu_cmd[*]}" >&2
t0=$(now_ms)
"${qemu_cmd[@]}" >"$work/qemu.out" 2>&1 &
qemu_pid=$!

# Boot to READY.
until grep -aq '^SNAPDUMP-GUEST READY' "$log" 2>/dev/null; do
    kill -0 "$qemu_pid" 2>/dev/null || { cat "$work/qemu.out" >&2; die "QEMU exited during boot"; }
    [ $(($(now_ms) - t0)) -lt 60000 ] || die "no READY within 60 s"
    sleep 0.02
done
boot_ms=$(($(now_ms) - t0))
echo "run-example: $(grep -a '^SNAPDUMP-GUEST READY' "$log")"
echo "run-example: boot to READY: $boot_ms ms"

# Heartbeats.
until [ "$(hb_count)" -ge 1 ]; do
    [ $(($(now_ms) - t0)) -lt 30000 ] || die "no heartbeat"
    sleep 0.02
done
hb_t0=$(now_ms); hb_n0=$(hb_count)
nap "$run_seconds"
hb_t1=$(now_ms); hb_n1=$(hb_count)
echo "run-example: $((hb_n1 - hb_n0)) heartbeats in $((hb_t1 - hb_t0)) ms"

# Guest agent.
ping=$(qmp --qga --timeout 20 "$work/qga.sock" guest-ping) || die "guest-ping failed"
echo "run-example: guest-ping -> $ping"

# Pause, check the image, resume.
qmp "$work/qmp.sock" stop >/dev/null 2>&1 || die "QMP stop failed"
hb=$(last_hb)
out=$("$check" "$img") || { echo "$out"; die "image inconsistent while paused"; }
lc=$(field last_contiguous <<<"$out")
echo "run-example: paused: last heartbeat HB $hb, checker last_contiguous=$lc $(field status <<<"$out")"
# The console lags the disk slightly (bytes still in the guest's tty buffer).
[ "$lc" -ge "$hb" ] && [ "$lc" -le $((hb + 10)) ] || die "last_contiguous $lc does not match HB $hb"
qmp "$work/qmp.sock" cont >/dev/null 2>&1 || die "QMP cont failed"
nap 0.5

# Power down via ACPI and wait for QEMU to exit.
t_pd=$(now_ms)
qmp "$work/qmp.sock" system_powerdown >/dev/null 2>&1 || die "QMP system_powerdown failed"
while kill -0 "$qemu_pid" 2>/dev/null; do
    [ $(($(now_ms) - t_pd)) -lt 30000 ] || die "guest did not power off within 30 s"
    sleep 0.02
done
wait "$qemu_pid" || die "QEMU exit status $?"
qemu_pid=
echo "run-example: powerdown -> QEMU exited in $(($(now_ms) - t_pd)) ms"
grep -a '^WORKLOAD STOP' "$log" | sed 's/^/run-example: /'

hb=$(last_hb)
out=$("$check" "$img") || { echo "$out"; die "image inconsistent after poweroff"; }
echo "$out" | sed 's/^/  /'
lc=$(field last_contiguous <<<"$out")
[ "$lc" = "$hb" ] || die "last_contiguous $lc != last heartbeat $hb"
echo "run-example: OK: clean poweroff, $hb records, checker consistent (last_contiguous=$lc = last HB)"
failed=0
