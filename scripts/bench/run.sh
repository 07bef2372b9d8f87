#!/usr/bin/env bash
# `make bench`: every benchmark, release build; reports go to stdout and .build/bench/.
set -euo pipefail
cd "$(dirname "$0")/../.."
swift build -c release --product snapdump 2>&1 | tail -1
swift build -c release --product snapdumpd 2>&1 | tail -1
SKIP_BUILD=1 scripts/bench/storage-bench.sh
SKIP_BUILD=1 scripts/bench/backup-bench.sh
scripts/bench/fleecing-bench.sh
SKIP_BUILD=1 scripts/bench/downtime-bench.sh
scripts/bench/daemon-rss.sh
SKIP_BUILD=1 scripts/bench/restore-bench.sh
