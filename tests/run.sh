#!/usr/bin/env bash
# tests/run.sh BUILD_DIR MODE [PATTERN] — runs every Criterion suite under BUILD_DIR/tests
# (unit, then emu conformance, then integration), with the environment the suites expect,
# and ends with one line "tests (MODE): N passed, N failed". MODE is plain or asan.
# PATTERN, if given, runs only the suites whose path contains it.
set -u
build=${1:?usage: tests/run.sh BUILD_DIR MODE [PATTERN]}
mode=${2:-plain}
pattern=${3:-}
build=$(cd "$build" && pwd)

export LD_LIBRARY_PATH="$build/emu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export FRAGLESS_BUILD="$build"
export FRAGLESS_SRC="$(cd "$(dirname "$0")/.." && pwd)"
export FRAGLESS_CHECK=1
export FRAGLESS_TEST_PRELOAD="$build/libfragless.so"
if [ "$mode" = asan ]; then
    asan_rt=$(${CC:-gcc} -print-file-name=libasan.so)
    export FRAGLESS_TEST_PRELOAD="$asan_rt $build/libfragless.so"
    export ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:allow_user_segv_handler=1"
    export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
fi
unset FRAGLESS_CONF

passed=0; failed=0; suites=0; bad_suites=()
for bin in "$build"/tests/unit/test_* "$build"/tests/emu/test_* "$build"/tests/integ/test_*; do
    [ -x "$bin" ] || continue
    case "$bin" in *.d|*.o) continue ;; esac
    [ -n "$pattern" ] && [[ "$bin" != *"$pattern"* ]] && continue
    name=${bin#"$build"/tests/}
    suites=$((suites + 1))
    log=$(mktemp)
    FRAGLESS_EMU_NAME="fltest-$$-${name//\//-}" timeout 900 "$bin" --ascii >"$log" 2>&1
    rc=$?
    syn=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep 'Synthesis:' | tail -n 1)
    t=$(sed -n 's/.*Tested: \([0-9]*\).*/\1/p' <<<"$syn")
    p=$(sed -n 's/.*Passing: \([0-9]*\).*/\1/p' <<<"$syn")
    if [ -z "$t" ] || [ -z "$p" ]; then t=1; p=0; fi
    if [ "$rc" -ne 0 ] && [ "$p" -eq "$t" ]; then p=$((t - 1)); [ "$p" -lt 0 ] && p=0; fi
    passed=$((passed + p)); failed=$((failed + t - p))
    if [ "$rc" -ne 0 ] || [ "$p" -ne "$t" ]; then
        bad_suites+=("$name")
        echo "---- $name (exit $rc) ----"
        sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -v '^\[----\] *$' | tail -n 60
    else
        printf '%-40s %s\n' "$name" "$syn"
    fi
    rm -f "$log"
done
[ ${#bad_suites[@]} -gt 0 ] && echo "failing suites: ${bad_suites[*]}"
echo "($suites suites)"
echo "$mode: $passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$suites" -gt 0 ]
