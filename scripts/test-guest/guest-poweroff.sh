#!/bin/sh
# Installed in the test guest as /etc/acpi/PWRF/00000080 (run by busybox
# acpid when QEMU sends system_powerdown) and as /sbin/shutdown (run by
# qemu-ga for guest-shutdown: "shutdown -h -P +0 ..." or "-r" for reboot).
# Stops the workload (it finishes the record in flight), syncs, powers off.
exec >/dev/console 2>&1
PATH=/sbin:/bin:/usr/sbin:/usr/bin

action=poweroff
for a in "$@"; do
    case "$a" in
    -r) action=reboot ;;
    -H) action=halt ;;
    esac
done
echo "SNAPDUMP-GUEST POWERDOWN action=$action"

pid=$(cat /run/workload.pid 2>/dev/null)
if [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; then
    i=0
    while [ $i -lt 150 ] && [ -d "/proc/$pid" ] &&
        ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null; do
        usleep 20000
        i=$((i + 1))
    done
fi
sync
"$action" -f
