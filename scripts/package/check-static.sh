#!/usr/bin/env bash
# Checks that binaries are self-contained: every shared library they load
# (ldd) is found and belongs to a Debian package — none comes from the Swift
# toolchain or anywhere else that a host without it lacks — and that none
# of the libraries snapdump opens on demand (libnbd, librbd) is linked.
#
#   scripts/package/check-static.sh BINARY…
set -euo pipefail

[ $# -gt 0 ] || { echo "usage: check-static.sh BINARY…" >&2; exit 2; }

# dpkg knows a library by the path its package ships; on a merged-/usr
# system ldd may print the other spelling (/lib/… for /usr/lib/…).
owner() {
    local p=$1 alt
    case $p in
        /usr/lib/*) alt=${p#/usr} ;;
        /lib/* | /lib64/*) alt=/usr$p ;;
        *) alt=$p ;;
    esac
    dpkg-query -S "$p" 2>/dev/null || dpkg-query -S "$alt" 2>/dev/null
}

status=0
for bin in "$@"; do
    [ -x "$bin" ] || { echo "Error: $bin: not an executable" >&2; exit 1; }
    out=$(ldd "$bin" 2>&1) || { echo "Error: $bin: ldd failed: $out" >&2; exit 1; }
    while read -r line; do
        case $line in
            *"not found"*)
                echo "Error: $bin: needs ${line%% *}, which is not installed" >&2
                status=1 ;;
            libnbd.so* | librbd.so* | librados.so*)
                # Opened on first use (the CNBD and CRBD shims): linked, they and what they
                # bring were 3 ms (libnbd) and 10 ms (librbd) of every start.
                echo "Error: $bin: links ${line%% *}, which it is to open only when it is used" >&2
                status=1 ;;&
            *"=> /"*)
                lib=${line#*=> }; lib=${lib%% (*}
                if ! owner "$lib" >/dev/null; then
                    echo "Error: $bin: loads $lib, which no Debian package provides" >&2
                    status=1
                fi ;;
        esac
    done <<<"$out"
done
if [ $status -ne 0 ]; then
    echo "check-static: failed (above); Swift's runtime is to be linked in with --static-swift-stdlib" >&2
    exit 1
fi
echo "check-static: $* load only libraries from Debian packages" >&2
