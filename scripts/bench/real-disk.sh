#!/usr/bin/env bash
# A benchmark disk full of real data (issues 10, 11, 15): a raw image holding
# an ext4 filesystem filled with copies of real trees (/usr/lib, then /opt,
# /usr/share, /usr/bin) until it is full. Never a mostly-empty or synthetic
# disk: a baseline that reads a hole snapdump skips would flatter us.
#
#   scripts/bench/real-disk.sh image SIZE_MIB      prints the path of a cached image
#   scripts/bench/real-disk.sh change IMAGE PCT SEED [files|extents]
#       files (default): rewrites PCT % of the filesystem's data in place
#       (whole files of 64 KiB–8 MiB, new content, same length, chosen by
#       SEED), the way a guest's daily change looks to the storage: scattered
#       over the disk, so with 4 MiB chunks 1 % of the bytes touches ~10 % of
#       the chunks (measured: 21 MiB of files → 59 of 512 chunks at 2 GiB).
#       extents: rewrites PCT % of the image as 1 MiB extents at SEED-chosen
#       aligned offsets, below the filesystem (for "1 % of the blocks");
#       a .qcow2 IMAGE is written through qemu-io (its dirty bitmaps see it).
#       Prints the bytes rewritten.
#
# Images are cached in $SNAPDUMP_BENCH_IMAGES (default /var/tmp/snapdump-bench-images)
# as ext4-<SIZE_MIB>.raw; a bench copies the image before changing it.
# Needs root (loop mount).
set -euo pipefail
CACHE=${SNAPDUMP_BENCH_IMAGES:-/var/tmp/snapdump-bench-images}
log() { echo "real-disk: $*" >&2; }

mount_image() {  # mount_image IMAGE DIR
  mkdir -p "$2"
  mount -o loop "$1" "$2"
}

build_image() {  # build_image SIZE_MIB
  local size=$1 img="$CACHE/ext4-$1.raw"
  [ -s "$img" ] && { echo "$img"; return; }
  mkdir -p "$CACHE"
  # Globals: the EXIT trap (which also runs when set -e stops the script) reads them.
  tmp="$img.tmp.$$"; mnt="$CACHE/mnt.$$"
  trap 'umount "$mnt" 2>/dev/null || true; rmdir "$mnt" 2>/dev/null || true; rm -f "$tmp"' EXIT
  truncate -s "${size}M" "$tmp"
  mkfs.ext4 -q -F -m 0 -E lazy_itable_init=0,lazy_journal_init=0 "$tmp"
  mount_image "$tmp" "$mnt"
  log "filling a $size MiB ext4 image with copies of /usr/lib, /opt, /usr/share, /usr/bin"
  local n=0 src
  for src in /usr/lib /opt /usr/share /usr/bin /usr/lib /opt; do
    n=$((n + 1))
    # cp stops at ENOSPC: that is the point (a full disk).
    cp -a "$src" "$mnt/copy$n" 2>/dev/null || break
  done
  sync -f "$mnt"
  df -m --output=used,size "$mnt" | tail -1 | awk -v s="$size" '{printf "real-disk: %s of %s MiB used (image %s MiB)\n", $1, $2, s}' >&2
  umount "$mnt"; rmdir "$mnt"
  mv "$tmp" "$img"
  echo "$img"
}

change_extents() {  # change_extents IMAGE PCT SEED
  local img=$1 total mib n off offsets qcow2= tmp cmds=()
  # A qcow2 image (the guest's view: its virtual size) is written through QEMU's
  # block layer (qemu-io), which also marks its persistent dirty bitmaps, as the guest's writes do.
  case "$img" in *.qcow2) qcow2=1 ;; esac
  if [ -n "$qcow2" ]; then
    total=$(qemu-img info --output=json "$img" | python3 -c 'import json, sys; print(json.load(sys.stdin)["virtual-size"])')
  else
    total=$(stat -c %s "$img")
  fi
  mib=$((total >> 20))
  n=$(awk -v m="$mib" -v p="$2" 'BEGIN {printf "%d", (m * p / 100) + 0.5}')
  offsets=$(awk -v m="$mib" -v n="$n" -v s="$3" 'BEGIN {srand(s); while (k < n) {o = int(rand() * m); if (!(o in seen)) {seen[o]; print o; k++}}}')
  [ -n "$qcow2" ] && tmp=$(mktemp -d)
  for off in $offsets; do
    if [ -n "$qcow2" ]; then
      { openssl enc -aes-128-ctr -pass "pass:$3-$off" -nosalt -pbkdf2 </dev/zero 2>/dev/null || true; } | head -c 1048576 >"$tmp/$off"
      cmds+=(-c "write -s $tmp/$off $((off << 20)) 1M")
    else
      { openssl enc -aes-128-ctr -pass "pass:$3-$off" -nosalt -pbkdf2 </dev/zero 2>/dev/null || true; } |
        head -c 1048576 | dd of="$img" bs=1M seek="$off" conv=notrunc iflag=fullblock status=none
    fi
  done
  if [ -n "$qcow2" ]; then
    qemu-io -f qcow2 "${cmds[@]}" "$img" >/dev/null
    rm -rf "$tmp"
  fi
  echo $((n << 20))
}

change_image() {  # change_image IMAGE PCT SEED [files|extents]
  local img=$1 pct=$2 seed=$3 total target done_bytes=0
  mnt="$CACHE/chg.$$"   # global: the EXIT trap reads it
  if [ "${4:-files}" = extents ]; then change_extents "$img" "$pct" "$seed"; return; fi
  mount_image "$img" "$mnt"
  trap 'umount "$mnt" 2>/dev/null || true; rmdir "$mnt" 2>/dev/null || true' EXIT
  total=$(stat -c %s "$img")
  target=$(awk -v t="$total" -v p="$pct" 'BEGIN {printf "%d", t * p / 100}')
  # Files of 64 KiB–8 MiB, in a fixed pseudo-random order.
  while IFS= read -r f; do
    local len; len=$(stat -c %s "$f")
    # New content of the same length, overwritten in place (no truncation, so ext4 keeps the blocks).
    # (openssl dies of SIGPIPE once head has enough: not an error.)
    { openssl enc -aes-128-ctr -pass "pass:$seed${f#"$mnt"}" -nosalt -pbkdf2 </dev/zero 2>/dev/null || true; } |
      head -c "$len" | dd of="$f" conv=notrunc iflag=fullblock bs=1M status=none
    done_bytes=$((done_bytes + len))
    [ "$done_bytes" -ge "$target" ] && break
  done < <(find "$mnt" -type f -size +64k -size -8M | sort | awk -v s="$seed" 'BEGIN {srand(s)} {print rand() "\t" $0}' | sort -n | cut -f2-)
  sync -f "$mnt"
  echo "$done_bytes"
}

case "${1:-}" in
  image) build_image "${2:?SIZE_MIB}" ;;
  change) change_image "${2:?IMAGE}" "${3:?PCT}" "${4:-1}" "${5:-files}" ;;
  *) echo "usage: $0 image SIZE_MIB | change IMAGE PCT [SEED [files|extents]]" >&2; exit 64 ;;
esac
