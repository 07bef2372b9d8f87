#!/bin/busybox sh
# /init of the snapdump test guest (packed into initramfs.gz by build.sh).
#
# Kernel command-line options (all optional):
#   snapdump.disk=/dev/vda      device the workload writes (default: the first
#                               of /dev/vda, /dev/sda that appears)
#   snapdump.interval_ms=10     pause between records (0 = no pacing)
#   snapdump.start_offset=1048576  byte offset of record 1 (multiple of 4096)
#   snapdump.max_records=0      stop after N records (0 = when the disk is full)
#   snapdump.workload=1         0 = boot, print READY, run no workload
#   snapdump.fsdisk=/dev/vdb    mount this disk (ext2, created if it has no
#                               filesystem) at /mnt/fs, so that the agent's
#                               guest-fsfreeze-freeze has something to freeze
#   snapdump.debug=1            print SNAPDUMP-GUEST STEP lines with uptimes
#
# Console lines meant for the host:
#   SNAPDUMP-GUEST READY disk=... agent=...   (just before the workload starts)
#   WORKLOAD START ... / HB <seq> / WORKLOAD FULL|STOP ...   (workload.c)
#   SNAPDUMP-GUEST POWERDOWN                  (ACPI power button / agent)
#   SNAPDUMP-GUEST ERROR ...

/bin/busybox mkdir -p /proc /sys /dev /tmp /run /var/run /mnt /sbin /usr/bin
/bin/busybox --install -s /bin
export PATH=/sbin:/bin:/usr/sbin:/usr/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || mount -t tmpfs tmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
ln -sf /proc/self/fd /dev/fd 2>/dev/null
ln -sf /proc/mounts /etc/mtab 2>/dev/null

say() { echo "$*" >/dev/console; }

say "SNAPDUMP-GUEST INIT uptime=$(cut -d' ' -f1 /proc/uptime)"

# Options from the kernel command line.
DISK=
INTERVAL_MS=10
START_OFFSET=1048576
MAX_RECORDS=0
WORKLOAD=1
FSDISK=
DEBUG=0
for arg in $(cat /proc/cmdline); do
    case "$arg" in
    snapdump.disk=*) DISK=${arg#*=} ;;
    snapdump.interval_ms=*) INTERVAL_MS=${arg#*=} ;;
    snapdump.start_offset=*) START_OFFSET=${arg#*=} ;;
    snapdump.max_records=*) MAX_RECORDS=${arg#*=} ;;
    snapdump.workload=*) WORKLOAD=${arg#*=} ;;
    snapdump.fsdisk=*) FSDISK=${arg#*=} ;;
    snapdump.debug=*) DEBUG=${arg#*=} ;;
    esac
done

step() { [ "$DEBUG" = 1 ] && say "SNAPDUMP-GUEST STEP $1 uptime=$(cut -d' ' -f1 /proc/uptime)"; return 0; }

# Modules, in dependency order (computed by build.sh).
while read -r mod; do
    [ -n "$mod" ] || continue
    insmod "/lib/modules/$mod.ko" 2>/dev/null ||
        grep -q "^$mod " /proc/modules ||
        say "SNAPDUMP-GUEST ERROR insmod $mod failed"
    step "insmod-$mod"
done </etc/snapdump-modules

# wait_for TEST-ARGS... : poll (20 ms) for up to 10 s.
wait_for() {
    i=0
    while [ $i -lt 500 ]; do
        test "$@" && return 0
        usleep 20000
        i=$((i + 1))
    done
    return 1
}

step modules
# ACPI power button (system_powerdown) -> /etc/acpi/PWRF/00000080.
# acpid reads /dev/input/event* (button + evdev modules).
i=0
while [ $i -lt 50 ] && ! [ -e /dev/input/event0 ]; do usleep 20000; i=$((i + 1)); done
acpid -c /etc/acpi -l /dev/null -p /run/acpid.pid ||
    say "SNAPDUMP-GUEST ERROR acpid failed"

step acpid
# Guest agent, when QEMU has a virtserialport named org.qemu.guest_agent.0.
AGENT=none
has_virtio_serial() {
    for d in /sys/bus/virtio/devices/*; do
        [ "$(cat "$d/device" 2>/dev/null)" = 0x0003 ] && return 0
    done
    return 1
}
find_agent_port() {
    for p in /sys/class/virtio-ports/*; do
        [ "$(cat "$p/name" 2>/dev/null)" = org.qemu.guest_agent.0 ] &&
            [ -c "/dev/${p##*/}" ] && { echo "/dev/${p##*/}"; return 0; }
    done
    return 1
}
if has_virtio_serial; then
    i=0
    while [ $i -lt 250 ] && ! find_agent_port >/dev/null; do
        usleep 20000
        i=$((i + 1))
    done
    if PORT=$(find_agent_port); then
        if qemu-ga -d -m virtio-serial -p "$PORT" -f /run/qemu-ga.pid; then
            AGENT=$PORT
        else
            say "SNAPDUMP-GUEST ERROR qemu-ga failed"
        fi
    fi
fi

step agent
# Optional filesystem disk for fsfreeze.
if [ -n "$FSDISK" ]; then
    if wait_for -b "$FSDISK"; then
        mkdir -p /mnt/fs
        if ! mount -t ext4 "$FSDISK" /mnt/fs 2>/dev/null; then
            mke2fs -q -F "$FSDISK" >/dev/null 2>&1 &&
                mount -t ext4 "$FSDISK" /mnt/fs ||
                say "SNAPDUMP-GUEST ERROR cannot mount $FSDISK"
        fi
        date >/mnt/fs/booted 2>/dev/null && sync
    else
        say "SNAPDUMP-GUEST ERROR fsdisk $FSDISK not found"
    fi
fi

step fsdisk
# The workload's disk.
if [ -z "$DISK" ]; then
    i=0
    while [ $i -lt 500 ]; do
        for d in /dev/vda /dev/sda; do
            [ -b $d ] && { DISK=$d; break 2; }
        done
        usleep 20000
        i=$((i + 1))
    done
elif ! wait_for -b "$DISK"; then
    say "SNAPDUMP-GUEST ERROR disk $DISK not found"
    DISK=
fi

say "SNAPDUMP-GUEST READY disk=${DISK:-none} agent=$AGENT workload=$WORKLOAD uptime=$(cut -d' ' -f1 /proc/uptime)"

if [ "$WORKLOAD" = 1 ] && [ -n "$DISK" ]; then
    /bin/workload "$DISK" --interval-ms "$INTERVAL_MS" \
        --start-offset "$START_OFFSET" --max-records "$MAX_RECORDS" \
        </dev/null >/dev/console 2>&1 &
    WPID=$!
    echo $WPID >/run/workload.pid
    wait $WPID
    say "SNAPDUMP-GUEST WORKLOAD EXITED status=$?"
    rm -f /run/workload.pid
elif [ "$WORKLOAD" = 1 ]; then
    say "SNAPDUMP-GUEST ERROR no disk for the workload"
fi

# PID 1 must never exit.
while :; do
    sleep 3600
done
