#!/usr/bin/env bash
# Instructions per request: a cost figure that does not move with the machine's noise. The
# sidecar runs under valgrind's callgrind; after a warm-up its counters are zeroed, REQUESTS
# requests go through it at a low fixed rate, and the instructions it executed (every thread, user
# space only) are divided by REQUESTS. On a shared VM, req/s and CPU time swing by ±20% between
# runs, more than most changes to the request path; an instruction count repeats to within ~1%,
# so two builds can be compared in one run. It is not a time: cache misses, system calls and the
# kernel's share are not in it (bench/run.sh measures those, against nginx). Loopback only.
#
#   bench/instructions.sh                                     # the release build
#   BINS="/tmp/sluice-before target/release/sluice" bench/instructions.sh   # A/B, same run
#   BINS="target/release/sluice target/release/examples/bare_proxy" bench/instructions.sh
#                                         # beside the hyper floor (cargo build --release --example bare_proxy -p sluice-proxy)
#
# Knobs: BINS (sluice binaries to measure; default: build SLUICE_PROFILE, release), REQUESTS
# (2000), RATE (200 req/s: valgrind slows the proxy ~50×), CONNS (4), ACCESS_LOG (set: the
# access log on, to a file). Needs valgrind (installed if missing) and nginx as the upstream.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
out=$repo/bench/out
mkdir -p "$out"
run_dir=$(mktemp -d "$out/instructions-XXXXXX")
# shellcheck source=bench/lib.sh
. "$repo/bench/lib.sh"

REQUESTS=${REQUESTS:-2000}
RATE=${RATE:-200}
CONNS=${CONNS:-4}
SLUICE_PROFILE=${SLUICE_PROFILE:-release}
ACCESS_LOG=${ACCESS_LOG:-}

UP_PORT=28380
PROXY_PORT=28383
STATUS_PORT=28386
HOST=upstream.bench

log() { printf '[instructions] %s\n' "$*" >&2; }

PATH=$PATH:/usr/sbin:/sbin
need_packages valgrind:valgrind nginx:nginx-light
if [ -z "${BINS:-}" ]; then
    build_sluice
    BINS=$SLUICE_BIN
fi
build_loadgen
trap cleanup EXIT

mkdir -p "$run_dir/tmp"
upstream_conf "127.0.0.1:$UP_PORT default_server" > "$run_dir/upstream.conf"
start upstream nginx -c "$run_dir/upstream.conf" -e stderr

config=$run_dir/config
sluice_http_config "$config" "$HOST" "$UP_PORT" ${ACCESS_LOG:+"$run_dir/access.log"}

results=()
run=0
for bin in $BINS; do
    [ -x "$bin" ] || { log "$bin: not an executable"; exit 1; }
    run=$((run + 1))
    name=$(basename "$bin")
    outfile=$run_dir/callgrind.$run.%p
    if [ "$name" = bare_proxy ]; then
        # The hyper floor (crates/proxy/examples/bare_proxy.rs): what hyper and tokio execute
        # per request with nothing of sluice's on top.
        TOKIO_WORKER_THREADS=1 start "$name" valgrind --tool=callgrind \
            --callgrind-out-file="$outfile" "$bin" "127.0.0.1:$PROXY_PORT" "127.0.0.1:$UP_PORT"
        ready=(curl -s -o /dev/null -f --max-time 2 --noproxy '*' -H "Host: $HOST" \
            "http://127.0.0.1:$PROXY_PORT/")
    else
        start "$name" valgrind --tool=callgrind --callgrind-out-file="$outfile" \
            "$bin" sidecar --concurrency 1 --config "$config" --proxy-port "$PROXY_PORT" \
            --outbound-port 28384 --inbound-port 0 --admin-port 28385 \
            --status-port "$STATUS_PORT" --stats-port 28387 --log-level warn
        ready=(curl -s -o /dev/null -f --max-time 2 --noproxy '*' \
            "http://127.0.0.1:$STATUS_PORT/healthz/ready")
    fi
    pid=$started_pid
    for _ in $(seq 1 600); do
        "${ready[@]}" && break
        sleep 0.1
    done
    # Warm-up: connections to the upstream opened, caches filled, lazily built state built.
    "$loadgen" --addr "127.0.0.1:$PROXY_PORT" --target "http://$HOST/" --host "$HOST" \
        --rate "$RATE" --duration 2 --warmup 0 --connections "$CONNS" > /dev/null 2>&1
    callgrind_control --zero "$pid" > /dev/null 2>&1
    duration=$(awk -v n="$REQUESTS" -v r="$RATE" 'BEGIN { printf "%d", (n + r - 1) / r }')
    "$loadgen" --addr "127.0.0.1:$PROXY_PORT" --target "http://$HOST/" --host "$HOST" \
        --rate "$RATE" --duration "$duration" --warmup 0 --connections "$CONNS" \
        > "$run_dir/load.$name.txt" 2>&1
    callgrind_control --dump=measured "$pid" > /dev/null 2>&1
    stop "$pid"
    line=$(grep '^RESULT' "$run_dir/load.$name.txt")
    sent=$(sed -E 's/.*sent=([0-9]+).*/\1/' <<<"$line")
    errors=$(sed -E 's/.* errors=([0-9]+).*/\1/' <<<"$line")
    # The dump made after zeroing: the part named "measured", summed over the threads' files.
    ir=$(grep -l '^desc: Trigger: .*measured' "$run_dir"/callgrind."$run".* \
        | xargs awk '/^summary:/ { s += $2 } END { print s + 0 }')
    per=$(awk -v i="$ir" -v n="$sent" 'BEGIN { printf "%.0f", (n > 0 ? i / n : 0) }')
    log "$name: $sent requests, $errors errors, $per instructions per request"
    results+=("$name $sent $errors $per")
    [ "$errors" = 0 ] || { log "$name: requests failed"; exit 1; }
done

report=$run_dir/report.txt
{
    report_title "sluice instructions per request"
    echo "sidecar --concurrency 1 under callgrind, GET http://$HOST/ (1 KiB from nginx), $CONNS keep-alive connections at $RATE req/s${ACCESS_LOG:+, access log on}"
    echo
    printf '%-24s %9s %7s %14s %8s\n' binary requests errors "instr/request" "vs first"
    first=
    for r in "${results[@]}"; do
        read -r name sent errors per <<<"$r"
        first=${first:-$per}
        printf '%-24s %9s %7s %14s %8s\n' "$name" "$sent" "$errors" "$per" \
            "$(awk -v a="$per" -v b="$first" 'BEGIN { printf "%.3f", a / b }')"
    done
    echo
    echo "raw outputs: $run_dir"
} | tee "$report"
cp "$report" "$out/instructions-latest.txt"
