#!/usr/bin/env bash
# A long fuzzing run, target after target, growing tests/fuzz/work/<target>/ (git-ignored; the
# committed seeds in corpus/<target>/ are only read). Prints executions, crashes and corpus
# growth per target, and appends the summary to tests/fuzz/work/runs.log. Stops a target at its
# first crash (the input is in tests/fuzz/artifacts/<target>/).
#
#   tests/fuzz/long.sh [SECONDS_PER_TARGET [TARGET...]]     # default: 1200 s, all four targets
#
# Each target runs in segments of at most PROCPY_FUZZ_SEGMENT seconds (default 300), each a new
# process: under AddressSanitizer the resident memory of wire_decode grows by 1-2 MB/s (ASan's
# allocator, not the target: without ASan it stays flat; see README.md) and would reach
# libFuzzer's 2 GB limit within the half hour.
#
# To fold what a run found into the committed seeds (minimized), for example:
#   target/asan/<host>/release/wire_decode -merge=1 corpus/wire_decode work/wire_decode
set -euo pipefail
source "$(dirname "$0")/common.sh"
require_toolchain

secs=${1:-1200}
shift || true
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=("${VM_FREE_TARGETS[@]}" codec_loads)
fi
segment=${PROCPY_FUZZ_SEGMENT:-300}

start=$SECONDS
build_vm_free
for t in "${targets[@]}"; do
    if [[ $t == codec_loads ]]; then build_vm; fi
done
echo "== built in $((SECONDS - start)) s"

summary=""
failed=0
for t in "${targets[@]}"; do
    work="$FUZZ_DIR/work/$t"
    echo "== $t: ${secs} s from $(count_files "$FUZZ_DIR/corpus/$t") seeds and $(count_files "$work") inputs in work/$t"
    execs=0 took=0 crashes=0 new=0 left=$secs
    while ((left > 0)); do
        run_target "$t" "$((left < segment ? left : segment))" "$work"
        execs=$((execs + RUN_EXECS)) took=$((took + RUN_SECS)) new=$((new + RUN_NEW))
        crashes=$((crashes + RUN_CRASHES)) left=$((left - segment))
        echo "   segment: $RUN_EXECS execs in $RUN_SECS s, exit $RUN_STATUS${RUN_PEAK:+; $RUN_PEAK}"
        if [[ $RUN_STATUS -ne 0 ]]; then failed=1; break; fi
    done
    line=$(summary_line "$t" "$execs" "$took" "$crashes" "$new")
    echo "$line"
    summary+="$line (work/$t: $(count_files "$work") inputs)"$'\n'
done
{
    echo "== $(date -u '+%Y-%m-%d %H:%M:%S') UTC, $(rustc "+$TOOLCHAIN" --version), ASan: $ASAN, ${secs} s per target"
    printf '%s' "$summary"
} | tee -a "$FUZZ_DIR/work/runs.log"
exit $failed
