#!/usr/bin/env bash
# `make test`: builds snapdump and its tests, sets up the real fixtures (loop
# btrfs/XFS/ext4, zfs-fuse pool, single-node Ceph, test guest), runs every test with
# SNAPDUMP_INTEGRATION=1 so a missing dependency fails instead of skipping,
# fuzzes the VMA reader for a bounded time (scripts/fuzz-vma.sh), runs the
# package test (scripts/package/test-deb.sh), and tears the fixtures down
# again on every exit path.
set -euo pipefail
cd "$(dirname "$0")/.."

export SNAPDUMP_INTEGRATION=1
export SNAPDUMP_GUEST_DIR="${SNAPDUMP_GUEST_DIR:-$PWD/.build/test-guest}"

scripts/install-deps.sh
swift build --build-tests

cleanup() {
  scripts/fixtures/ceph.sh down || echo "run-tests: ceph fixture teardown failed" >&2
  scripts/fixtures/teardown.sh || echo "run-tests: fixture teardown failed" >&2
}
trap cleanup EXIT
scripts/fixtures/setup.sh
# One Ceph cluster for the whole run (rbd storage tests); ~12 s.
scripts/fixtures/ceph.sh up
scripts/test-guest/build.sh "$SNAPDUMP_GUEST_DIR"

# One test at a time: the integration suites share two cores and the fixtures,
# and timing assertions (agent answers within 3 s) must not measure contention.
status=0
swift test --skip-build --no-parallel "$@" || status=$?

# The VMA reader's libFuzzer target, bounded: 60 s from the committed seeds and
# the golden archives (about 1 min more, plus its first build). A crash, a
# sanitizer report or an input over the memory/time limits fails the run.
scripts/fuzz-vma.sh "${SNAPDUMP_FUZZ_SECONDS:-60}" || status=1

# The package, built from this source (self-contained release build, man
# pages, completions, .deb), installed and run in a fresh debootstrap'd
# Debian 12 root. Not with a test filter: that asks for some tests only.
if [ $# -eq 0 ]; then
    make --no-print-directory package-test || status=1
else
    echo "run-tests: package test not run (test filter given: $*)" >&2
fi
exit $status
