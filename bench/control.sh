#!/usr/bin/env bash
# The control plane at scale: one `sluice control`, SIDECARS real sidecars taking their config from
# it, and a load client holding STREAMS more ADS streams; how long a one-resource change takes to
# reach every proxy, what a push costs the control plane, and its memory per connected proxy.
# Loopback only. See bench/README.md ("Control plane at scale").
#
#   bench/control.sh                                  # 200 sidecars, 10,000 streams, 5 rounds
#   SLUICE_PROFILE=bench-fast bench/control.sh        # no fat-LTO link (minutes faster on 2 cores)
#   SIDECARS=50 STREAMS=2000 ROUNDS=3 bench/control.sh
#   XDS_MODE=delta bench/control.sh                   # incremental xDS (sidecars with --xds-delta)
#
# Steps: build sluice and the load client (crates/control/examples/ads_load.rs); write a config
# folder of RESOURCES ServiceEntries + RESOURCES VirtualServices (as bench/config.sh) plus one
# VirtualService in route.yaml; start `sluice control` on 127.0.0.1; start SIDECARS `sluice sidecar
# --xds` in explicit-proxy mode (no iptables, inbound off) and wait until all are ready; start the
# load client (STREAMS streams over CONNECTIONS HTTP/2 connections, each its own node, ACKing every
# response) and wait until every stream has every collection. Then ROUNDS times: the load client
# rewrites the timeout of route.yaml's VirtualService and reports when each stream received the
# change; the script waits until every sidecar has applied it ("config applied"
# in its log, ACKed right after), and reads the control plane's CPU time (utime+stime) and
# pilot_xds_pushes before and after, and pilot_proxy_convergence_time from /metrics.
# Control-plane RSS: config loaded with no proxy, with the sidecars, with every stream connected
# (and SETTLE seconds later), and the peak (VmHWM).
#
# With PIN=1 (default, >= 2 CPUs) the control plane runs on CPU 1, the load client and the sidecars
# on CPU 0. The load client stands in for STREAMS proxies on machines of their own: it runs at nice
# LOAD_NICE (-20 as root) and the sidecars at SIDECAR_NICE (19), so that 200 sidecars compiling a
# new config at once do not hold back its timestamps (at nice 10 against 0 they left it ~4%).
#
# Knobs (environment): SIDECARS (200), STREAMS (10000), CONNECTIONS (100), ROUNDS (5), RESOURCES
# (1000: that many ServiceEntries and as many VirtualServices), XDS_MODE (sotw: state of the world,
# istiod's default; delta: DeltaAggregatedResources for the sidecars and the load client), SETTLE
# (s, 12), LOAD_THREADS (the load client's runtime threads, 1), LOAD_DECODE (light: version, type
# and nonce only; full: every response as Envoy's DiscoveryResponse; decode: and every resource as
# a proxy decodes it), PIN, LOAD_NICE, SIDECAR_NICE, SLUICE_PROFILE (release), SLUICE_BIN (a sluice
# binary to measure as is; the load client is still built with SLUICE_PROFILE).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
out=$repo/bench/out
mkdir -p "$out"
run_dir=$(mktemp -d "$out/control-XXXXXX")
# shellcheck source=bench/lib.sh
. "$repo/bench/lib.sh"

SIDECARS=${SIDECARS:-200}
STREAMS=${STREAMS:-10000}
CONNECTIONS=${CONNECTIONS:-100}
ROUNDS=${ROUNDS:-5}
RESOURCES=${RESOURCES:-1000}
XDS_MODE=${XDS_MODE:-sotw}
SETTLE=${SETTLE:-12}
LOAD_THREADS=${LOAD_THREADS:-1}
LOAD_DECODE=${LOAD_DECODE:-light}
SIDECAR_NICE=${SIDECAR_NICE:-19}
LOAD_NICE=${LOAD_NICE:-$([ "$(id -u)" = 0 ] && echo -20 || echo 0)}
SLUICE_PROFILE=${SLUICE_PROFILE:-release}
SLUICE_BIN=${SLUICE_BIN:-}

# Ports apart from the other benches' (28080-28387) and below the ephemeral range (32768-).
XDS_PORT=29010
MONITORING_PORT=29014
SIDECAR_BASE=29100 # sidecar i: 29100 + 6i .. +5 (proxy, outbound, inbound (off), admin, status, stats)
CONTROL=127.0.0.1:$XDS_PORT
MONITORING=http://127.0.0.1:$MONITORING_PORT
HOST=upstream.bench
WATCH=networking.istio.io/v1/VirtualService

log() { printf '[control-bench] %s\n' "$*" >&2; }

[ "$((SIDECAR_BASE + 6 * SIDECARS))" -le 32768 ] || { log "SIDECARS=$SIDECARS: too many for the port range"; exit 1; }
case $XDS_MODE in
    sotw) sidecar_delta=() load_delta=() ;;
    delta) sidecar_delta=(--xds-delta) load_delta=(--delta) ;;
    *) log "XDS_MODE=$XDS_MODE: sotw or delta"; exit 1 ;;
esac
need_packages curl:curl jq:jq

# The control plane holds one connection per sidecar and per load-client connection; the sidecars
# and the load client few. Each process has its own limit (children inherit it).
need_files=$((SIDECARS + CONNECTIONS + 1024))
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt "$need_files" ] && [ "$(id -u)" = 0 ]; then
    ulimit -Hn "$need_files" 2>/dev/null && hard=$need_files
fi
if [ "$hard" != unlimited ] && [ "$hard" -lt "$need_files" ]; then
    log "need $need_files open files, but the hard limit (ulimit -Hn) is $hard"
    exit 1
fi
ulimit -n "$need_files"

# ---- builds ---------------------------------------------------------------------------------------
build="$SLUICE_PROFILE build"
[ -n "$SLUICE_BIN" ] && build=$SLUICE_BIN
build_sluice
log "building the load client (crates/control/examples/ads_load.rs, profile $SLUICE_PROFILE)"
cargo build --profile "$SLUICE_PROFILE" -p sluice-control --example ads_load
ads_load=$repo/target/$SLUICE_PROFILE/examples/ads_load
trap cleanup EXIT
pin_cpus
# The script's own polling (curl, awk, jq) stays off the control plane's CPU.
if [ "${#load_cpu[@]}" -gt 0 ]; then taskset -cp 0 $$ > /dev/null; fi
nice_sidecar=() nice_load=()
[ "$SIDECAR_NICE" != 0 ] && nice_sidecar=(nice -n "$SIDECAR_NICE")
[ "$LOAD_NICE" != 0 ] && nice_load=(nice -n "$LOAD_NICE")

# ---- config ---------------------------------------------------------------------------------------
# RESOURCES ServiceEntries with a VirtualService each, as bench/config.sh writes them, the mesh
# config, and route.yaml: the VirtualService the load client changes (block style, one timeout).
config=$run_dir/config
mkdir -p "$config"
awk -v n="$RESOURCES" 'BEGIN {
    for (i = 0; i < n; i++) {
        printf "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: svc-%d, namespace: default}\n", i
        printf "spec:\n  hosts: [svc-%d.bench.example]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n", i
        printf "  resolution: STATIC\n  location: MESH_EXTERNAL\n  endpoints: [{address: 127.0.%d.%d}]\n---\n", int(i / 250) % 250, i % 250 + 1
        printf "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: svc-%d, namespace: default}\n", i
        printf "spec:\n  hosts: [svc-%d.bench.example]\n  http:\n  - match: [{uri: {prefix: /v%d}}]\n", i, i
        printf "    route: [{destination: {host: svc-%d.bench.example}}]\n    timeout: 5s\n", i
        printf "    retries: {attempts: 2, perTryTimeout: 2s}\n---\n"
    }
}' > "$config/generated.yaml"
sluice_http_config "$config" "$HOST" 29099
cat > "$config/route.yaml" <<CONF
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: upstream
  namespace: default
spec:
  hosts:
  - $HOST
  http:
  - route:
    - destination:
        host: $HOST
    timeout: 5s
CONF
resources=$((2 * RESOURCES + 3))

# ---- helpers --------------------------------------------------------------------------------------
rss_mib() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
hwm_mib() { awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
metrics() { curl -s --noproxy '*' --max-time 10 "$MONITORING/metrics"; }
# sum of a metric's samples (all label sets) in a /metrics text on stdin
metric_sum() { awk -v m="$1" 'index($0, m "{") == 1 || index($0, m " ") == 1 { s += $NF } END { printf "%d", s }'; }
# the convergence histogram's cumulative bucket counts "le count" (with +Inf) from /metrics on stdin
convergence_buckets() {
    sed -nE 's/^pilot_proxy_convergence_time_bucket\{le="([^"]+)"\} ([0-9.e+]+)$/\1 \2/p'
}
# CPU ms (utime+stime) of the processes whose PIDs follow
cpu_ms() {
    local files=() p
    for p in "$@"; do files+=("/proc/$p/stat"); done
    awk -v hz="$clk_tck" '{ s += $14 + $15 } END { printf "%d", s * 1000 / hz }' "${files[@]}" 2>/dev/null || true
}
# CPU ms the whole machine spent busy (everything but idle and iowait in /proc/stat)
busy_ms() { awk -v hz="$clk_tck" '/^cpu / { printf "%d", ($2 + $3 + $4 + $7 + $8 + $9) * 1000 / hz }' /proc/stat; }
# "file count" of "config applied" lines for every sidecar log
applied_counts() {
    awk '/config applied/ { n[FILENAME]++ } END { for (f in n) print f, n[f] }' "$run_dir"/sidecar-*.log | sort
}
# percentiles of the numbers on stdin: "p50 p99 max"
percentiles() {
    sort -n | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "- - -"; exit }
        i50 = int(NR * 0.50 + 0.999999); i99 = int(NR * 0.99 + 0.999999)
        printf "%.1f %.1f %.1f\n", v[i50], v[i99], v[NR]
    }'
}
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else print v[int((NR + 1) / 2)] }'; }

# ---- control plane --------------------------------------------------------------------------------
log "$resources resources; starting sluice control on $CONTROL"
start control "${proxy_cpu[@]}" "$SLUICE_BIN" control --config "$config" --bind 127.0.0.1 \
    --xds-port "$XDS_PORT" --monitoring-port "$MONITORING_PORT" --name bench-control
control_pid=$started_pid
for _ in $(seq 1 600); do
    curl -s -o /dev/null -f --noproxy '*' --max-time 1 "$MONITORING/ready" && break
    sleep 0.1
done
curl -s -o /dev/null -f --noproxy '*' --max-time 1 "$MONITORING/ready" || {
    log "the control plane is not ready"; tail -n 20 "$run_dir/control.log" >&2; exit 1
}
sleep 1
rss_idle=$(rss_mib "$control_pid")

# ---- sidecars -------------------------------------------------------------------------------------
log "starting $SIDECARS sidecars (--xds $CONTROL)"
sidecar_pids=()
started_at=$EPOCHREALTIME
for i in $(seq 0 $((SIDECARS - 1))); do
    p=$((SIDECAR_BASE + 6 * i))
    start "sidecar-$i" "${nice_sidecar[@]}" "${load_cpu[@]}" "$SLUICE_BIN" sidecar --xds "$CONTROL" "${sidecar_delta[@]}" \
        --xds-node-id "sidecar~127.0.0.1~bench-$i.default~default.svc.cluster.local" \
        --concurrency 1 --proxy-port "$p" --outbound-port $((p + 1)) --inbound-port 0 \
        --admin-port $((p + 3)) --status-port $((p + 4)) --stats-port $((p + 5)) --log-level info
    sidecar_pids+=("$started_pid")
done
waiting=$(seq 0 $((SIDECARS - 1)))
deadline=$((SECONDS + 600))
while [ -n "$waiting" ] && [ "$SECONDS" -lt "$deadline" ]; do
    still=""
    for i in $waiting; do
        curl -s -o /dev/null -f --noproxy '*' --max-time 1 \
            "http://127.0.0.1:$((SIDECAR_BASE + 6 * i + 4))/healthz/ready" || still="$still $i"
    done
    waiting=${still# }
    [ -n "$waiting" ] && sleep 0.5
done
if [ -n "$waiting" ]; then
    first=${waiting%% *}
    log "sidecars not ready after 600 s: $(wc -w <<<"$waiting") (e.g. sidecar-$first)"
    tail -n 20 "$run_dir/sidecar-$first.log" >&2
    exit 1
fi
sidecars_ready_s=$(awk -v a="$started_at" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
log "$SIDECARS sidecars ready in ${sidecars_ready_s}s"
sleep 2
rss_sidecars=$(rss_mib "$control_pid")

# ---- load client ----------------------------------------------------------------------------------
case $LOAD_DECODE in
    light) decode=() ;;
    full) decode=(--full) ;;
    decode) decode=(--decode) ;;
    *) log "LOAD_DECODE=$LOAD_DECODE: light, full or decode"; exit 1 ;;
esac
log "load client: $STREAMS streams over $CONNECTIONS connections"
hwm_before_streams=$(hwm_mib "$control_pid")
# The load client's stdin and stdout are FIFOs the script holds open (its commands in, its JSON
# lines out), so its last lines can still be read once it has exited.
mkfifo "$run_dir/load.in" "$run_dir/load.out"
"${nice_load[@]}" "${load_cpu[@]}" "$ads_load" --xds "$CONTROL" --streams "$STREAMS" --connections "$CONNECTIONS" \
    --config-file "$config/route.yaml" --rounds "$ROUNDS" --step --watch "$WATCH" \
    --threads "$LOAD_THREADS" "${load_delta[@]}" "${decode[@]}" < "$run_dir/load.in" > "$run_dir/load.out" 2>> "$run_dir/ads_load.log" &
load_pid=$!
pids+=("$load_pid")
exec {load_in}> "$run_dir/load.in"
exec {load_out}< "$run_dir/load.out"
# next JSON line of the load client (within TIMEOUT s) into $line; fails if none
next_line() { # TIMEOUT
    line=""
    IFS= read -r -t "$1" line <&"$load_out" || { log "no answer from the load client"; tail -n 20 "$run_dir/ads_load.log" >&2; return 1; }
    printf '%s\n' "$line" >> "$run_dir/ads_load.jsonl"
}
next_line 900
ready=$line
[ "$(jq -r .event <<<"$ready")" = ready ] || { log "load client: $ready"; exit 1; }
streams_ready_s=$(jq -r .ready_s <<<"$ready")
initial_bytes=$(jq -r .bytes_per_stream <<<"$ready")
hwm_connect=$(hwm_mib "$control_pid")
rss_connected=$(rss_mib "$control_pid")
log "$STREAMS streams have every collection after ${streams_ready_s}s; RSS $rss_connected MiB; ${SETTLE}s to settle"
sleep "$SETTLE"
rss_settled=$(rss_mib "$control_pid")
connected=$(metrics | metric_sum pilot_xds)

# ---- rounds ---------------------------------------------------------------------------------------
rows=()
for round in $(seq 1 "$ROUNDS"); do
    next_line 60
    [ "$(jq -r .event <<<"$line")" = waiting ] || { log "load client: $line"; exit 1; }
    applied_counts > "$run_dir/applied-before-$round"
    metrics > "$run_dir/metrics-before-$round.txt"
    cpu0=$(cpu_ms "$control_pid")
    load_cpu0=$(cpu_ms "$load_pid")
    sidecar_cpu0=$(cpu_ms "${sidecar_pids[@]}")
    busy0=$(busy_ms)
    echo go >&"$load_in"
    next_line 300
    result=$line
    [ "$(jq -r .event <<<"$result")" = round ] || { log "load client: $result"; exit 1; }
    t0=$(jq -r .t0_unix <<<"$result")
    version=$(jq -r '.versions | join(",")' <<<"$result")
    # every sidecar has applied the change once more (ACKed as soon as it is applied)
    deadline=$((SECONDS + 300))
    advanced=0
    while [ "$SECONDS" -lt "$deadline" ]; do
        advanced=$(applied_counts | awk 'NR == FNR { b[$1] = $2; next } $2 > b[$1] { c++ } END { print c + 0 }' \
            "$run_dir/applied-before-$round" -)
        [ "$advanced" -ge "$SIDECARS" ] && break
        sleep 0.5
    done
    # ACKs in flight land; an idle control plane spends nothing meanwhile.
    sleep 1
    cpu1=$(cpu_ms "$control_pid")
    load_cpu1=$(cpu_ms "$load_pid")
    sidecar_cpu1=$(cpu_ms "${sidecar_pids[@]}")
    busy1=$(busy_ms)
    metrics > "$run_dir/metrics-after-$round.txt"
    # when each sidecar applied it: the first new "config applied" line, ms after the write
    # (log times are UTC wall clock, as t0 is)
    read -r sc50 sc99 scmax < <(awk -v t0="$t0" '
        NR == FNR { b[$1] = $2; next }
        /config applied/ {
            n[FILENAME]++
            if (n[FILENAME] == b[FILENAME] + 1) {
                split(substr($1, 12), t, ":")
                s = t[1] * 3600 + t[2] * 60 + t[3]
                d = s - (t0 % 86400)
                if (d < -43200) d += 86400
                print d * 1000
            }
        }' "$run_dir/applied-before-$round" "$run_dir"/sidecar-*.log | percentiles)
    pushes=$(( $(metric_sum pilot_xds_pushes < "$run_dir/metrics-after-$round.txt") \
        - $(metric_sum pilot_xds_pushes < "$run_dir/metrics-before-$round.txt") ))
    cpu=$((cpu1 - cpu0))
    # pilot_proxy_convergence_time in this round: ACKs within 1 s, and the bucket holding the p99
    read -r acks within_1s conv_p99 < <(awk '
        NR == FNR { b[$1] = $2; next }
        { d = $2 - b[$1]; le[++k] = $1; c[k] = d; if ($1 == "+Inf") total = d; if ($1 == "1.0" || $1 == "1") one = d }
        END {
            p = "-"
            for (i = 1; i <= k; i++) {
                if (c[i] >= 0.99 * total) { p = (le[i] == "+Inf") ? ">" le[i - 1] "s" : "<=" le[i] "s"; break }
            }
            printf "%d %d %s\n", total, one, p
        }' <(convergence_buckets < "$run_dir/metrics-before-$round.txt") \
           <(convergence_buckets < "$run_dir/metrics-after-$round.txt"))
    # /debug/syncz (costly with 10,000 streams: read after the CPU figures): proxies that ACKed it
    synced=$(curl -s --noproxy '*' --max-time 60 "$MONITORING/debug/syncz" \
        | jq --arg t "$WATCH" --arg v "$version" '[.[] | select(.types[$t].acked == $v)] | length')
    us_per_push=$(awk -v c="$cpu" -v p="$pushes" 'BEGIN { if (p > 0) printf "%.1f", c * 1000 / p; else print "-" }')
    row="$round $(jq -r 'def r: . * 10 | round / 10; "\(.p50_ms | r) \(.p99_ms | r) \(.max_ms | r) \(.converged) \(.bytes_per_stream)"' <<<"$result") \
$sc50 $sc99 $scmax $advanced $pushes $cpu $us_per_push $acks $within_1s $conv_p99 $synced \
$((load_cpu1 - load_cpu0)) $((sidecar_cpu1 - sidecar_cpu0)) \
$((busy1 - busy0 - cpu - (load_cpu1 - load_cpu0) - (sidecar_cpu1 - sidecar_cpu0))) $version"
    rows+=("$row")
    log "round $round: streams p99 $(jq -r .p99_ms <<<"$result") ms, sidecars p99 $sc99 ms, control plane ${cpu} ms CPU for $pushes pushes"
done
# after its last round the load client prints its summary, and holds its streams until told
next_line 60 || true
summary=$line
hwm_end=$(hwm_mib "$control_pid")
rss_end=$(rss_mib "$control_pid")
echo quit >&"$load_in"
exec {load_in}>&-

# ---- report ---------------------------------------------------------------------------------------
col() { for r in "${rows[@]}"; do awk -v c="$1" '{ print $c }' <<<"$r"; done | grep -v '^-$' | median; }
proxies=$((SIDECARS + STREAMS))
per_proxy_kib=$(awk -v a="$rss_settled" -v b="$rss_idle" -v n="$proxies" 'BEGIN { printf "%.1f", (a - b) * 1024 / n }')
per_proxy_connect_kib=$(awk -v a="$rss_connected" -v b="$rss_idle" -v n="$proxies" 'BEGIN { printf "%.1f", (a - b) * 1024 / n }')
p99_median=$(col 3)
goal_latency=$(awk -v p="$p99_median" 'BEGIN { print (p != "-" && p < 1000) ? "met" : "missed" }')
goal_rss=$(awk -v a="$hwm_end" 'BEGIN { print (a * 1048576 < 1e9) ? "met" : "missed" }')
report=$run_dir/report.txt
{
    report_title "sluice control-plane bench"
    echo "sluice: $build ($(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$repo" diff --quiet 2>/dev/null || echo '+changes'))"
    echo "config: $resources resources ($RESOURCES ServiceEntries, $((RESOURCES + 1)) VirtualServices, 1 ServiceEntry, the mesh config)"
    echo "proxies: $SIDECARS sidecars + $STREAMS load-client streams over $CONNECTIONS HTTP/2 connections = $proxies (pilot_xds: $connected)"
    echo "pinning: $([ "${#proxy_cpu[@]}" -gt 0 ] && echo "control plane on CPU 1; load client (nice $LOAD_NICE) and sidecars (nice $SIDECAR_NICE) on CPU 0" || echo "none (load client nice $LOAD_NICE, sidecars nice $SIDECAR_NICE)")"
    echo "xDS: $XDS_MODE; load client decoding: $LOAD_DECODE"
    echo
    echo "sidecars ready (all, from start): ${sidecars_ready_s} s; streams with every collection: ${streams_ready_s} s"
    echo "initial config per stream: $initial_bytes bytes"
    echo
    echo "per round: one VirtualService's timeout changed in the folder (ms after the write)"
    printf '%5s | %9s %9s %9s %8s %10s | %9s %9s %9s %5s | %7s %7s %8s | %7s %7s %6s %7s | %8s %9s %9s\n' \
        round "strm p50" "strm p99" "strm max" streams "bytes/push" "side p50" "side p99" "side max" ok \
        pushes "CPU ms" "us/push" acks "<=1s" "p99" synced "load ms" "side ms" "other ms"
    for r in "${rows[@]}"; do
        read -r n a b c d e f g h i j k l m o p q s u v _ <<<"$r"
        printf '%5s | %9s %9s %9s %8s %10s | %9s %9s %9s %5s | %7s %7s %8s | %7s %7s %6s %7s | %8s %9s %9s\n' \
            "$n" "$a" "$b" "$c" "$d" "$e" "$f" "$g" "$h" "$i" "$j" "$k" "$l" "$m" "$o" "$p" "$q" "$s" "$u" "$v"
    done
    printf '%5s | %9s %9s %9s %8s %10s | %9s %9s %9s %5s | %7s %7s %8s |\n' median "$(col 2)" "$(col 3)" \
        "$(col 4)" "" "$(col 6)" "$(col 7)" "$(col 8)" "$(col 9)" "" "$(col 11)" "$(col 12)" "$(col 13)"
    echo
    echo "strm = the load client's streams receiving the change (the VirtualService collection); side = sidecars"
    echo "applying it (their log); bytes/push = protobuf bytes per stream; CPU ms = control-plane utime+stime"
    echo "in the round; us/push = that over pilot_xds_pushes; acks, <=1s, p99 = pilot_proxy_convergence_time"
    echo "observations in the round, within 1 s, and the bucket of their p99; synced = proxies whose"
    echo "/debug/syncz shows the new version ACKed; load ms, side ms = CPU of the load client, of all sidecars;"
    echo "other ms = the rest of the machine's busy CPU in the round (kernel softirq work for loopback, and any"
    echo "process not of this bench: more than a few hundred ms means the figures are not from an idle machine)"
    echo
    echo "control-plane RSS (MiB): config loaded $rss_idle; with $SIDECARS sidecars $rss_sidecars; all $proxies"
    echo "  connected $rss_connected, ${SETTLE}s later $rss_settled, at the end $rss_end; peak (VmHWM) before the"
    echo "  streams $hwm_before_streams, after connecting $hwm_connect, at the end $hwm_end"
    echo "  per connected proxy: $per_proxy_kib KiB settled ($per_proxy_connect_kib KiB right after connecting)"
    echo
    echo "goals: a one-resource change on $proxies proxies in < 1 s p99 (streams, median of rounds):"
    echo "  $p99_median ms, $goal_latency; control plane under 1 GB RSS: peak $hwm_end MiB, $goal_rss"
    echo
    echo "bench/README.md row:"
    echo "| $(date -u +%Y-%m-%d) | $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')) | $build, $XDS_MODE | $resources | $SIDECARS + $STREAMS / $CONNECTIONS | $(col 2) / $(col 3) / $(col 4) | $(col 7) / $(col 8) | $(col 6) | $(col 12) / $(col 13) | $rss_idle / $rss_settled / $hwm_end | $per_proxy_kib |"
    echo
    echo "load client summary: $summary"
    echo "raw outputs: $run_dir"
} | tee "$report"
cp "$report" "$out/control-latest.txt"
[ "$(jq -r .complete_rounds <<<"$summary" 2>/dev/null)" = "$ROUNDS" ]
