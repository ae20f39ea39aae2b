#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for a set time, one after the other, and prints a table.
#
#   bench/fuzz.sh [SECONDS_PER_TARGET]        (default 60)
#   TARGETS="detect http_head" bench/fuzz.sh 300
#   SANITIZER=address bench/fuzz.sh 120       (default none: 2–3x more executions per second)
#
# Each target starts from its committed seeds (fuzz/seeds/<target>/) plus the corpus earlier runs
# grew (fuzz/corpus/<target>/, git-ignored). A crash, timeout or out-of-memory input is saved by
# libFuzzer under fuzz/artifacts/<target>/; the script exits 1 if any target found one (or failed
# to build). Logs are kept in bench/out/fuzz/<target>.log.
#
# Not part of scripts/test.sh: every crash found becomes a plain #[test] in the crate it belongs to
# (tests/fuzz_regressions.rs), and those run there.
set -euo pipefail

SECONDS_PER_TARGET="${1:-60}"
SANITIZER="${SANITIZER:-none}"
ALL_TARGETS="config_decode mesh_config detect client_hello http_head accesslog_format"
TARGETS="${TARGETS:-$ALL_TARGETS}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FUZZ="$ROOT/fuzz"
OUT="$ROOT/bench/out/fuzz"
mkdir -p "$OUT"

case "$SECONDS_PER_TARGET" in
'' | *[!0-9]*)
    echo "usage: bench/fuzz.sh [SECONDS_PER_TARGET]" >&2
    exit 2
    ;;
esac

# Longest input per target: large enough for what the code reads (detection peeks up to 16 KiB),
# small enough that libFuzzer spends its time on structure rather than on length.
max_len() {
    case "$1" in
    config_decode) echo 16384 ;;
    mesh_config) echo 4096 ;;
    detect) echo 20000 ;;
    client_hello) echo 4096 ;;
    http_head) echo 8192 ;;
    accesslog_format) echo 2048 ;;
    *) echo 4096 ;;
    esac
}

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz.sh: the nightly toolchain is missing (rustup toolchain install nightly)" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz
fi
# http_head moves itself into a private network namespace so no input can reach a real network.
if [ "$(id -u)" != 0 ]; then
    echo "fuzz.sh: run as root (http_head needs its own network namespace)" >&2
    exit 2
fi

cd "$FUZZ"
echo "== building fuzz targets (sanitizer: $SANITIZER)" >&2
if ! cargo +nightly fuzz build -s "$SANITIZER" >"$OUT/build.log" 2>&1; then
    tail -40 "$OUT/build.log" >&2
    echo "fuzz.sh: build failed (full log: $OUT/build.log)" >&2
    exit 1
fi

failed=0
rows=()
for t in $TARGETS; do
    mkdir -p "corpus/$t" "artifacts/$t"
    before="$(find "artifacts/$t" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) | sort)"
    echo "== $t: ${SECONDS_PER_TARGET}s" >&2
    dict=()
    case "$t" in
    config_decode | mesh_config) dict=(-dict=dicts/config.dict) ;;
    *) [ -f "dicts/$t.dict" ] && dict=(-dict="dicts/$t.dict") ;;
    esac
    rc=0
    # One process (libFuzzer's default): the machine is small and shared. The writable corpus
    # comes first; the seeds are read only.
    cargo +nightly fuzz run -s "$SANITIZER" "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" \
        -rss_limit_mb=2048 \
        -timeout=10 \
        -max_len="$(max_len "$t")" \
        -print_final_stats=1 \
        "${dict[@]}" \
        >"$OUT/$t.log" 2>&1 || rc=$?
    after="$(find "artifacts/$t" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) | sort)"
    new="$(comm -13 <(echo "$before") <(echo "$after") | sed '/^$/d')"
    crashes="$(echo -n "$new" | grep -c . || true)"
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$OUT/$t.log" | tail -1)"
    if [ -z "$execs" ]; then
        execs="$(sed -n 's/^#\([0-9]*\).*/\1/p' "$OUT/$t.log" | tail -1)"
    fi
    status=ok
    if [ "$crashes" -gt 0 ]; then
        status="CRASH"
        failed=1
    elif [ "$rc" -ne 0 ]; then
        status="FAILED (exit $rc)"
        failed=1
    fi
    rows+=("$(printf '%-18s %12s %8s  %s' "$t" "${execs:-?}" "$crashes" "$status")")
    for f in $new; do
        echo "   $t: $(grep -m1 -E 'panicked at|ERROR: libFuzzer|AddressSanitizer|overflowed its stack' "$OUT/$t.log" || echo 'see log') -> fuzz/$f" >&2
    done
done

echo
printf '%-18s %12s %8s  %s\n' target execs crashes status
for r in "${rows[@]}"; do
    echo "$r"
done
echo
echo "logs: bench/out/fuzz/<target>.log; crash inputs: fuzz/artifacts/<target>/"
echo "replay one: (cd fuzz && cargo +nightly fuzz run -s $SANITIZER <target> artifacts/<target>/<file>)"
exit "$failed"
