#!/usr/bin/env bash
# Side-by-side benchmark of sluice against nginx and HAProxy as plain HTTP/1.1 reverse proxies, in
# one run, on the same upstream, on loopback only. See bench/README.md.
#
#   bench/run.sh                 # everything, ~2 minutes after the builds
#   DURATION=5 bench/run.sh      # shorter runs
#   TARGETS="direct nginx" bench/run.sh
#
# Knobs (environment): DURATION (s, per measurement, default 10), RATE (fixed-rate req/s, 1000),
# CONNS (saturation connections, 32), RATE_CONNS (fixed-rate connections, 16), THREADS (worker
# threads/processes per proxy, 1), TARGETS (default "direct nginx haproxy sluice"; also
# "hyper-floor": crates/proxy/examples/bare_proxy.rs, hyper and tokio with nothing on top), PIN (1: pin the
# proxy to CPU 1 and the load generator + upstream to CPU 0, when the machine has ≥2 CPUs),
# SLUICE_PROFILE (cargo profile sluice is built with, default release; bench-fast skips the long
# LTO link), SLUICE_BIN (a sluice binary to measure as is, no build).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
out=$repo/bench/out
mkdir -p "$out"
run_dir=$(mktemp -d "$out/run-XXXXXX")
# shellcheck source=bench/lib.sh
. "$repo/bench/lib.sh"

DURATION=${DURATION:-10}
RATE=${RATE:-1000}
CONNS=${CONNS:-32}
RATE_CONNS=${RATE_CONNS:-16}
THREADS=${THREADS:-1}
TARGETS=${TARGETS:-"direct nginx haproxy sluice"}
PIN=${PIN:-1}
SLUICE_PROFILE=${SLUICE_PROFILE:-release}
SLUICE_BIN=${SLUICE_BIN:-}

UP_PORT=28080      # upstream: nginx serving a 1 KiB body
NGINX_PORT=28081
HAPROXY_PORT=28082
SLUICE_PORT=28083  # sluice's explicit proxy (--proxy-port)
FLOOR_PORT=28088   # hyper-floor: hyper's server + connection-level client, nothing else
HOST=upstream.bench
# Every target gets the same absolute-form request, as a client of a forward proxy sends it.
REQ_TARGET="http://$HOST/"

log() { printf '[bench] %s\n' "$*" >&2; }

# ---- dependencies ---------------------------------------------------------------------------------
need_packages nginx:nginx-light haproxy:haproxy wrk:wrk curl:curl taskset:util-linux
PATH=$PATH:/usr/sbin:/sbin

# ---- builds ---------------------------------------------------------------------------------------
if [[ " $TARGETS " == *" sluice "* ]]; then build_sluice; fi
if [[ " $TARGETS " == *" hyper-floor "* ]]; then
    log "building the hyper floor (crates/proxy/examples/bare_proxy.rs, profile $SLUICE_PROFILE)"
    cargo build --profile "$SLUICE_PROFILE" --example bare_proxy -p sluice-proxy
fi
build_loadgen

# ---- helpers --------------------------------------------------------------------------------------
trap cleanup EXIT
pin_cpus

wait_http() { # URL [HOST]
    for _ in $(seq 1 100); do
        if curl -s -o /dev/null --noproxy '*' --max-time 1 -H "Host: ${2:-$HOST}" "$1"; then return 0; fi
        sleep 0.1
    done
    return 1
}

# ---- upstream -------------------------------------------------------------------------------------
mkdir -p "$run_dir/tmp"
upstream_conf "127.0.0.1:$UP_PORT default_server" > "$run_dir/upstream.conf"
start upstream "${load_cpu[@]}" nginx -c "$run_dir/upstream.conf" -e stderr
wait_http "http://127.0.0.1:$UP_PORT/" || { log "upstream did not start"; cat "$run_dir/upstream.log"; exit 1; }

# ---- proxies --------------------------------------------------------------------------------------
start_nginx() {
    NGINX_WORKERS=$THREADS nginx_proxy_conf "127.0.0.1:$NGINX_PORT" "127.0.0.1:$UP_PORT" > "$run_dir/nginx.conf"
    start nginx "${proxy_cpu[@]}" nginx -c "$run_dir/nginx.conf" -e stderr
    proxy_pid=$started_pid
    proxy_port=$NGINX_PORT
}

start_haproxy() {
    cat > "$run_dir/haproxy.cfg" <<CONF
global
    nbthread $THREADS
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
    http-reuse always
frontend fe
    bind 127.0.0.1:$HAPROXY_PORT
    default_backend be
backend be
    server up 127.0.0.1:$UP_PORT
CONF
    start haproxy "${proxy_cpu[@]}" haproxy -db -f "$run_dir/haproxy.cfg"
    proxy_pid=$started_pid
    proxy_port=$HAPROXY_PORT
}

start_sluice() {
    # The upstream as a ServiceEntry with a static endpoint; access log off, as for nginx/HAProxy.
    sluice_http_config "$run_dir/sluice-config" "$HOST" "$UP_PORT"
    start sluice "${proxy_cpu[@]}" "$SLUICE_BIN" sidecar --concurrency "$THREADS" \
        --config "$run_dir/sluice-config" --proxy-port "$SLUICE_PORT" --outbound-port 28084 \
        --admin-port 28085 --status-port 28086 --stats-port 28087 --log-level warn
    proxy_pid=$started_pid
    proxy_port=$SLUICE_PORT
    wait_ready 28086 || true
}

# The least any hyper-based proxy pays per request: the part of sluice's gap to nginx that is not
# sluice's own code.
start_floor() {
    TOKIO_WORKER_THREADS=$THREADS start hyper-floor "${proxy_cpu[@]}" \
        "$repo/target/$SLUICE_PROFILE/examples/bare_proxy" "127.0.0.1:$FLOOR_PORT" "127.0.0.1:$UP_PORT"
    proxy_pid=$started_pid
    proxy_port=$FLOOR_PORT
}

# ---- measurements ---------------------------------------------------------------------------------
cat > "$run_dir/absolute.lua" <<LUA
wrk.method = "GET"
wrk.path = "$REQ_TARGET"
wrk.headers["Host"] = "$HOST"
LUA

results=()
failed=()
measure() { # NAME
    local name=$1 port pid
    proxy_pid=""
    case $name in
        direct) proxy_port=$UP_PORT ;;
        nginx) start_nginx ;;
        haproxy) start_haproxy ;;
        sluice) start_sluice ;;
        hyper-floor) start_floor ;;
        *) log "unknown target $name"; return 1 ;;
    esac
    port=$proxy_port pid=$proxy_pid
    local check=""
    for _ in $(seq 1 100); do
        check=$(curl -s --noproxy '*' --max-time 2 -o /dev/null -w '%{http_code} %{size_download}' \
            -H "Host: $HOST" --request-target "$REQ_TARGET" "http://127.0.0.1:$port/" || true)
        [ "$check" = "200 1024" ] && break
        sleep 0.1
    done
    if [ "$check" != "200 1024" ]; then
        log "$name: a request through 127.0.0.1:$port gave '$check', not '200 1024'; skipping (log: $run_dir/$name.log)"
        tail -n 20 "$run_dir/$name.log" >&2 || true
        failed+=("$name")
        [ -n "$pid" ] && kill "$pid" 2>/dev/null
        return 0
    fi

    log "$name: saturation, wrk -t1 -c$CONNS -d${DURATION}s"
    # PERF_DIR (bench/profile.sh): sample the proxy's stacks during the saturation run.
    local perf_pid=""
    if [ -n "${PERF_DIR:-}" ] && [ -n "$pid" ]; then
        perf record -q -F "${PERF_FREQ:-999}" --call-graph "${PERF_CALLGRAPH:-dwarf,32768}" \
            -o "$PERF_DIR/$name.perf.data" -p "$pid" -- sleep "$DURATION" \
            > "$run_dir/$name.perf.log" 2>&1 &
        perf_pid=$!
    fi
    # The proxy's CPU use at saturation: near 100% per worker means the proxy is the bottleneck;
    # well below, the load generator or the upstream is.
    local s0=0 s1=0
    [ -n "$pid" ] && s0=$(cpu_ticks "$pid")
    "${load_cpu[@]}" wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$run_dir/absolute.lua" "http://127.0.0.1:$port/" \
        > "$run_dir/$name.wrk.txt" 2>&1
    [ -n "$pid" ] && s1=$(cpu_ticks "$pid")
    local satcpu="-"
    [ -n "$pid" ] && satcpu=$(awk -v d=$((s1 - s0)) -v hz="$clk_tck" -v t="$DURATION" 'BEGIN { printf "%.0f", d / hz / t * 100 }')
    [ -n "$perf_pid" ] && wait "$perf_pid"
    local rps
    rps=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$run_dir/$name.wrk.txt")
    local non2xx
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$run_dir/$name.wrk.txt")

    log "$name: fixed rate $RATE req/s over $RATE_CONNS connections for ${DURATION}s"
    local t0=0 t1=0
    [ -n "$pid" ] && t0=$(cpu_ticks "$pid")
    "${load_cpu[@]}" "$loadgen" --addr "127.0.0.1:$port" --target "$REQ_TARGET" --host "$HOST" \
        --rate "$RATE" --duration "$DURATION" --warmup 0 --connections "$RATE_CONNS" \
        > "$run_dir/$name.rate.txt" 2> "$run_dir/$name.rate.err"
    [ -n "$pid" ] && t1=$(cpu_ticks "$pid")
    local line sent p50 p99 errors
    line=$(grep '^RESULT' "$run_dir/$name.rate.txt")
    sent=$(sed -E 's/.* sent=([0-9]+).*/\1/' <<<"$line")
    errors=$(sed -E 's/.* errors=([0-9]+).*/\1/' <<<"$line")
    p50=$(sed -E 's/.* p50_ms=([0-9.]+).*/\1/' <<<"$line")
    p99=$(sed -E 's/.* p99_ms=([0-9.]+).*/\1/' <<<"$line")
    local cpu="-" rss="-"
    if [ -n "$pid" ]; then
        cpu=$(awk -v d=$((t1 - t0)) -v hz="$clk_tck" -v n="$sent" 'BEGIN { printf "%.1f", d * 1000 / hz / n * 1000 }')
        rss=$(awk -v kb="$(hwm_kb "$pid")" 'BEGIN { printf "%.1f", kb / 1024 }')
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    results+=("$name $rps $satcpu $p50 $p99 $cpu $rss ${errors:-0} ${non2xx:-0}")
}

for t in $TARGETS; do measure "$t"; done

# ---- report ---------------------------------------------------------------------------------------
report=$run_dir/report.txt
{
    report_title "sluice bench"
    echo "upstream: nginx, 1 KiB body on 127.0.0.1:$UP_PORT; proxies with $THREADS worker(s); pinned: $([ ${#proxy_cpu[@]} -gt 0 ] && echo 'proxy CPU 1, load+upstream CPU 0' || echo no)"
    echo "saturation: wrk -t1 -c$CONNS ${DURATION}s; latency + CPU: $RATE req/s fixed rate, $RATE_CONNS connections, ${DURATION}s (latency from the scheduled send time)"
    echo
    printf '%-11s %10s %8s %9s %9s %12s %9s %8s %8s %8s %8s %6s\n' target "req/s" "sat CPU%" "p50 ms" "p99 ms" \
        "CPU ms/1k" "RSS MiB" "rps/ngx" "p99/ngx" "cpu/ngx" "rss/ngx" errors
    ngx=""
    for r in "${results[@]}"; do [ "${r%% *}" = nginx ] && ngx=$r; done
    for r in "${results[@]}"; do
        read -r name rps satcpu p50 p99 cpu rss errors non2xx <<<"$r"
        ratio() { # value nginx-value
            if [ -n "$ngx" ] && [ "$1" != "-" ] && [ "$2" != "-" ]; then
                awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "-" }'
            else printf -- "-"; fi
        }
        read -r _ nrps _ _ np99 ncpu nrss _ _ <<<"${ngx:-x - - - - - - - -}"
        printf '%-11s %10s %8s %9s %9s %12s %9s %8s %8s %8s %8s %6s\n' "$name" "$rps" "$satcpu" "$p50" "$p99" "$cpu" "$rss" \
            "$(ratio "$rps" "$nrps")" "$(ratio "$p99" "$np99")" "$(ratio "$cpu" "$ncpu")" "$(ratio "$rss" "$nrss")" \
            "$((errors + non2xx))"
    done
    if [ "${#failed[@]}" -gt 0 ]; then echo; echo "not measured (did not serve the test request): ${failed[*]}"; fi
    echo
    echo "raw outputs: $run_dir"
} | tee "$report"
cp "$report" "$out/latest.txt"
[ "${#failed[@]}" -eq 0 ]
