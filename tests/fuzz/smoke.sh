#!/usr/bin/env bash
# CI smoke run of the fuzz targets: build them, then fuzz each for a bounded time from the
# committed seeds (about a minute in all). Exits non-zero on any crash. New inputs go to a
# temporary directory, so the checkout is left as it was (crash inputs: tests/fuzz/artifacts/).
#
#   tests/fuzz/smoke.sh                      # wire_decode, frame_body, forkserver_door, 20 s each
#   PROCPY_FUZZ_SECONDS=40 tests/fuzz/smoke.sh
#   PROCPY_FUZZ_VM=1 tests/fuzz/smoke.sh     # also codec_loads (builds all of RustPython)
#
# Without the nightly toolchain it prints a note and exits 0, unless PROCPY_REQUIRE_FUZZ=1.
# More settings: common.sh.
set -euo pipefail
source "$(dirname "$0")/common.sh"
require_toolchain

secs=${PROCPY_FUZZ_SECONDS:-20}
targets=("${VM_FREE_TARGETS[@]}")

start=$SECONDS
echo "== building ${targets[*]} ($TOOLCHAIN, ASan: $ASAN)"
build_vm_free
if [[ "${PROCPY_FUZZ_VM:-0}" == 1 ]]; then
    echo "== building codec_loads ($TOOLCHAIN, all of RustPython)"
    build_vm
    targets+=(codec_loads)
fi
echo "== built in $((SECONDS - start)) s"

work=$(mktemp -d "${TMPDIR:-/tmp}/procpy-fuzz-smoke.XXXXXX")
trap 'rm -rf "$work"' EXIT
summary=""
failed=0
for t in "${targets[@]}"; do
    echo "== $t: ${secs} s from $(count_files "$FUZZ_DIR/corpus/$t") seeds"
    run_target "$t" "$secs" "$work/$t"
    line=$(summary_line "$t" "$RUN_EXECS" "$RUN_SECS" "$RUN_CRASHES" "$RUN_NEW")
    echo "$line"
    if [[ -n $RUN_PEAK ]]; then echo "   $RUN_PEAK"; fi
    summary+="$line"$'\n'
    if [[ $RUN_STATUS -ne 0 ]]; then failed=1; fi
done
echo "== summary ($((SECONDS - start)) s in all, build included)"
printf '%s' "$summary"
exit $failed
