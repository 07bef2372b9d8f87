#!/usr/bin/env bash
# Coverage-guided fuzzing of the VMA reader (libFuzzer + AddressSanitizer).
#
#   scripts/fuzz-vma.sh [SECONDS]      (default 60)
#
# Builds Fuzz/VMAReaderFuzz — its own package, so the normal build never
# compiles it — in the scratch path .build-fuzz, then fuzzes for SECONDS from
# the committed seeds (Fuzz/VMAReaderFuzz/seeds) and the golden archives.
# New inputs go to .build-fuzz/corpus (kept between runs, never committed);
# a crash, sanitizer report, leak, timeout or out-of-memory input is written
# to .build-fuzz/findings/ and makes the script exit non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
scratch="$PWD/.build-fuzz"
mkdir -p "$scratch"
# The linker warns about every ASan helper symbol: keep the log, show it only on failure.
if ! swift build --package-path Fuzz/VMAReaderFuzz --scratch-path "$scratch" \
        -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library >"$scratch/build.log" 2>&1; then
    grep -v "Cannot export local symbol" "$scratch/build.log" >&2
    echo "fuzz-vma: build failed" >&2
    exit 1
fi
binary="$(swift build --package-path Fuzz/VMAReaderFuzz --scratch-path "$scratch" --show-bin-path)/VMAReaderFuzz"

mkdir -p "$scratch/corpus" "$scratch/findings"
# One process, bounded memory (a claimed size must not cost memory) and time per input.
"$binary" "$scratch/corpus" Fuzz/VMAReaderFuzz/seeds Tests/ArchiveTests/Golden \
    -max_total_time="$seconds" -rss_limit_mb=1024 -malloc_limit_mb=512 -timeout=20 \
    -max_len=131072 -print_final_stats=1 -artifact_prefix="$scratch/findings/"
