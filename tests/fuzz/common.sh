# Shared by smoke.sh and long.sh (sourced, not run): toolchain check, builds, one bounded run.
#
# The targets are built with plain `cargo +nightly build` and the flags cargo-fuzz passes
# (https://github.com/rust-fuzz/cargo-fuzz, src/project.rs), so CI needs only the nightly
# toolchain, not cargo-fuzz. `--target <host>` keeps the flags off build scripts and proc macros.
#
# Environment:
#   PROCPY_FUZZ_TOOLCHAIN   toolchain to build with (default: nightly)
#   PROCPY_REQUIRE_FUZZ=1   a missing toolchain is an error instead of a skip
#   PROCPY_FUZZ_ASAN=0      build the VM-free targets without AddressSanitizer (several times
#                           more executions per second; memory errors are then not caught
#                           where they happen)
#   PROCPY_FUZZ_FLAGS       more libFuzzer flags for every run (e.g. -use_value_profile=1)

FUZZ_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOOLCHAIN=${PROCPY_FUZZ_TOOLCHAIN:-nightly}
ASAN=${PROCPY_FUZZ_ASAN:-1}

# The VM-free targets; codec_loads (needs all of RustPython) is built on request.
VM_FREE_TARGETS=(wire_decode frame_body forkserver_door)

# Inputs up to this size; wire_decode goes past 1000 bytes, where the decoder's depth walk starts.
max_len() {
    case $1 in
        wire_decode) echo 8192 ;;
        *) echo 4096 ;;
    esac
}

# Exit 0 with a note (or 1 under PROCPY_REQUIRE_FUZZ=1) when the toolchain is missing.
require_toolchain() {
    if command -v rustup >/dev/null 2>&1 && rustc "+$TOOLCHAIN" --version >/dev/null 2>&1 \
        && cargo "+$TOOLCHAIN" --version >/dev/null 2>&1; then
        HOST=$(rustc "+$TOOLCHAIN" -vV | sed -n 's/^host: //p')
        return 0
    fi
    if [[ "${PROCPY_REQUIRE_FUZZ:-0}" == 1 ]]; then
        echo "error: fuzzing needs the '$TOOLCHAIN' toolchain (rustup toolchain install $TOOLCHAIN), and PROCPY_REQUIRE_FUZZ=1" >&2
        exit 1
    fi
    echo "skip: no '$TOOLCHAIN' toolchain (rustup toolchain install $TOOLCHAIN); set PROCPY_REQUIRE_FUZZ=1 to make this an error"
    exit 0
}

COVERAGE_FLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cllvm-args=-simplifycfg-branch-fold-threshold=0 \
-Cllvm-args=-sanitizer-coverage-stack-depth --cfg fuzzing"

vm_free_dir() {
    if [[ $ASAN == 1 ]]; then echo "$FUZZ_DIR/target/asan"; else echo "$FUZZ_DIR/target/plain"; fi
}

# The VM-free targets, under AddressSanitizer by default (the readers under test use unsafe
# code). Separate target dirs per set of flags, so switching does not rebuild everything.
build_vm_free() {
    local sanitizer=""
    if [[ $ASAN == 1 ]]; then sanitizer="-Zsanitizer=address"; fi
    RUSTFLAGS="$COVERAGE_FLAGS $sanitizer ${RUSTFLAGS:-}" \
        cargo "+$TOOLCHAIN" build --manifest-path "$FUZZ_DIR/Cargo.toml" --locked --release \
        --target "$HOST" --target-dir "$(vm_free_dir)" --bins
}

# codec_loads, without a sanitizer: instrumenting RustPython with ASan would slow the build and
# every run for code that is not procpy's.
build_vm() {
    RUSTFLAGS="$COVERAGE_FLAGS ${RUSTFLAGS:-}" \
        cargo "+$TOOLCHAIN" build --manifest-path "$FUZZ_DIR/Cargo.toml" --locked --release \
        --target "$HOST" --target-dir "$FUZZ_DIR/target/vm" --features vm --bin codec_loads
}

binary() {
    case $1 in
        codec_loads) echo "$FUZZ_DIR/target/vm/$HOST/release/$1" ;;
        *) echo "$(vm_free_dir)/$HOST/release/$1" ;;
    esac
}

count_files() {
    find "$1" -maxdepth 1 -type f 2>/dev/null | wc -l
}

# run_target NAME SECONDS WORK_DIR [extra libFuzzer flags...]
# One libFuzzer process: fuzzes NAME for SECONDS from the committed seeds (corpus/NAME, only
# read) and WORK_DIR, where new inputs go. Crash inputs go to artifacts/NAME/, the log to
# artifacts/NAME.log. Sets RUN_EXECS, RUN_CRASHES, RUN_NEW (inputs added to WORK_DIR),
# RUN_STATUS (libFuzzer's exit status), RUN_SECS (wall time, corpus loading included) and
# RUN_PEAK (the heap figure the target printed at exit).
run_target() {
    local name=$1 secs=$2 work=$3
    shift 3
    local log="$FUZZ_DIR/artifacts/$name.log"
    mkdir -p "$FUZZ_DIR/artifacts/$name" "$work"
    local crashes_before new_before
    crashes_before=$(count_files "$FUZZ_DIR/artifacts/$name")
    new_before=$(count_files "$work")
    local started=$SECONDS
    set +e
    # detect_odr_violation=0 as cargo-fuzz sets it; leak detection stays on.
    ASAN_OPTIONS="detect_odr_violation=0:${ASAN_OPTIONS:-}" "$(binary "$name")" "$work" "$FUZZ_DIR/corpus/$name" \
        -max_total_time="$secs" -max_len="$(max_len "$name")" -timeout=30 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$FUZZ_DIR/artifacts/$name/" ${PROCPY_FUZZ_FLAGS:-} "$@" >"$log" 2>&1
    RUN_STATUS=$?
    set -e
    RUN_SECS=$((SECONDS - started))
    RUN_EXECS=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    RUN_EXECS=${RUN_EXECS:-0}
    RUN_CRASHES=$(($(count_files "$FUZZ_DIR/artifacts/$name") - crashes_before))
    RUN_NEW=$(($(count_files "$work") - new_before))
    # A failure that left no artifact (a crash while loading the corpus, say) still counts.
    if [[ $RUN_STATUS -ne 0 && $RUN_CRASHES -eq 0 ]]; then
        RUN_CRASHES=1
    fi
    RUN_PEAK=$(sed -n 's/^procpy-fuzz: //p' "$log" | tail -n 1)
    if [[ $RUN_STATUS -ne 0 ]]; then
        echo "--- $name failed (exit $RUN_STATUS); the end of $log:"
        tail -n 60 "$log"
        echo "--- reproduce with: $(binary "$name") <input from artifacts/$name/>"
    fi
}

# summary_line NAME EXECS SECONDS CRASHES NEW
summary_line() {
    printf '%-16s %10s execs in %5s s (%6s/s)  crashes: %s  new inputs: %s\n' \
        "$1" "$2" "$3" "$(($2 / ($3 > 0 ? $3 : 1)))" "$4" "$5"
}
