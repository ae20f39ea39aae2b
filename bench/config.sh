#!/usr/bin/env bash
# What config costs a sidecar: compile time and memory with thousands of resources, and reloads
# under load. Loopback only. See bench/README.md.
#
#   bench/config.sh                       # sizes 1000 and 5000 (ServiceEntries + VirtualServices)
#   SIZES="500 1000" bench/config.sh
#
# For each size N the sidecar loads N ServiceEntries and N VirtualServices (2N resources) and
# reports: time from start to ready, the compile time of the first config and the median of
# RELOADS later ones (`compile_ms` of the "config applied" log line), and RSS once ready (peak)
# and ~12 s later (settled: jemalloc returns freed pages as they age).
# Then, with the smallest size loaded, RATE req/s (5000) go through the sidecar for DURATION
# seconds (10) while a VirtualService of the route in use is rewritten every second; every
# request must succeed.
#
# The live heap behind those RSS figures, by stage (decoded resources, snapshot, cluster
# runtimes), comes from crates/proxy/examples/config_memory.rs.
#
# Knobs: SIZES, RELOADS (5), RATE, DURATION, SLUICE_PROFILE (release; bench-fast skips the long
# LTO link), SLUICE_BIN (a sluice binary to measure as is).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
out=$repo/bench/out
mkdir -p "$out"
run_dir=$(mktemp -d "$out/config-XXXXXX")
# shellcheck source=bench/lib.sh
. "$repo/bench/lib.sh"

SIZES=${SIZES:-"1000 5000"}
RELOADS=${RELOADS:-5}
RATE=${RATE:-5000}
DURATION=${DURATION:-10}
SLUICE_PROFILE=${SLUICE_PROFILE:-release}
SLUICE_BIN=${SLUICE_BIN:-}

UP_PORT=28280
PROXY_PORT=28283
HOST=upstream.bench

log() { printf '[config-bench] %s\n' "$*" >&2; }

command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || {
    log "nginx is needed as the upstream: run bench/run.sh once (it installs it) or apt-get install nginx-light"
    exit 1
}
PATH=$PATH:/usr/sbin:/sbin

build_sluice
log "building the config memory breakdown (crates/proxy/examples/config_memory.rs)"
cargo build --profile "$SLUICE_PROFILE" --example config_memory -p sluice-proxy
config_memory=$repo/target/$SLUICE_PROFILE/examples/config_memory
build_loadgen

trap cleanup EXIT

# ---- upstream -------------------------------------------------------------------------------------
mkdir -p "$run_dir/tmp"
upstream_conf "127.0.0.1:$UP_PORT default_server" > "$run_dir/upstream.conf"
start upstream nginx -c "$run_dir/upstream.conf" -e stderr

# ---- config ---------------------------------------------------------------------------------------
# N ServiceEntries (svc-i.bench.example, DNS-free STATIC endpoints) with a VirtualService each
# (a timeout and a retry policy), plus the bench upstream and the mesh config.
generate() { # DIR N
    local dir=$1 n=$2
    mkdir -p "$dir"
    awk -v n="$n" 'BEGIN {
        for (i = 0; i < n; i++) {
            printf "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: svc-%d, namespace: default}\n", i
            printf "spec:\n  hosts: [svc-%d.bench.example]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n", i
            printf "  resolution: STATIC\n  location: MESH_EXTERNAL\n  endpoints: [{address: 127.0.%d.%d}]\n---\n", int(i / 250) % 250, i % 250 + 1
            printf "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: svc-%d, namespace: default}\n", i
            printf "spec:\n  hosts: [svc-%d.bench.example]\n  http:\n  - match: [{uri: {prefix: /v%d}}]\n", i, i
            printf "    route: [{destination: {host: svc-%d.bench.example}}]\n    timeout: 5s\n", i
            printf "    retries: {attempts: 2, perTryTimeout: 2s}\n---\n"
        }
    }' > "$dir/generated.yaml"
    sluice_http_config "$dir" "$HOST" "$UP_PORT"
    write_route "$dir" 5s
}

write_route() { # DIR TIMEOUT: the VirtualService of the route the load uses
    cat > "$1/route.yaml.tmp" <<CONF
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: upstream, namespace: default}
spec:
  hosts: [$HOST]
  http:
  - route: [{destination: {host: $HOST}}]
    timeout: $2
CONF
    # Renamed into place, as kubectl/ConfigMap updates do: the proxy never reads half a file.
    mv "$1/route.yaml.tmp" "$1/route.yaml"
}

start_sidecar() { # DIR NAME → $sidecar_pid
    local started=$EPOCHREALTIME
    "$SLUICE_BIN" sidecar --concurrency 1 --config "$1" --proxy-port "$PROXY_PORT" \
        --outbound-port 28284 --inbound-port 0 --admin-port 28285 --status-port 28286 \
        --stats-port 28287 --log-level info > "$run_dir/$2.log" 2>&1 &
    sidecar_pid=$!
    pids+=("$sidecar_pid")
    for _ in $(seq 1 600); do
        curl -s -o /dev/null --noproxy '*' --max-time 1 http://127.0.0.1:28286/healthz/ready && break
        sleep 0.05
    done
    ready_ms=$(awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", (b - a) * 1000 }')
}

compile_times() { # LOG → the compile_ms values, one per line
    sed -nE 's/.*compile_ms=([0-9.]+).*/\1/p' "$1"
}

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else print v[int((NR + 1) / 2)] }'; }

results=()
for n in $SIZES; do
    dir=$run_dir/config-$n
    generate "$dir" "$n"
    log "$((2 * n)) resources: start, then $RELOADS reloads"
    start_sidecar "$dir" "sidecar-$n"
    sleep 1
    rss=$(awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$sidecar_pid/status")
    for i in $(seq 1 "$RELOADS"); do
        write_route "$dir" "$((5 + i))s"
        sleep 1.2
    done
    # jemalloc gives freed pages back as they age (~10 s): what the proxy keeps, not its peak.
    sleep $((RELOADS > 10 ? 1 : 12 - RELOADS))
    settled=$(awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$sidecar_pid/status")
    first=$(compile_times "$run_dir/sidecar-$n.log" | head -1)
    reload=$(compile_times "$run_dir/sidecar-$n.log" | tail -n +2 | median)
    applied=$(compile_times "$run_dir/sidecar-$n.log" | wc -l)
    kill "$sidecar_pid"; wait "$sidecar_pid" 2>/dev/null || true
    results+=("$((2 * n)) $ready_ms ${first:--} $reload $((applied - 1)) $rss $settled")
done

# ---- reloads under load ---------------------------------------------------------------------------
n=$(tr ' ' '\n' <<<"$SIZES" | sort -n | head -1)
dir=$run_dir/config-$n
log "$RATE req/s for ${DURATION}s through a sidecar with $((2 * n)) resources, a reload every second"
start_sidecar "$dir" "load-$n"
(
    i=0
    end=$((SECONDS + DURATION))
    while [ "$SECONDS" -lt "$end" ]; do
        i=$((i + 1))
        write_route "$dir" "$((5 + i % 2))s"
        sleep 1
    done
) &
writer=$!
"$loadgen" --addr "127.0.0.1:$PROXY_PORT" --target "http://$HOST/" --host "$HOST" --rate "$RATE" \
    --duration "$DURATION" --warmup 0 --connections 16 > "$run_dir/load.txt" 2> "$run_dir/load.err"
wait "$writer"
line=$(grep '^RESULT' "$run_dir/load.txt")
generations=$(compile_times "$run_dir/load-$n.log" | wc -l)

report=$run_dir/report.txt
{
    report_title "sluice config bench"
    echo "N ServiceEntries + N VirtualServices (+ 3 bench resources); sidecar with --concurrency 1"
    echo
    printf '%10s %10s %12s %12s %8s %10s %12s\n' resources "ready ms" "compile ms" "reload ms" reloads \
        "peak MiB" "settled MiB"
    for r in "${results[@]}"; do
        read -r res ready first reload count rss settled <<<"$r"
        printf '%10s %10s %12s %12s %8s %10s %12s\n' "$res" "$ready" "$first" "$reload" "$count" "$rss" "$settled"
    done
    echo
    for size in $SIZES; do "$config_memory" "$run_dir/config-$size"; done
    echo
    echo "reloads under load ($((2 * n)) resources, $RATE req/s, ${DURATION}s, $((generations - 1)) reloads applied):"
    echo "  $line"
    echo
    echo "raw outputs: $run_dir"
} | tee "$report"
cp "$report" "$out/config-latest.txt"
errors=$(sed -E 's/.* errors=([0-9]+).*/\1/' <<<"$line")
[ "$errors" = 0 ]
