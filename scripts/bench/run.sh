#!/usr/bin/env bash
# `make bench`: every benchmark, release build; reports go to stdout and .build/bench/.
# Starts what the benches need and is not running (the zfs-fuse daemon, as the
# fixtures do) and stops, by PID, only what it started.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=../fixtures/lib.sh
source scripts/fixtures/lib.sh
zfs_started=$(zfs_fuse_for_bench)
[ "$zfs_started" = started ] && trap 'stop_our_zfs_fuse || true' EXIT
swift build -c release --product snapdump 2>&1 | tail -1
swift build -c release --product snapdumpd 2>&1 | tail -1
SKIP_BUILD=1 scripts/bench/storage-bench.sh
SKIP_BUILD=1 scripts/bench/backup-bench.sh
scripts/bench/fleecing-bench.sh
SKIP_BUILD=1 scripts/bench/downtime-bench.sh
scripts/bench/daemon-rss.sh
SKIP_BUILD=1 scripts/bench/restore-bench.sh
SNAPDUMP_BIN="$(swift build -c release --show-bin-path)/snapdump" scripts/bench/incremental-bench.sh 2048 1 11 extents 3
