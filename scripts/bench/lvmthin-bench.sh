#!/usr/bin/env bash
# lvmthin snapshot creation time at 1 and 8 GiB of written data, inside the
# storage VM (this host's kernel has no device-mapper; the VM runs under TCG,
# so every LVM command is several times slower than on real hardware).
# Usage: scripts/bench/lvmthin-bench.sh      Environment: RUNS=5 SIZES="1 8"
set -euo pipefail
ROOT=$(readlink -f "$(dirname "$0")/../..")
RUNS=${RUNS:-5}
SIZES=${SIZES:-"1 8"}
max=0; for s in $SIZES; do [ "$s" -gt "$max" ] && max=$s; done
script=$(mktemp /tmp/snapdump-lvmthin-bench.XXXXXX)
trap 'rm -f "$script"' EXIT
cat >"$script" <<GUEST
now_ms() { read -r up _ </proc/uptime; echo \$(( \${up%.*} * 1000 + 1\${up#*.}0 - 1000 )); }
lvcreate -q -L $((max * 2 + 2))G -T sdtest/data >/dev/null
for s in $SIZES; do
  v=vm-100-disk-\$s
  lvcreate -q -V \${s}G -T sdtest/data -n \$v >/dev/null
  t=\$(now_ms); dd if=/dev/zero of=/dev/sdtest/\$v bs=4M oflag=direct 2>/dev/null; echo "BENCH fill \$s GiB \$(( \$(now_ms) - t )) ms"
  for i in \$(seq 1 $RUNS); do
    t=\$(now_ms); lvcreate -q -s -n snap_\${v}_b\$i sdtest/\$v >/dev/null; echo "BENCH snapshot \$s GiB \$(( \$(now_ms) - t )) ms"
    lvremove -q -f sdtest/snap_\${v}_b\$i >/dev/null
  done
  lvs --noheadings -o data_percent sdtest/data | sed 's/^/BENCH pool data% /'
done
GUEST
SNAPDUMP_STORAGE_VM_PV_SIZE=$((max * 2 + 4))G SNAPDUMP_STORAGE_VM_MEM=768 \
  "$ROOT/scripts/fixtures/storage-vm.sh" script "$script" | tr -d '\r' | grep -a '^BENCH'
