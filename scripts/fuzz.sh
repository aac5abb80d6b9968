#!/usr/bin/env bash
# Fuzzes every parser that reads bytes from outside (see fuzz/README.md):
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# builds all targets with `cargo +nightly fuzz build` (installing cargo-fuzz
# if it is missing), then runs each target (all of them by default) for
# SECONDS (default 30), one after the other, starting from the checked-in
# seeds (fuzz/seeds/TARGET) plus what earlier runs found (fuzz/corpus/TARGET,
# not tracked). Prints per target the executions, exec/s and final coverage;
# exits non-zero if any target crashed, timed out (an input taking over 10 s)
# or leaked: the input is in fuzz/artifacts/TARGET/ and the log in
# fuzz/logs/TARGET.log. Reproduce with
# `cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/<file>` from fuzz/.
set -uo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${1:-30}
shift || true
if ! [[ "$seconds" =~ ^[0-9]+$ ]]; then
    echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2
    exit 2
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(client_frames http_head scan compact_roundtrip upstream_frames state_file)
fi

# Inputs larger than libFuzzer's default (4 KiB or the largest seed): the
# client reader needs several messages beyond its 4 KiB read chunk, the
# upstream reader frames beyond its 16 KiB read buffer.
declare -A max_len=([client_frames]=16384 [upstream_frames]=65536)

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "the nightly toolchain is needed: rustup toolchain install nightly" >&2
    exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked || exit 2
fi
cargo +nightly fuzz build || exit 2

mkdir -p logs
failed=()
printf '\n%-18s %12s %9s %7s %8s  %s\n' target runs exec/s cov ft result
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    log="logs/$t.log"
    args=(-max_total_time="$seconds" -timeout=10 -print_final_stats=1)
    if [ -n "${max_len[$t]:-}" ]; then
        args+=(-max_len="${max_len[$t]}")
    fi
    cargo +nightly fuzz run "$t" "corpus/$t" "seeds/$t" -- "${args[@]}" >"$log" 2>&1
    status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
    speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)
    last=$(grep -E '^#[0-9]+' "$log" | grep ' cov: ' | tail -n1)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    if [ "$status" -eq 0 ]; then
        result=ok
    else
        if grep -q 'ERROR: libFuzzer: timeout' "$log"; then
            result=TIMEOUT
        elif grep -q 'LeakSanitizer' "$log"; then
            result=LEAK
        else
            result=CRASH
        fi
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n1)
        result="$result ${artifact:-(see $log)}"
        failed+=("$t")
    fi
    printf '%-18s %12s %9s %7s %8s  %s\n' "$t" "${runs:-?}" "${speed:-?}" "${cov:-?}" "${ft:-?}" "$result"
done

if [ ${#failed[@]} -ne 0 ]; then
    echo "failed: ${failed[*]} (logs in fuzz/logs/)" >&2
    exit 1
fi
