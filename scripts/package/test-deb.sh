#!/usr/bin/env bash
# The package test (`make package-test`, part of `make test`): installs a
# snapdump .deb with apt into a fresh `debootstrap --variant=minbase bookworm`
# root — no Swift toolchain, apt pulls the Depends (without Recommends, so the
# Depends alone must suffice) from the Debian mirror — and runs snapdump there
# in a chroot: --version, storage add dir, vm create, vm list, a stop-mode
# backup of the never-started VM, vma verify and a restore compared byte by
# byte; also its man pages, completions, unit and conffiles.
#
#   scripts/package/test-deb.sh build/snapdump_<version>_amd64.deb
#
# Cache (SNAPDUMP_PACKAGE_CACHE, default /var/tmp/snapdump-package-cache):
# the debootstrap'd root as a tarball, apt's lists and downloaded .debs.
# Each run unpacks a new root from the tarball; a run without the cache (as
# on CI) debootstraps and downloads everything. Delete the directory to
# start cold. SNAPDUMP_DEBIAN_MIRROR overrides the mirror.
#
# Mounts (/proc, a small /dev, the apt caches) live in a mount namespace of
# this script's own, so they vanish with it even if it is killed; the EXIT
# trap also unmounts them before the root is removed.
set -euo pipefail

deb=${1:?usage: test-deb.sh DEB}
[ -f "$deb" ] || { echo "Error: $deb: no such package" >&2; exit 1; }
deb=$(readlink -f "$deb")

if [ "${SNAPDUMP_PACKAGE_TEST_NS:-}" != 1 ]; then
    [ "$(id -u)" = 0 ] || { echo "Error: test-deb.sh must run as root (debootstrap, chroot, mounts)" >&2; exit 1; }
    SNAPDUMP_PACKAGE_TEST_NS=1 exec unshare --mount --propagation private "$0" "$@"
fi

cache=${SNAPDUMP_PACKAGE_CACHE:-/var/tmp/snapdump-package-cache}
mirror=${SNAPDUMP_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
tarball=$cache/$suite-minbase.tar
mkdir -p "$cache/apt-archives/partial" "$cache/apt-lists/partial"
# One run at a time per cache: apt locks its (shared) cache directories.
exec 9>"$cache/lock"
flock 9

step_start=$SECONDS
step() { echo "package-test: $* ($((SECONDS - step_start)) s so far)" >&2; }
fail() { echo "Error: package test: $*" >&2; exit 1; }

root=
unmount_all() {
    [ -n "$root" ] || return 0
    # Deepest first; a lazy unmount if something still holds one.
    local m
    for m in $(mounts_under "$root" | sort -r); do
        umount "$m" 2>/dev/null || umount -l "$m"
    done
}
mounts_under() { findmnt -rn -o TARGET | awk -v dir="$1/" 'index($0, dir) == 1'; }
cleanup() {
    local rc=$?
    [ -n "$root" ] || return 0
    # Processes the test started inside the root (none should be left: the
    # VM never starts) are ours: end them by PID before unmounting.
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/root" 2>/dev/null)" = "$root" ] || continue
        echo "package-test: killing leftover process ${p#/proc/} ($(tr '\0' ' ' <"$p/cmdline"))" >&2
        kill -9 "${p#/proc/}" 2>/dev/null || true
        rc=1
    done
    unmount_all
    if [ -n "$(mounts_under "$root")" ]; then
        echo "Error: package test: mounts left under $root; not removing it" >&2
        exit 1
    fi
    rm -rf --one-file-system "$root"
    exit $rc
}
trap cleanup EXIT

# 1. A pristine minbase root, debootstrapped once and then unpacked from the cache.
if [ ! -f "$tarball" ]; then
    step "debootstrap --variant=minbase $suite from $mirror (cold: no $tarball)"
    fresh=$(mktemp -d /var/tmp/snapdump-debootstrap.XXXXXX)
    root=$fresh
    debootstrap --variant=minbase "$suite" "$fresh" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
        { tail -20 "$cache/debootstrap.log" >&2; fail "debootstrap failed (log: $cache/debootstrap.log)"; }
    unmount_all
    tar -C "$fresh" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf --one-file-system "$fresh"
    root=
fi
root=$(mktemp -d /var/tmp/snapdump-package-test.XXXXXX)
tar -C "$root" -xf "$tarball"
[ ! -e "$root/opt/swift" ] && ! chroot "$root" sh -c 'command -v swift' >/dev/null ||
    fail "the root has a Swift toolchain"
step "fresh $suite minbase root in $root"

mount -t proc proc "$root/proc"
# A /dev of its own with the few nodes apt and snapdump use, not the host's.
mount -t tmpfs -o mode=755,size=1m devtmp "$root/dev"
for n in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
    IFS=: read -r name major minor <<<"$n"
    mknod -m 666 "$root/dev/$name" c "$major" "$minor"
done
mount --bind "$cache/apt-archives" "$root/var/cache/apt/archives"
mount --bind "$cache/apt-lists" "$root/var/lib/apt/lists"
cp /etc/resolv.conf "$root/etc/resolv.conf"
# No daemon starts inside the root; apt runs as root (the cache dirs are the host's).
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
echo 'APT::Sandbox::User "root";' >"$root/etc/apt/apt.conf.d/99snapdump-test"
cp "$deb" "$root/tmp/"

in_root() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"; }

# 2. apt installs the package and its Depends from the mirror (man-db to read the pages).
in_root apt-get update -qq >/dev/null || fail "apt-get update in the root failed"
step "apt-get update"
in_root apt-get install -y -qq --no-install-recommends "/tmp/${deb##*/}" man-db >"$root/tmp/apt.log" 2>&1 ||
    { tail -30 "$root/tmp/apt.log" >&2; fail "apt-get install ./${deb##*/} failed"; }
step "apt-get install ./${deb##*/} ($(grep -c '^Unpacking ' "$root/tmp/apt.log") packages unpacked)"

# 3. What the package installed.
expect_eq() { [ "$2" = "$3" ] || fail "$1: expected '$3', got '$2'"; }
expect_in() { grep -qF -- "$3" <<<"$2" || { printf '%s\n' "$2" | head -40 >&2; fail "$1: no '$3' in the output above"; }; }

pkgversion=$(in_root dpkg-query -W -f '${Version}' snapdump)
version=$(in_root snapdump --version) || fail "snapdump --version exited $?"
expect_eq "snapdump --version" "$version" "$pkgversion"
for bin in snapdump snapdumpd; do
    libs=$(in_root ldd "/usr/bin/$bin")
    ! grep -q "not found" <<<"$libs" || { echo "$libs" >&2; fail "/usr/bin/$bin misses libraries"; }
    ! grep -qi swift <<<"$libs" || { echo "$libs" >&2; fail "/usr/bin/$bin loads Swift libraries"; }
done
expect_eq "conffiles" "$(in_root dpkg-query -W -f '${Conffiles}' snapdump | awk '{print $1}' | sort | tr '\n' ' ')" \
    "/etc/snapdump/storage.cfg /etc/snapdump/vzdump.conf "
expect_in "snapdumpd.service" "$(cat "$root/lib/systemd/system/snapdumpd.service")" "ExecStart=/usr/bin/snapdumpd"
expect_in "man -w snapdump-backup" "$(in_root man -w snapdump-backup)" "/usr/share/man/man1/snapdump-backup.1.gz"
page=$(in_root env MANWIDTH=100 man snapdump-backup 2>/dev/null)
expect_in "man snapdump-backup" "$page" "--mode"
expect_in "man snapdump-backup" "$page" "snapdump-backup-list(1)"
expect_in "man snapdump-vm-create" "$(in_root man snapdump-vm-create 2>/dev/null)" "--scsi0"
expect_in "bash completion" "$(in_root bash -c '. /usr/share/bash-completion/completions/snapdump && complete -p snapdump')" "snapdump"
expect_in "zsh completion" "$(cat "$root/usr/share/zsh/vendor-completions/_snapdump")" "#compdef snapdump"
expect_in "fish completion" "$(cat "$root/usr/share/fish/vendor_completions.d/snapdump.fish")" "complete -c 'snapdump'"
step "version $version, libraries, conffiles, unit, man pages, completions"

# 4. snapdump at work: a storage, a VM that never starts, a stop-mode backup.
mkdir -p "$root/srv/backup"
in_root snapdump storage add dir backups --path /srv/backup --content backup
expect_in "storage list" "$(in_root snapdump storage list)" "backups"
expect_in "storage list" "$(in_root snapdump storage list)" "local"
in_root snapdump vm create 100 --name pkgtest --memory 128 --scsi0 local:16M >/dev/null
disk=$(in_root snapdump volume path local:100/vm-100-disk-0.raw)
# Data at a known place, to find again after the restore.
in_root sh -c "printf 'snapdump package test' | dd of=$disk bs=1 seek=5242880 conv=notrunc status=none"
list=$(in_root snapdump vm list)
expect_in "vm list" "$list" "pkgtest"
expect_in "vm list" "$list" "stopped"

in_root snapdump backup 100 --mode stop --storage backups --compress zstd >"$root/tmp/backup.out" 2>&1 ||
    { cat "$root/tmp/backup.out" >&2; fail "snapdump backup 100 --mode stop failed"; }
out=$(cat "$root/tmp/backup.out")
expect_in "backup" "$out" "INFO: status = stopped"
expect_in "backup" "$out" "INFO: backup mode: stop"
! grep -q "stopping virtual guest\|resuming VM" <<<"$out" || { echo "$out" >&2; fail "the backup stopped or started the stopped VM"; }
expect_eq "vm status after the backup" "$(in_root snapdump vm status 100 | head -1)" "status: stopped"
archives=("$root"/srv/backup/dump/vzdump-qemu-100-*.vma.zst)
[ ${#archives[@]} = 1 ] && [ -f "${archives[0]}" ] || fail "expected one archive in /srv/backup/dump, found: $(ls "$root/srv/backup/dump")"
archive=/srv/backup/dump/${archives[0]##*/}
in_root snapdump vma verify "$archive" >"$root/tmp/verify.out" 2>&1 ||
    { cat "$root/tmp/verify.out" >&2; fail "vma verify $archive failed"; }
in_root snapdump restore "$archive" 101 --storage local >/dev/null 2>&1 || fail "restore of $archive to VM 101 failed"
restored=$(in_root snapdump volume path local:101/vm-101-disk-0.raw)
cmp "$root$disk" "$root$restored" || fail "the restored disk differs from the backed-up one"
step "storage add, vm create, vm list, stop-mode backup ($(du -h "${archives[0]}" | cut -f1)), verify, restore"

# 5. The sample vzdump.conf, every default uncommented, is one snapdump
#    accepts (the hook script, which must exist, and dumpdir, which excludes
#    storage, left out).
cp -a "$root/etc/snapdump" "$root/tmp/sample-config"
sed -e 's/^#\([a-z-]*: \)/\1/' -e '/^script:/d' -e '/^dumpdir:/d' "$root/etc/snapdump/vzdump.conf" \
    >"$root/tmp/sample-config/vzdump.conf"
grep -q '^mode: ' "$root/tmp/sample-config/vzdump.conf" || fail "the sample vzdump.conf has no '#mode: ' line to uncomment"
in_root snapdump backup 100 --config-dir /tmp/sample-config --mode stop >"$root/tmp/sample.out" 2>&1 ||
    { cat "$root/tmp/sample.out" >&2; fail "a backup with the sample vzdump.conf uncommented failed"; }
! grep -q "WARN" "$root/tmp/sample.out" || { cat "$root/tmp/sample.out" >&2; fail "the sample vzdump.conf gives warnings"; }
step "the sample vzdump.conf, uncommented"

echo "package-test: OK — ${deb##*/} installs and runs in a fresh Debian $suite root ($((SECONDS - step_start)) s)" >&2
