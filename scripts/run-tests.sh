#!/usr/bin/env bash
# `make test`: builds snapdump and its tests, sets up the real fixtures (loop
# btrfs/XFS/ext4, zfs-fuse pool, single-node Ceph, test guest), runs every test with
# SNAPDUMP_INTEGRATION=1 so a missing dependency fails instead of skipping,
# fuzzes the VMA reader for a bounded time (scripts/fuzz-vma.sh), runs the
# package test (scripts/package/test-deb.sh), and tears the fixtures down
# again on every exit path. Ends with what each phase and the costliest
# suites took.
#
# Two lanes, because the machine has two cores and the costliest suite is one
# single-threaded TCG guest (the storage VM, ~15 min):
#   lane 1: every host test, one at a time (`swift test --no-parallel`);
#   lane 2, under `nice`: the storage-VM suite (LVMInVMTests, run from the
#           test bundle: a second `swift test` would wait for lane 1's lock on
#           .build), then the fuzzer, then the package test.
# Lane 2 is niced so that lane 1's timing assertions measure snapdump, not
# the neighbour. With a test filter ("$@") everything runs in lane 1 and the
# fuzzer and package test are left out.
set -euo pipefail
cd "$(dirname "$0")/.."

export SNAPDUMP_INTEGRATION=1
export SNAPDUMP_GUEST_DIR="${SNAPDUMP_GUEST_DIR:-$PWD/.build/test-guest}"

logs=$(mktemp -d /var/tmp/snapdump-run-tests.XXXXXX)
t0=$SECONDS
costs=()
cost() { costs+=("$(printf '%6d s  %s' "$2" "$1")"); } # name seconds
timed() { # name command...: runs it, records its wall time, returns its status
    local name=$1 start=$SECONDS rc=0
    shift
    "$@" || rc=$?
    cost "$name" $((SECONDS - start))
    return $rc
}

timed "install-deps" scripts/install-deps.sh
timed "build (debug, with tests)" swift build --build-tests
bundle="$(swift build --show-bin-path)/snapdumpPackageTests.xctest"

lane2_pid=
cleanup() {
    # Lane 2 (its test bundle, the VM's QEMU, a build) first: the fixtures go next.
    if [ -n "$lane2_pid" ] && kill -0 "$lane2_pid" 2>/dev/null; then
        kill -TERM -- -"$lane2_pid" 2>/dev/null || kill -TERM "$lane2_pid" 2>/dev/null || true
        wait "$lane2_pid" 2>/dev/null || true
    fi
    scripts/fixtures/ceph.sh down || echo "run-tests: ceph fixture teardown failed" >&2
    scripts/fixtures/teardown.sh || echo "run-tests: fixture teardown failed" >&2
    rm -rf "$logs"
}
trap cleanup EXIT
timed "fixtures (loop filesystems, zfs-fuse)" scripts/fixtures/setup.sh
# One Ceph cluster for the whole run (rbd storage tests); ~12 s.
timed "ceph (single node)" scripts/fixtures/ceph.sh up
timed "test guest" scripts/test-guest/build.sh "$SNAPDUMP_GUEST_DIR"

status=0
if [ $# -eq 0 ]; then
    # Lane 2 in its own process group (set -m), so cleanup can stop all of it.
    set -m
    (
        lane() { # name command...: one step of lane 2, its cost and status in files
            local name=$1 start=$SECONDS rc=0
            shift
            "$@" >"$logs/$name.log" 2>&1 || rc=$?
            echo "$((SECONDS - start)) $rc" >"$logs/$name.status"
        }
        renice -n 10 $BASHPID >/dev/null
        lane storage-vm "$bundle" --testing-library swift-testing --no-parallel --filter LVMInVMTests
        # The VMA reader's libFuzzer target, bounded: 60 s from the committed seeds and
        # the golden archives (about 1 min more, plus its first build). A crash, a
        # sanitizer report or an input over the memory/time limits fails the run.
        lane fuzz scripts/fuzz-vma.sh "${SNAPDUMP_FUZZ_SECONDS:-60}"
        # The package, built from this source (self-contained release build, man
        # pages, completions, .deb), installed and run in a fresh debootstrap'd
        # Debian 12 root.
        lane package make --no-print-directory package-test
    ) &
    lane2_pid=$!
    set +m
    # One host test at a time: the integration suites share the fixtures, and
    # timing assertions (agent answers within 3 s) must not measure contention.
    lane1_start=$SECONDS
    swift test --skip-build --no-parallel --skip LVMInVMTests 2>&1 | tee "$logs/host.log" || status=$?
    lane1_end=$SECONDS
    cost "lane 1: host tests" $((lane1_end - lane1_start))
    wait "$lane2_pid" || true
    lane2_pid=
    cost "lane 2 waited for after lane 1" $((SECONDS - lane1_end))
    for step in storage-vm fuzz package; do
        echo "run-tests: ---------------- lane 2: $step ----------------"
        cat "$logs/$step.log" 2>/dev/null || true
        if read -r took rc <"$logs/$step.status" 2>/dev/null; then
            cost "lane 2: $step (niced)" "$took"
            [ "$rc" = 0 ] || { echo "run-tests: lane 2: $step FAILED (exit $rc)" >&2; status=1; }
        else
            echo "run-tests: lane 2: $step did not run" >&2; status=1
        fi
    done
    cat "$logs/storage-vm.log" >>"$logs/host.log" 2>/dev/null || true
else
    swift test --skip-build --no-parallel "$@" 2>&1 | tee "$logs/host.log" || status=$?
    echo "run-tests: fuzzer and package test not run (test filter given: $*)" >&2
fi

echo "run-tests: what each phase took (wall; lanes 1 and 2 overlap):"
printf '  %s\n' "${costs[@]}"
echo "  $(printf '%6d s  %s' $((SECONDS - t0)) "total")"
echo "run-tests: the costliest suites:"
sed -nE 's/.*Suite "?(.*[^"])"? (passed|failed) after ([0-9.]+) seconds.*/\3 \1/p' "$logs/host.log" |
    sort -rn | head -12 | awk '{ printf "  %7.0f s  ", $1; $1 = ""; sub(/^ /, ""); print }'
exit $status
