#!/usr/bin/env bash
# Builds snapdump's test guest from Debian packages.
#
#   scripts/test-guest/build.sh [OUTDIR]
#
# OUTDIR defaults to $SNAPDUMP_GUEST_DIR, else scripts/test-guest/out.
# Produces:
#   OUTDIR/vmlinuz                the linux-image-cloud-amd64 kernel
#   OUTDIR/initramfs.gz           busybox, /init, virtio modules, workload,
#                                 qemu-ga with its libraries
#   OUTDIR/snapdump-record-check  the host-side record checker
# Idempotent: an output is rebuilt only when the fingerprint of its inputs
# (sources, this script, kernel, modules, busybox, qemu-ga and its libraries)
# changed or the output is missing.
#
# Needs: linux-image-cloud-amd64, busybox-static, qemu-guest-agent, gcc,
# libc6-dev, cpio, kmod, gzip (scripts/install-deps.sh installs them).
# Environment: SNAPDUMP_GUEST_KVER selects the kernel version (default: the
# newest /boot/vmlinuz-*-cloud-amd64).
set -euo pipefail

src=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
outdir=${1:-${SNAPDUMP_GUEST_DIR:-$src/out}}
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)

log() { echo "test-guest: $*" >&2; }
die() { echo "test-guest: error: $*" >&2; exit 1; }

for tool in gcc cpio gzip modinfo ldd flock sha256sum; do
    command -v "$tool" >/dev/null || die "$tool not found (run scripts/install-deps.sh)"
done

# One build at a time per OUTDIR.
exec 9>"$outdir/.build.lock"
flock 9

stage=
cleanup() {
    rm -f "$outdir"/*.tmp.$$
    [ -z "$stage" ] || rm -rf "$stage"
}
trap cleanup EXIT

# --- inputs -----------------------------------------------------------------
if [ -n "${SNAPDUMP_GUEST_KVER:-}" ]; then
    kver=$SNAPDUMP_GUEST_KVER
else
    kver=$(ls /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sed 's|^/boot/vmlinuz-||' | sort -V | tail -n 1)
fi
[ -n "$kver" ] || die "no /boot/vmlinuz-*-cloud-amd64 (install linux-image-cloud-amd64)"
kernel=/boot/vmlinuz-$kver
[ -r "$kernel" ] || die "$kernel not readable"
[ -d "/lib/modules/$kver" ] || die "/lib/modules/$kver missing"

busybox=$(command -v busybox || true)
[ -n "$busybox" ] || die "busybox not found (install busybox-static)"
if ldd "$busybox" >/dev/null 2>&1; then
    die "$busybox is dynamically linked (install busybox-static)"
fi

qga=/usr/sbin/qemu-ga
[ -x "$qga" ] || die "$qga not found (install qemu-guest-agent)"

# Modules wanted, closed over their dependencies, in load order.
wanted=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
        virtio_blk scsi_common scsi_mod sd_mod virtio_scsi virtio_console
        button evdev)
declare -A mod_done=() mod_file=()
mod_order=()
add_module() {
    local m=$1 f dep
    [ -z "${mod_done[$m]:-}" ] || return 0
    mod_done[$m]=1
    f=$(modinfo -k "$kver" -F filename "$m" 2>/dev/null) || die "module $m not found for $kver"
    case "$f" in ""|"(builtin)") return 0 ;; esac
    for dep in $(modinfo -k "$kver" -F depends "$m" | tr ',' ' '); do
        add_module "$dep"
    done
    mod_file[$m]=$f
    mod_order+=("$m")
}
for m in "${wanted[@]}"; do add_module "$m"; done

# qemu-ga's shared libraries (ldd), including the dynamic loader.
mapfile -t qga_libs < <(ldd "$qga" | awk '
    $2 == "=>" && $3 ~ /^\// { print $3; next }
    $1 ~ /^\// { print $1 }')
[ "${#qga_libs[@]}" -gt 0 ] || die "ldd $qga found no libraries"

fingerprint() { # files... -> one hash over names, sizes, mtimes, contents of small files
    local f
    for f in "$@"; do
        stat -L -c '%n %s %Y' "$f"
        if [ "$(stat -L -c %s "$f")" -lt 1048576 ]; then sha256sum <"$f"; fi
    done | sha256sum | cut -d' ' -f1
}
up_to_date() { # OUTPUT STAMPFILE HASH
    [ -s "$1" ] && [ -f "$2" ] && [ "$(cat "$2")" = "$3" ]
}

# --- vmlinuz ----------------------------------------------------------------
if cmp -s "$kernel" "$outdir/vmlinuz"; then
    log "vmlinuz up to date ($kver)"
else
    log "vmlinuz <- $kernel"
    cp "$kernel" "$outdir/vmlinuz.tmp.$$"
    mv -f "$outdir/vmlinuz.tmp.$$" "$outdir/vmlinuz"
fi

# --- snapdump-record-check --------------------------------------------------
checker_fp=$(fingerprint "$src/checker.c" "$src/record.h" "$src/build.sh" "$(command -v gcc)")
if up_to_date "$outdir/snapdump-record-check" "$outdir/.snapdump-record-check.inputs" "$checker_fp"; then
    log "snapdump-record-check up to date"
else
    log "compiling snapdump-record-check"
    gcc -O2 -Wall -Wextra -Werror -o "$outdir/snapdump-record-check.tmp.$$" "$src/checker.c"
    mv -f "$outdir/snapdump-record-check.tmp.$$" "$outdir/snapdump-record-check"
    echo "$checker_fp" >"$outdir/.snapdump-record-check.inputs"
fi

# --- initramfs.gz -----------------------------------------------------------
initrd_inputs=("$src/build.sh" "$src/init.sh" "$src/guest-poweroff.sh"
    "$src/workload.c" "$src/record.h" "$busybox" "$qga" "$(command -v gcc)"
    "${qga_libs[@]}")
for m in "${mod_order[@]}"; do initrd_inputs+=("${mod_file[$m]}"); done
initrd_fp=$( (echo "$kver ${mod_order[*]}"; fingerprint "${initrd_inputs[@]}") | sha256sum | cut -d' ' -f1)

if up_to_date "$outdir/initramfs.gz" "$outdir/.initramfs.inputs" "$initrd_fp"; then
    log "initramfs.gz up to date"
else
    log "building initramfs.gz (kernel $kver, modules: ${mod_order[*]})"
    stage=$(mktemp -d "$outdir/.stage.XXXXXX")
    mkdir -p "$stage"/{bin,sbin,usr/sbin,usr/bin,etc/acpi/PWRF,lib/modules,lib64,proc,sys,dev,tmp,run,var/run,mnt}

    cp "$busybox" "$stage/bin/busybox"
    install -m 0755 "$src/init.sh" "$stage/init"
    install -m 0755 "$src/guest-poweroff.sh" "$stage/etc/acpi/PWRF/00000080"
    install -m 0755 "$src/guest-poweroff.sh" "$stage/sbin/shutdown"
    gcc -static -O2 -Wall -Wextra -Werror -o "$stage/bin/workload" "$src/workload.c"
    strip "$stage/bin/workload" 2>/dev/null || true

    for m in "${mod_order[@]}"; do
        f=${mod_file[$m]}
        case "$f" in
        *.ko) cp "$f" "$stage/lib/modules/$m.ko" ;;
        *.ko.xz) xz -dc "$f" >"$stage/lib/modules/$m.ko" ;;
        *.ko.zst) zstd -qdc "$f" >"$stage/lib/modules/$m.ko" ;;
        *.ko.gz) gzip -dc "$f" >"$stage/lib/modules/$m.ko" ;;
        *) die "unknown module file type: $f" ;;
        esac
        echo "$m" >>"$stage/etc/snapdump-modules"
    done

    cp -L "$qga" "$stage/usr/sbin/qemu-ga"
    for lib in "${qga_libs[@]}"; do
        mkdir -p "$stage$(dirname "$lib")"
        cp -L "$lib" "$stage$lib"
    done

    # The kernel opens /dev/console for /init before devtmpfs is mounted.
    mknod -m 600 "$stage/dev/console" c 5 1 2>/dev/null || true

    (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) |
        gzip -6 >"$outdir/initramfs.gz.tmp.$$"
    mv -f "$outdir/initramfs.gz.tmp.$$" "$outdir/initramfs.gz"
    echo "$initrd_fp" >"$outdir/.initramfs.inputs"
fi

log "ready in $outdir: vmlinuz initramfs.gz snapdump-record-check"
