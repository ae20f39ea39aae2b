#!/usr/bin/env bash
# Memory per idle connection, and memory given back after a flood: sluice beside nginx, on
# loopback only. See bench/README.md ("Memory after a flood").
#
#   bench/memory.sh                          # 8,000 connections, 3 runs per case, ~5 minutes
#   RUNS=5 CONNECTIONS=8000 bench/memory.sh
#   SLUICE_PROFILE=bench-fast bench/memory.sh  # no fat-LTO link (minutes faster on 2 cores)
#   SLUICE_BIN=target/debug/sluice TARGETS=sluice bench/memory.sh
#
# For each target and case, RUNS times on a fresh process: one warm-up request, RSS (VmRSS)
# `baseline`; CONNECTIONS keep-alive connections that each send one request, read the answer and
# stay open, idle: `peak`; all closed, SETTLE seconds later: `after`. The report gives medians.
#
# Knobs (environment): CONNECTIONS (8000), RUNS (3), SETTLE (s, 20), CASES ("local upstream":
# the proxy answers itself / the request goes through to the upstream), TARGETS ("nginx sluice"),
# THREADS (sluice's worker threads, default: one per CPU; nginx is always one process),
# SLUICE_PROFILE (release), SLUICE_BIN (a sluice binary to measure as is, no build).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
out=$repo/bench/out
mkdir -p "$out"
run_dir=$(mktemp -d "$out/memory-XXXXXX")
# shellcheck source=bench/lib.sh
. "$repo/bench/lib.sh"

CONNECTIONS=${CONNECTIONS:-8000}
RUNS=${RUNS:-3}
SETTLE=${SETTLE:-20}
CASES=${CASES:-"local upstream"}
TARGETS=${TARGETS:-"nginx sluice"}
THREADS=${THREADS:-}
SLUICE_PROFILE=${SLUICE_PROFILE:-release}
SLUICE_BIN=${SLUICE_BIN:-}

# Ports apart from bench/run.sh's, so both can be set up side by side.
UP_PORT=28180      # upstream: nginx serving a 1 KiB body
NGINX_PORT=28181
SLUICE_PORT=28183  # sluice's explicit proxy (--proxy-port); its other ports 28184-28187
HOST=upstream.bench
# Under REGISTRY_ONLY sluice answers a host it does not know with 502 itself; nginx gets a
# server block that does the same, so "local" measures each proxy without an upstream.
BLOCKED=blocked.example

log() { printf '[memory] %s\n' "$*" >&2; }

# ---- dependencies ---------------------------------------------------------------------------------
need_packages nginx:nginx-light curl:curl
PATH=$PATH:/usr/sbin:/sbin

# Every connection is a descriptor in the flood tool and one in the proxy; the proxy's upstream
# connections are few (the flood has at most 16 requests in flight), so 1,024 more cover them and
# the rest. Each process has its own limit (children inherit it): 10,000 connections fit in a hard
# limit of 20,000.
need_files=$((CONNECTIONS + 1024))
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt "$need_files" ] && [ "$(id -u)" = 0 ]; then
    # root may raise its hard limit (up to fs.nr_open).
    ulimit -Hn "$need_files" 2>/dev/null && hard=$need_files
fi
if [ "$hard" != unlimited ] && [ "$hard" -lt "$need_files" ]; then
    log "need $need_files open files for $CONNECTIONS connections, but the hard limit (ulimit -Hn) is $hard"
    exit 1
fi
ulimit -n "$need_files"

# ---- builds ---------------------------------------------------------------------------------------
if [[ " $TARGETS " == *" sluice "* ]]; then build_sluice; fi
build_loadgen
trap cleanup EXIT

# answer PORT HOST: "status size" of one absolute-form request through PORT
answer() {
    curl -s --noproxy '*' --max-time 2 -o /dev/null -w '%{http_code} %{size_download}' \
        -H "Host: $2" --request-target "http://$2/" "http://127.0.0.1:$1/" || true
}

# ---- upstream -------------------------------------------------------------------------------------
mkdir -p "$run_dir/tmp"
export NGINX_FILES=$need_files
upstream_conf "127.0.0.1:$UP_PORT default_server" > "$run_dir/upstream.conf"
start upstream nginx -c "$run_dir/upstream.conf" -e stderr
for _ in $(seq 1 100); do
    [ "$(answer "$UP_PORT" "$HOST")" = "200 1024" ] && break
    sleep 0.1
done
[ "$(answer "$UP_PORT" "$HOST")" = "200 1024" ] || { log "upstream did not start"; cat "$run_dir/upstream.log"; exit 1; }

# ---- proxies --------------------------------------------------------------------------------------
# nginx gets a second server block that answers BLOCKED itself, as sluice does under REGISTRY_ONLY.
nginx_proxy_conf "127.0.0.1:$NGINX_PORT" "127.0.0.1:$UP_PORT" http "" "" "
    server {
        listen 127.0.0.1:$NGINX_PORT;
        server_name $BLOCKED;
        location / { return 502; }
    }" > "$run_dir/nginx.conf"
sluice_http_config "$run_dir/sluice-config" "$HOST" "$UP_PORT"

start_target() { # NAME → $proxy_pid, $proxy_port
    case $1 in
        nginx)
            start nginx nginx -c "$run_dir/nginx.conf" -e stderr
            proxy_port=$NGINX_PORT
            ;;
        sluice)
            # Idle keep-alive connections are closed after --request-headers-timeout (30 s by
            # default); the flood keeps them for less, but a slow build should not cut it short.
            start sluice "$SLUICE_BIN" sidecar --concurrency "${THREADS:-0}" --config "$run_dir/sluice-config" \
                --proxy-port "$SLUICE_PORT" --outbound-port 28184 --inbound-port 0 \
                --admin-port 28185 --status-port 28186 --stats-port 28187 \
                --request-headers-timeout 300s --log-level warn
            proxy_port=$SLUICE_PORT
            ;;
        *) log "unknown target $1"; exit 1 ;;
    esac
    proxy_pid=$started_pid
}

# ---- measurements ---------------------------------------------------------------------------------
rows=()
failed=()
for target in $TARGETS; do
    for case in $CASES; do
        case $case in
            local) host=$BLOCKED want=502 ;;
            upstream) host=$HOST want=200 ;;
            *) log "unknown case $case"; exit 1 ;;
        esac
        for run in $(seq 1 "$RUNS"); do
            start_target "$target"
            check=""
            for _ in $(seq 1 100); do
                check=$(answer "$proxy_port" "$host")
                [ "${check%% *}" = "$want" ] && break
                sleep 0.1
            done
            if [ "${check%% *}" != "$want" ]; then
                log "$target/$case: the warm-up request gave '$check', not $want (log: $run_dir/$target.log)"
                tail -n 20 "$run_dir/$target.log" >&2 || true
                failed+=("$target/$case")
                stop "$proxy_pid"
                break
            fi
            sleep 1
            log "$target/$case run $run: $CONNECTIONS idle connections, then ${SETTLE}s after closing them"
            "$flood" --addr "127.0.0.1:$proxy_port" --pid "$proxy_pid" --target "http://$host/" \
                --host "$host" --connections "$CONNECTIONS" --settle "$SETTLE" \
                > "$run_dir/$target.$case.$run.txt" 2> "$run_dir/$target.$case.$run.err" || true
            stop "$proxy_pid"
            line=$(grep '^RESULT' "$run_dir/$target.$case.$run.txt" || true)
            field() { sed -E "s/.* $1=([^ ]+).*/\\1/" <<<"$line"; }
            if [ -z "$line" ] || [ "$(field answered)" != "$CONNECTIONS" ] \
                || [ "$(field statuses)" != "$want:$CONNECTIONS" ]; then
                log "$target/$case run $run: not every connection was answered $want: ${line:-no result}"
                cat "$run_dir/$target.$case.$run.err" >&2
                failed+=("$target/$case")
                break
            fi
            rows+=("$target $case $(field baseline_kb) $(field peak_kb) $(field after_kb)")
        done
    done
done

# ---- report ---------------------------------------------------------------------------------------
# median TARGET CASE COLUMN → the median over the runs of one awk expression of b, p, a (KiB)
median() {
    for r in "${rows[@]}"; do echo "$r"; done | awk -v t="$1" -v c="$2" -v n="$CONNECTIONS" "
        \$1 == t && \$2 == c { b = \$3; p = \$4; a = \$5; v[k++] = $3 }
        END {
            if (k == 0) { print \"-\"; exit }
            for (i = 0; i < k; i++) for (j = i + 1; j < k; j++) if (v[j] < v[i]) { x = v[i]; v[i] = v[j]; v[j] = x }
            m = (k % 2) ? v[(k - 1) / 2] : (v[k / 2 - 1] + v[k / 2]) / 2
            printf \"%.2f\", m
        }"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "-" && b != "-" && b > 0) printf "%.2f", a / b; else printf "-" }'; }

report=$run_dir/report.txt
{
    report_title "sluice memory bench"
    echo "$CONNECTIONS idle keep-alive connections, one request each; RSS ${SETTLE}s after closing them; median of $RUNS runs"
    echo "cases: local = the proxy answers 502 itself; upstream = 200 with 1 KiB from nginx on 127.0.0.1:$UP_PORT"
    echo
    printf '%-7s %-9s %9s %9s %9s %10s %9s %10s %9s\n' target case "base MiB" "peak MiB" "after MiB" \
        "KiB/conn" "conn/ngx" "after/base" "returned"
    for target in $TARGETS; do
        for case in $CASES; do
            base=$(median "$target" "$case" "b / 1024")
            peak=$(median "$target" "$case" "p / 1024")
            after=$(median "$target" "$case" "a / 1024")
            per=$(median "$target" "$case" "(p - b) / n")
            ngx_per=$(median nginx "$case" "(p - b) / n")
            back=$(median "$target" "$case" "a / b")
            returned=$(median "$target" "$case" "(p > b) ? (p - a) / (p - b) : 0")
            printf '%-7s %-9s %9s %9s %9s %10s %9s %10s %9s\n' "$target" "$case" "$base" "$peak" "$after" \
                "$per" "$(ratio "$per" "$ngx_per")" "$back" "$returned"
        done
    done
    echo
    echo "KiB/conn = (peak - baseline) / connections; conn/ngx = that over nginx's; after/base = RSS after"
    echo "the flood over RSS before it (1.00 = all given back); returned = (peak - after) / (peak - baseline)"
    if [ "${#failed[@]}" -gt 0 ]; then echo; echo "not measured: ${failed[*]}"; fi
    echo
    echo "raw outputs: $run_dir"
} | tee "$report"
cp "$report" "$out/memory-latest.txt"
[ "${#failed[@]}" -eq 0 ]
