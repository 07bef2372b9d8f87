#!/usr/bin/env bash
# Turns a staging root (`make install DESTDIR=ROOT PREFIX=/usr`) into
# OUTDIR/snapdump_<version>_<arch>.deb with dpkg-deb.
#
#   scripts/package/build-deb.sh ROOT OUTDIR
#
# The version is the one the staged snapdump reports (`snapdump --version`:
# SnapdumpVersion.current, the one place it is set). Depends are the Debian
# packages of the shared libraries the binaries load (dpkg-shlibdeps) plus
# those of the commands snapdump runs (debian/control). Everything under
# ROOT/etc is a conffile.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

root=${1:?usage: build-deb.sh ROOT OUTDIR}
outdir=${2:?usage: build-deb.sh ROOT OUTDIR}
root=$(cd "$root" && pwd)
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)

version=$("$root/usr/bin/snapdump" --version) || {
    echo "Error: $root/usr/bin/snapdump --version failed: cannot name the package's version" >&2
    exit 1
}
if ! [[ $version =~ ^[0-9][A-Za-z0-9.+~]*$ ]]; then
    echo "Error: snapdump --version printed '$version', which is not a Debian version" >&2
    exit 1
fi
arch=$(dpkg --print-architecture)

# Debian ships man pages compressed.
find "$root/usr/share/man" -name '*.[1-9]' -exec gzip -9n {} +

rm -rf "$root/DEBIAN"
mkdir -m 755 "$root/DEBIAN"

# dpkg-shlibdeps reads debian/control; it needs none of its content here.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/debian"
touch "$work/debian/control"
shlibs=$(cd "$work" && dpkg-shlibdeps -O -e"$root/usr/bin/snapdump" -e"$root/usr/bin/snapdumpd")
shlibs=${shlibs#shlibs:Depends=}

size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@INSTALLED_SIZE@/$size/" \
    -e "s/@SHLIBS_DEPENDS@/$shlibs/" "$here/debian/control" >"$root/DEBIAN/control"
install -m 755 "$here/debian/postinst" "$here/debian/prerm" "$here/debian/postrm" "$root/DEBIAN/"
(cd "$root" && find etc -type f | sort | sed 's|^|/|') >"$root/DEBIAN/conffiles"
(cd "$root" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"

deb="$outdir/snapdump_${version}_${arch}.deb"
rm -f "$outdir"/snapdump_*.deb
# zstd -9: 10 s here for 42 MB; dpkg-deb's default xz takes minutes for 31 MB.
dpkg-deb --root-owner-group -Zzstd -z9 --build "$root" "$deb.tmp" >/dev/null
mv "$deb.tmp" "$deb"
echo "build-deb: $deb ($(du -h "$deb" | cut -f1); Depends: $(sed -n 's/^Depends: //p' "$root/DEBIAN/control"))" >&2
