#!/usr/bin/env bash
# Installs the Debian packages snapdump's build, tests and demo need.
# Idempotent: skips apt-get entirely when everything is already present.
set -euo pipefail

packages=(
  qemu-system-x86 qemu-utils qemu-guest-agent
  btrfs-progs xfsprogs zfs-fuse
  busybox-static linux-image-cloud-amd64 cpio kmod
  libzstd-dev zlib1g-dev libnbd-dev libnbd-bin nbdkit libssl-dev
  zstd gcc libc6-dev util-linux e2fsprogs hyperfine bc
  python3-aiosmtpd msmtp openssl
  # rbd storage: librbd to link, QEMU's rbd driver, a single-node cluster for the tests.
  librbd-dev qemu-block-extra ceph-common ceph-mon ceph-mgr ceph-osd uuid-runtime
  # lvm, lvmthin: run inside the storage VM (scripts/fixtures/storage-vm.sh), tools copied from the host.
  lvm2 thin-provisioning-tools
  # the package test: dpkg-deb/dpkg-shlibdeps and a fresh Debian root
  dpkg-dev debootstrap
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  echo "install-deps: missing packages ${missing[*]}; run as root to install them" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
