# shellcheck shell=bash disable=SC2034,SC2154
# Shell helpers shared by the bench scripts (sourced, not run). Needs $run_dir, $repo and $out; the
# caller defines log(). (SC2034/SC2154: the variables set and read here are the callers'.)

# The http{} settings of every nginx the benches start (upstream and proxy): no access log,
# long-lived keep-alive, and temp paths inside the run directory (nginx would otherwise write
# under /var/lib/nginx).
nginx_common() {
    cat <<CONF
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path $run_dir/tmp;
    proxy_temp_path $run_dir/tmp;
    fastcgi_temp_path $run_dir/tmp;
    uwsgi_temp_path $run_dir/tmp;
    scgi_temp_path $run_dir/tmp;
CONF
}

# The top of every nginx config: one process (no master) unless NGINX_WORKERS > 1, the log on
# stderr, NGINX_FILES connections (default 4096). NAME names the pid file.
nginx_main() { # NAME
    local workers=${NGINX_WORKERS:-1} files=${NGINX_FILES:-4096}
    cat <<CONF
daemon off;
master_process $( [ "$workers" = 1 ] && echo off || echo on );
worker_processes $workers;
worker_rlimit_nofile $files;
error_log stderr warn;
pid $run_dir/$1.pid;
events { worker_connections $files; }
CONF
}

# The upstream every bench proxies to: nginx answering every request with a 1 KiB body, on each
# LISTEN (`127.0.0.1:28080`, or `127.0.0.1:28443 ssl` with ssl_certificate lines in UPSTREAM_TLS).
upstream_conf() { # LISTEN...
    local body listen
    body=$(head -c 1024 /dev/zero | tr '\0' 'x')
    nginx_main upstream
    echo "http {"
    nginx_common
    echo "    server {"
    for listen in "$@"; do echo "        listen $listen;"; done
    [ -n "${UPSTREAM_TLS:-}" ] && printf '%s\n' "$UPSTREAM_TLS"
    echo "        location / { default_type text/plain; return 200 \"$body\"; }"
    echo "    }"
    echo "}"
}

# nginx as a reverse proxy on LISTEN to UPSTREAM (host:port) with a keep-alive pool, as run.sh
# measures it. SCHEME (http) is how it talks to the upstream; SERVER_EXTRA, LOCATION_EXTRA and
# HTTP_EXTRA are added inside the server, location and http blocks. NGINX_NAME (nginx) names the
# pid file.
nginx_proxy_conf() { # LISTEN UPSTREAM [SCHEME [SERVER_EXTRA [LOCATION_EXTRA [HTTP_EXTRA]]]]
    nginx_main "${NGINX_NAME:-nginx}"
    cat <<CONF
http {
$(nginx_common)
    upstream up { server $2; keepalive 128; keepalive_requests 1000000; }
    server {
        listen $1 default_server;
${4:-}
        location / {
            proxy_pass ${3:-http}://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
${5:-}
        }
    }
${6:-}
}
CONF
}

# The sidecar config of run.sh and memory.sh: HOST as a ServiceEntry with a static endpoint at
# 127.0.0.1:UP_PORT, REGISTRY_ONLY, the access log to ACCESS_LOG ("" = off).
sluice_http_config() { # DIR HOST UP_PORT [ACCESS_LOG]
    mkdir -p "$1"
    cat > "$1/bench.yaml" <<CONF
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: upstream
spec:
  hosts:
  - $2
  ports:
  - number: 80
    name: http
    protocol: HTTP
  resolution: STATIC
  location: MESH_EXTERNAL
  endpoints:
  - address: 127.0.0.1
    ports:
      http: $3
---
$(mesh_config "${4:-}")
CONF
}

# The `istio` ConfigMap: REGISTRY_ONLY, the access log to ACCESS_LOG ("" = off).
mesh_config() { # [ACCESS_LOG]
    cat <<CONF
apiVersion: v1
kind: ConfigMap
metadata:
  name: istio
  namespace: istio-system
data:
  mesh: |-
    accessLogFile: "${1:-}"
    outboundTrafficPolicy:
      mode: REGISTRY_ONLY
CONF
}

# Installs the Debian packages of the commands that are missing, without starting their
# services. Arguments: COMMAND:PACKAGE pairs.
need_packages() {
    local need=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] || need+=("${pair#*:}")
    done
    [ "${#need[@]}" -eq 0 ] && return 0
    log "installing ${need[*]}"
    # Packages must not start their system services (nginx would take port 80).
    local created_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        created_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
    if [ "$created_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
}

# Builds sluice with SLUICE_PROFILE unless SLUICE_BIN names a binary; sets SLUICE_BIN.
build_sluice() {
    if [ -z "${SLUICE_BIN:-}" ]; then
        log "building sluice (profile $SLUICE_PROFILE)"
        cargo build --profile "$SLUICE_PROFILE" -p sluice
        SLUICE_BIN=$repo/target/$SLUICE_PROFILE/sluice
    fi
}

# Builds bench/loadgen; sets $loadgen (fixed-rate client) and $flood (idle connections).
build_loadgen() {
    log "building the load generator"
    cargo build --release --quiet --manifest-path "$repo/bench/loadgen/Cargo.toml" --target-dir "$out/target"
    loadgen=$out/target/release/sluice-loadgen
    flood=$out/target/release/sluice-flood
}

# Background processes: started with start(), killed on exit by cleanup().
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}

# start NAME CMD... : runs CMD in the background, logs to $run_dir/NAME.log, sets $started_pid
start() {
    local name=$1; shift
    "$@" >> "$run_dir/$name.log" 2>&1 &
    started_pid=$!
    pids+=("$started_pid")
}

stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# With PIN=1 on ≥2 CPUs: proxies on CPU 1, load generator and upstream on CPU 0.
proxy_cpu=() load_cpu=()
pin_cpus() {
    if [ "${PIN:-1}" = 1 ] && [ "$(nproc)" -ge 2 ]; then
        proxy_cpu=(taskset -c 1)
        load_cpu=(taskset -c 0)
    fi
}

cpu_ticks() { # PID → utime+stime in clock ticks
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}
clk_tck=$(getconf CLK_TCK)

hwm_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }

# Waits (10 s) until a sidecar's or gateway's /healthz/ready on STATUS_PORT answers 200; CMD...
# (e.g. `ip netns exec NS`) runs curl elsewhere.
wait_ready() { # STATUS_PORT [CMD...]
    local port=$1; shift
    for _ in $(seq 1 100); do
        "$@" curl -s -o /dev/null -f --max-time 1 --noproxy '*' "http://127.0.0.1:$port/healthz/ready" && return 0
        sleep 0.1
    done
    return 1
}

# The first line of every report.
report_title() { # WHAT
    echo "$1 $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))"
}
