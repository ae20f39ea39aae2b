#!/usr/bin/env bash
# The scenarios of issue 11 beyond plain HTTP/1.1, each beside the proxy a user would pick
# instead: access log on, TLS passthrough by SNI, TLS origination, a sidecar → sidecar hop with
# ISTIO_MUTUAL, and HTTP/2. Each scenario runs in a network namespace of its own that has only a
# loopback interface (no route anywhere else). See bench/README.md ("Scenarios").
#
#   bench/scenarios.sh                     # every scenario, 10 s per measurement (~4 minutes)
#   DURATION=5 SCENARIOS="mesh h2" bench/scenarios.sh
#   SLUICE_PROFILE=bench-fast bench/scenarios.sh
#
# Knobs (environment): SCENARIOS (default "accesslog passthrough origination mesh h2"), DURATION
# (s, per measurement, 10), CONNS (saturation connections, 32), STREAMS (HTTP/2 streams per
# connection, 10), RATE (fixed-rate req/s, 1000), RATE_CONNS (fixed-rate connections, 16), PIN (1:
# proxies on CPU 1, load generator and upstream on CPU 0), SLUICE_PROFILE (release; bench-fast
# skips the long LTO link), SLUICE_BIN (a sluice binary to measure as is, no build).
# Needs root (network namespaces, iptables inside them).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
out=$repo/bench/out
mkdir -p "$out"
run_dir=$(mktemp -d "$out/scenarios-XXXXXX")
# shellcheck source=bench/lib.sh
. "$repo/bench/lib.sh"

SCENARIOS=${SCENARIOS:-"accesslog passthrough origination mesh h2"}
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
STREAMS=${STREAMS:-10}
RATE=${RATE:-1000}
RATE_CONNS=${RATE_CONNS:-16}
PIN=${PIN:-1}
SLUICE_PROFILE=${SLUICE_PROFILE:-release}
SLUICE_BIN=${SLUICE_BIN:-}

# Every scenario has its own namespace, so these ports never meet run.sh's or another run's.
UP_PORT=28080       # upstream: nginx, 1 KiB body (also on 127.0.0.2 for the mesh hop)
UP_TLS_PORT=28443   # the same upstream over TLS (certificate for upstream.tls from a test CA)
NGINX_PORT=28081    # nginx (the first one of the mesh pair)
NGINX_B_PORT=28091  # the second nginx of the mesh pair (mutual TLS)
HAPROXY_PORT=28082
SLUICE_PORT=28083   # sluice's explicit proxy; outbound 28084, admin/status/stats 28085-28087
GATEWAY_PORT=28444  # sluice gateway's PASSTHROUGH server
SIDECAR_B_INBOUND=28098  # the second sidecar of the mesh hop; its other ports 28093-28097
HOST=upstream.bench
TLS_HOST=upstream.tls
MESH_HOST=upstream.bench.svc.cluster.local
MESH_APP=127.0.0.2  # the mesh hop's workload address (on lo), captured into the second sidecar

log() { printf '[scenarios] %s\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || { log "needs root: network namespaces and iptables"; exit 1; }

# ---- dependencies ---------------------------------------------------------------------------------
need_packages nginx:nginx-light haproxy:haproxy wrk:wrk curl:curl taskset:util-linux \
    h2load:nghttp2-client openssl:openssl iptables:iptables ip:iproute2
PATH=$PATH:/usr/sbin:/sbin
for module in http_ssl_module http_v2_module; do
    nginx -V 2>&1 | grep -q -- "--with-$module" || {
        log "this nginx lacks $module: apt-get install nginx-full (or nginx-extras)"
        exit 1
    }
done

# ---- builds ---------------------------------------------------------------------------------------
build_sluice
build_loadgen

# ---- network namespaces ---------------------------------------------------------------------------
namespaces=()
ns=""
# A namespace with only `lo` (up) and a hosts file naming the test hosts 127.0.0.1.
ns_up() { # SCENARIO → $ns
    ns=slbench-$$-$1
    ip netns add "$ns"
    namespaces+=("$ns")
    ip -n "$ns" link set lo up
    # `ip netns exec` bind-mounts this over /etc/hosts for what runs inside.
    mkdir -p "/etc/netns/$ns"
    printf '127.0.0.1 localhost %s %s\n' "$HOST" "$TLS_HOST" > "/etc/netns/$ns/hosts"
}
# Kills what still runs inside (all started by this script), deletes the namespace.
ns_remove() { # NAME
    local p
    for p in $(ip netns pids "$1" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
    sleep 0.2
    ip netns delete "$1" 2>/dev/null || true
    rm -rf "/etc/netns/$1"
}
inns() { ip netns exec "$ns" "$@"; }

on_exit() {
    cleanup
    for n in "${namespaces[@]}"; do ns_remove "$n"; done
}
trap on_exit EXIT
pin_cpus

# ---- certificates ---------------------------------------------------------------------------------
# A test CA and one leaf for upstream.tls (and the mesh pair's nginx), usable as server and
# client certificate. rustls refuses a self-signed end-entity certificate, hence the CA.
certs=$run_dir/certs
mkdir -p "$certs"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 7 \
    -keyout "$certs/ca.key" -out "$certs/ca.pem" -subj "/CN=sluice bench CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    2> "$certs/openssl.log"
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$certs/leaf.key" \
    -out "$certs/leaf.csr" -subj "/CN=$TLS_HOST" 2>> "$certs/openssl.log"
printf '%s\n' "subjectAltName=DNS:$TLS_HOST,DNS:$HOST,DNS:$MESH_HOST" "basicConstraints=CA:FALSE" \
    "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth,clientAuth" > "$certs/leaf.ext"
openssl x509 -req -in "$certs/leaf.csr" -CA "$certs/ca.pem" -CAkey "$certs/ca.key" -set_serial "$RANDOM$RANDOM" \
    -days 7 -extfile "$certs/leaf.ext" -out "$certs/leaf.pem" 2>> "$certs/openssl.log"
# The sidecars' mesh root (`sluice ca`); each sidecar issues its own workload certificate from it.
"$SLUICE_BIN" ca init --dir "$certs/mesh-ca" > "$certs/mesh-ca.log" 2>&1

# ---- upstream -------------------------------------------------------------------------------------
mkdir -p "$run_dir/tmp"
UPSTREAM_TLS="        ssl_certificate $certs/leaf.pem;
        ssl_certificate_key $certs/leaf.key;" \
    upstream_conf "127.0.0.1:$UP_PORT default_server" "$MESH_APP:$UP_PORT" "127.0.0.1:$UP_TLS_PORT ssl" \
    > "$run_dir/upstream.conf"

start_upstream() { # in $ns
    start "upstream-$ns" "${load_cpu[@]}" ip netns exec "$ns" nginx -c "$run_dir/upstream.conf" -e stderr
    for _ in $(seq 1 100); do
        [ "$(inns curl -s -o /dev/null --max-time 1 -w '%{http_code}' "http://127.0.0.1:$UP_PORT/" || true)" = 200 ] && return 0
        sleep 0.1
    done
    log "upstream did not start"; cat "$run_dir/upstream-$ns.log"; exit 1
}

# ---- proxies --------------------------------------------------------------------------------------
# Each start_* sets $proxy_pids (one or two processes: CPU and memory are summed) and $port.
proxy_pids=()

start_proxy() { # NAME CMD...: a proxy process, pinned, in $ns
    local name=$1; shift
    start "$name" "${proxy_cpu[@]}" ip netns exec "$ns" "$@"
    proxy_pids+=("$started_pid")
}

start_nginx() { # NAME CONF
    start_proxy "$1" nginx -c "$2" -e stderr
}

# sluice sidecar NAME CONFIG-DIR [extra flags]: explicit proxy on SLUICE_PORT, no inbound listener.
start_sidecar() {
    local name=$1 dir=$2; shift 2
    start_proxy "$name" "$SLUICE_BIN" sidecar --concurrency 1 --config "$dir" --proxy-port "$SLUICE_PORT" \
        --outbound-port 28084 --inbound-port 0 --admin-port 28085 --status-port 28086 --stats-port 28087 \
        --log-level warn "$@"
    wait_ready 28086 ip netns exec "$ns" || log "$name is not ready (log: $run_dir/$name.log)"
}

# --- accesslog: run.sh's HTTP/1.1 row with each proxy's default access log written to a file; the
# `-off` rows are the same proxies with the log off (run.sh's row), measured alongside for what
# the log costs.
start_accesslog_nginx() { # [off]
    local log="        access_log $run_dir/access-nginx.log;"
    [ "${1:-}" = off ] && log=""
    # nginx's default `combined` format, written (unbuffered) per request.
    nginx_proxy_conf "127.0.0.1:$NGINX_PORT" "127.0.0.1:$UP_PORT" http "$log" > "$run_dir/accesslog-nginx.conf"
    start_nginx "accesslog-nginx${1:+-$1}" "$run_dir/accesslog-nginx.conf"
    port=$NGINX_PORT
}
start_accesslog_sluice() { # [off]
    local log=$run_dir/access-sluice.log
    [ "${1:-}" = off ] && log=""
    # Istio's default TEXT format, through sluice's access-log writer thread.
    sluice_http_config "$run_dir/accesslog-config${1:+-$1}" "$HOST" "$UP_PORT" "$log"
    start_sidecar "accesslog-sluice${1:+-$1}" "$run_dir/accesslog-config${1:+-$1}"
    port=$SLUICE_PORT
}
start_accesslog_nginx-off() { start_accesslog_nginx off; }
start_accesslog_sluice-off() { start_accesslog_sluice off; }

# --- passthrough: TLS routed by its SNI, not terminated; the client handshakes with the upstream.
start_passthrough_haproxy() {
    cat > "$run_dir/passthrough-haproxy.cfg" <<CONF
global
    nbthread 1
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend fe
    bind 127.0.0.1:$HAPROXY_PORT
    tcp-request inspect-delay 5s
    tcp-request content accept if { req_ssl_hello_type 1 }
    use_backend up_tls if { req_ssl_sni -i $TLS_HOST }
backend up_tls
    server up 127.0.0.1:$UP_TLS_PORT
CONF
    start_proxy passthrough-haproxy haproxy -db -f "$run_dir/passthrough-haproxy.cfg"
    port=$HAPROXY_PORT
}
# The upstream as a TLS ServiceEntry on 443 and a `tls` route by SNI to it, matching port PORT;
# with GATEWAY, the route is bound to that Gateway (in istio-system) instead of the sidecars.
passthrough_config() { # PORT [GATEWAY]
    local bind=""
    [ -n "${2:-}" ] && bind="  namespace: istio-system
spec:
  gateways:
  - $2"
    cat <<CONF
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: upstream-tls
spec:
  hosts:
  - $TLS_HOST
  ports:
  - number: 443
    name: tls
    protocol: TLS
  resolution: STATIC
  location: MESH_EXTERNAL
  endpoints:
  - address: 127.0.0.1
    ports:
      tls: $UP_TLS_PORT
---
$(mesh_config)
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: upstream-tls
${bind:-spec:}
  hosts:
  - $TLS_HOST
  tls:
  - match:
    - port: $1
      sniHosts:
      - $TLS_HOST
    route:
    - destination:
        host: $TLS_HOST
        port:
          number: 443
CONF
}
start_passthrough_sidecar() {
    # The client connects to upstream.tls:443 (127.0.0.1:443 in the namespace's hosts file);
    # iptables sends that to the sidecar's captured outbound listener, as `sluice init` would.
    mkdir -p "$run_dir/passthrough-sidecar"
    passthrough_config 443 > "$run_dir/passthrough-sidecar/bench.yaml"
    inns iptables -t nat -A OUTPUT -p tcp -d 127.0.0.1 --dport 443 -j REDIRECT --to-ports 28084
    start_sidecar passthrough-sidecar "$run_dir/passthrough-sidecar"
    port=443
}
start_passthrough_gateway() {
    # The gateway's PASSTHROUGH server: SNI routing with no capture, HAProxy's setup.
    mkdir -p "$run_dir/passthrough-gateway"
    { passthrough_config "$GATEWAY_PORT" bench-gw; cat <<CONF
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: bench-gw
  namespace: istio-system
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: $GATEWAY_PORT
      name: tls
      protocol: TLS
    hosts:
    - $TLS_HOST
    tls:
      mode: PASSTHROUGH
CONF
    } > "$run_dir/passthrough-gateway/bench.yaml"
    start_proxy passthrough-gateway "$SLUICE_BIN" gateway --concurrency 1 --bind 127.0.0.1 \
        --config "$run_dir/passthrough-gateway" --admin-port 28085 --status-port 28086 --stats-port 28087 \
        --log-level warn
    wait_ready 28086 ip netns exec "$ns" || log "the gateway is not ready (log: $run_dir/passthrough-gateway.log)"
    port=$GATEWAY_PORT
}

# --- origination: plain HTTP in, TLS (verified, pooled) to the upstream.
start_origination_nginx() {
    nginx_proxy_conf "127.0.0.1:$NGINX_PORT" "127.0.0.1:$UP_TLS_PORT" https "" "
            proxy_ssl_server_name on;
            proxy_ssl_name $TLS_HOST;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate $certs/ca.pem;
            proxy_ssl_session_reuse on;" > "$run_dir/origination-nginx.conf"
    start_nginx origination-nginx "$run_dir/origination-nginx.conf"
    port=$NGINX_PORT
}
start_origination_sluice() {
    # Egress TLS origination (docs/egress-control.md): port 80 HTTP for the app, TLS on the wire.
    sluice_http_config "$run_dir/origination-config" "$TLS_HOST" "$UP_TLS_PORT"
    cat > "$run_dir/origination-config/tls.yaml" <<CONF
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: upstream-tls
spec:
  host: $TLS_HOST
  trafficPolicy:
    tls:
      mode: SIMPLE
      caCertificates: $certs/ca.pem
      sni: $TLS_HOST
CONF
    start_sidecar origination-sluice "$run_dir/origination-config"
    port=$SLUICE_PORT
}

# --- mesh: client → proxy → mutual TLS → proxy → upstream.
start_mesh_nginx() {
    NGINX_NAME=mesh-nginx-a nginx_proxy_conf "127.0.0.1:$NGINX_PORT" "127.0.0.1:$NGINX_B_PORT" https "" "
            proxy_ssl_certificate $certs/leaf.pem;
            proxy_ssl_certificate_key $certs/leaf.key;
            proxy_ssl_server_name on;
            proxy_ssl_name $MESH_HOST;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate $certs/ca.pem;
            proxy_ssl_session_reuse on;" > "$run_dir/mesh-nginx-a.conf"
    NGINX_NAME=mesh-nginx-b nginx_proxy_conf "127.0.0.1:$NGINX_B_PORT ssl" "127.0.0.1:$UP_PORT" http "
        ssl_certificate $certs/leaf.pem;
        ssl_certificate_key $certs/leaf.key;
        ssl_client_certificate $certs/ca.pem;
        ssl_verify_client on;" > "$run_dir/mesh-nginx-b.conf"
    start_nginx mesh-nginx-b "$run_dir/mesh-nginx-b.conf"
    start_nginx mesh-nginx-a "$run_dir/mesh-nginx-a.conf"
    port=$NGINX_PORT
}
start_mesh_sluice() {
    # A Service whose endpoint (a WorkloadEntry at 127.0.0.2) is the upstream; ISTIO_MUTUAL to it.
    # The client's sidecar takes the request on its explicit proxy (as run.sh's row); the server's
    # sidecar gets the mutual-TLS connection to 127.0.0.2:28080 on its inbound listener through
    # iptables, as `sluice init -b '*'` sets up, and forwards it to the upstream from 127.0.0.6.
    local dir=$run_dir/mesh-config
    mkdir -p "$dir"
    cat > "$dir/bench.yaml" <<CONF
apiVersion: v1
kind: Service
metadata:
  name: upstream
  namespace: bench
spec:
  clusterIP: 10.96.0.10
  selector:
    app: upstream
  ports:
  - name: http
    port: 80
    targetPort: $UP_PORT
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: upstream-1
  namespace: bench
spec:
  address: $MESH_APP
  labels:
    app: upstream
  serviceAccount: upstream
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: upstream
  namespace: bench
spec:
  host: $MESH_HOST
  trafficPolicy:
    tls:
      mode: ISTIO_MUTUAL
---
$(mesh_config)
CONF
    inns iptables -t nat -A OUTPUT -p tcp -d "$MESH_APP" --dport "$UP_PORT" ! -s 127.0.0.6 \
        -j REDIRECT --to-ports "$SIDECAR_B_INBOUND"
    start_proxy mesh-sluice-b "$SLUICE_BIN" sidecar --concurrency 1 --config "$dir" \
        --namespace bench --labels app=upstream --service-account upstream --mesh-ca "$certs/mesh-ca" \
        --proxy-port 28093 --outbound-port 28094 --inbound-port "$SIDECAR_B_INBOUND" \
        --admin-port 28095 --status-port 28096 --stats-port 28097 --log-level warn
    wait_ready 28096 ip netns exec "$ns" || log "the server sidecar is not ready (log: $run_dir/mesh-sluice-b.log)"
    start_sidecar mesh-sluice-a "$dir" --namespace bench --labels app=client --service-account client \
        --mesh-ca "$certs/mesh-ca"
    port=$SLUICE_PORT
}

# --- h2: HTTP/2 with prior knowledge (h2c) from the client, HTTP/1.1 to the upstream.
start_h2_nginx() {
    nginx_proxy_conf "127.0.0.1:$NGINX_PORT http2" "127.0.0.1:$UP_PORT" > "$run_dir/h2-nginx.conf"
    start_nginx h2-nginx "$run_dir/h2-nginx.conf"
    port=$NGINX_PORT
}
start_h2_sluice() {
    # The explicit proxy speaks HTTP/1.1 only; an h2c client reaches the sidecar the usual way, by
    # capture: 127.0.0.1:80 → the outbound listener, which detects HTTP/2 by its preface.
    sluice_http_config "$run_dir/h2-config" "$HOST" "$UP_PORT"
    inns iptables -t nat -A OUTPUT -p tcp -d 127.0.0.1 --dport 80 -j REDIRECT --to-ports 28084
    start_sidecar h2-sluice "$run_dir/h2-config"
    port=80
}

# ---- measurements ---------------------------------------------------------------------------------
# scenario → its targets (the anchor first) and how the client talks: http (HTTP/1.1, absolute
# form, to HOST), https (HTTP/1.1 over TLS to upstream.tls, end to end) or h2 (h2c).
targets_of() {
    case $1 in
        accesslog) echo "nginx sluice nginx-off sluice-off" ;;
        passthrough) echo "haproxy sidecar gateway" ;;
        origination) echo "nginx sluice" ;;
        mesh) echo "nginx sluice" ;;
        h2) echo "nginx sluice" ;;
        *) return 1 ;;
    esac
}
kind_of() {
    case $1 in
        accesslog) echo "http $HOST" ;;
        passthrough) echo "https $TLS_HOST" ;;
        origination) echo "http $TLS_HOST" ;;
        mesh) echo "http $MESH_HOST" ;;
        h2) echo "h2 $HOST" ;;
    esac
}

sum_ticks() { local t=0 p; for p in "$@"; do t=$((t + $(cpu_ticks "$p"))); done; echo "$t"; }
sum_hwm_kb() { local t=0 p; for p in "$@"; do t=$((t + $(hwm_kb "$p"))); done; echo "$t"; }

# "status size" (h2: "status size version") of one request through 127.0.0.1:PORT
probe() { # KIND HOST PORT
    case $1 in
        http) inns curl -s --max-time 2 -o /dev/null -w '%{http_code} %{size_download}' \
                -H "Host: $2" --request-target "http://$2/" "http://127.0.0.1:$3/" || true ;;
        https) inns curl -s --max-time 2 -o /dev/null -w '%{http_code} %{size_download}' \
                --cacert "$certs/ca.pem" "https://$2:$3/" || true ;;
        h2) inns curl -s --max-time 2 -o /dev/null -w '%{http_code} %{size_download} %{http_version}' \
                --http2-prior-knowledge -H "Host: $2" "http://127.0.0.1:$3/" || true ;;
    esac
}

results=()
failed=()
notes=()
measure() { # SCENARIO TARGET
    local scenario=$1 target=$2 name="$1-$2" kind host
    read -r kind host <<<"$(kind_of "$scenario")"
    proxy_pids=()
    port=""
    "start_${scenario}_${target}"
    local want="200 1024" check=""
    [ "$kind" = h2 ] && want="200 1024 2"
    for _ in $(seq 1 100); do
        check=$(probe "$kind" "$host" "$port")
        [ "$check" = "$want" ] && break
        sleep 0.1
    done
    if [ "$check" != "$want" ]; then
        log "$name: the test request through 127.0.0.1:$port gave '$check', not '$want'; not measured"
        for p in "${proxy_pids[@]}"; do stop "$p"; done
        tail -n 20 "$run_dir/$name"*.log >&2 || true
        failed+=("$name")
        return 0
    fi

    local s0 s1 satcpu rps requests errors=0
    s0=$(sum_ticks "${proxy_pids[@]}")
    case $kind in
        http)
            log "$name: saturation, wrk -t1 -c$CONNS -d${DURATION}s"
            printf 'wrk.method = "GET"\nwrk.path = "http://%s/"\nwrk.headers["Host"] = "%s"\n' "$host" "$host" \
                > "$run_dir/absolute-$host.lua"
            inns "${load_cpu[@]}" wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$run_dir/absolute-$host.lua" \
                "http://127.0.0.1:$port/" > "$run_dir/$name.sat.txt" 2>&1 ;;
        https)
            log "$name: saturation, wrk -t1 -c$CONNS -d${DURATION}s https://$host:$port/"
            inns "${load_cpu[@]}" wrk -t1 -c"$CONNS" -d"${DURATION}s" "https://$host:$port/" \
                > "$run_dir/$name.sat.txt" 2>&1 ;;
        h2)
            log "$name: saturation, h2load -t1 -c$CONNS -m$STREAMS -D$DURATION"
            inns "${load_cpu[@]}" h2load -t1 -c"$CONNS" -m"$STREAMS" -D"$DURATION" -H ":authority: $host" \
                "http://127.0.0.1:$port/" > "$run_dir/$name.sat.txt" 2>&1 || true ;;
    esac
    s1=$(sum_ticks "${proxy_pids[@]}")
    satcpu=$(awk -v d=$((s1 - s0)) -v hz="$clk_tck" -v t="$DURATION" 'BEGIN { printf "%.0f", d / hz / t * 100 }')
    if [ "$kind" = h2 ]; then
        rps=$(awk '/^finished in/ { gsub(",", ""); printf "%.0f", $4 }' "$run_dir/$name.sat.txt")
        requests=$(awk '/^requests:/ { print $8 }' "$run_dir/$name.sat.txt")
        # failed + errored + timeout, and answers other than 2xx
        errors=$(awk '/^requests:/ { e += $10 + $12 + $14 } /^status codes:/ { gsub(",", ""); e += $5 + $7 + $9 }
            END { print e + 0 }' "$run_dir/$name.sat.txt")
    else
        rps=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$run_dir/$name.sat.txt")
        requests=$(awk '/ requests in / { print $1 }' "$run_dir/$name.sat.txt")
        errors=$(awk '/Non-2xx or 3xx responses:/ { e += $NF }
            /Socket errors:/ { gsub(",", ""); e += $4 + $6 + $8 + $10 } END { print e + 0 }' "$run_dir/$name.sat.txt")
    fi
    local satms="-"
    [ "${requests:-0}" -gt 0 ] && satms=$(awk -v d=$((s1 - s0)) -v hz="$clk_tck" -v n="$requests" \
        'BEGIN { printf "%.1f", d * 1000 / hz / n * 1000 }')

    # CPU per request and latency at a fixed rate: bench/loadgen speaks plain HTTP/1.1 only.
    local p50="-" p99="-" cpu="-"
    if [ "$kind" = http ]; then
        log "$name: fixed rate $RATE req/s over $RATE_CONNS connections for ${DURATION}s"
        local t0 t1 line sent
        t0=$(sum_ticks "${proxy_pids[@]}")
        inns "${load_cpu[@]}" "$loadgen" --addr "127.0.0.1:$port" --target "http://$host/" --host "$host" \
            --rate "$RATE" --duration "$DURATION" --warmup 0 --connections "$RATE_CONNS" \
            > "$run_dir/$name.rate.txt" 2> "$run_dir/$name.rate.err" || true
        t1=$(sum_ticks "${proxy_pids[@]}")
        line=$(grep '^RESULT' "$run_dir/$name.rate.txt" || echo "RESULT sent=0 errors=0 p50_ms=- p99_ms=-")
        sent=$(sed -E 's/.* sent=([0-9]+).*/\1/' <<<"$line")
        errors=$((errors + $(sed -E 's/.* errors=([0-9]+).*/\1/' <<<"$line")))
        p50=$(sed -E 's/.* p50_ms=([0-9.-]+).*/\1/' <<<"$line")
        p99=$(sed -E 's/.* p99_ms=([0-9.-]+).*/\1/' <<<"$line")
        [ "$sent" -gt 0 ] && cpu=$(awk -v d=$((t1 - t0)) -v hz="$clk_tck" -v n="$sent" \
            'BEGIN { printf "%.1f", d * 1000 / hz / n * 1000 }')
    fi
    local rss
    rss=$(awk -v kb="$(sum_hwm_kb "${proxy_pids[@]}")" 'BEGIN { printf "%.1f", kb / 1024 }')
    check_scenario "$scenario" "$target" "$requests"
    for p in "${proxy_pids[@]}"; do stop "$p"; done
    results+=("$scenario $target ${rps:-0} $satcpu $satms $p50 $p99 $cpu $rss $errors")
}

# What each scenario must show besides 200s: the access logs were written, the mesh hop was
# mutual TLS.
check_scenario() { # SCENARIO TARGET SATURATION-REQUESTS
    case $1-$2 in
        accesslog-nginx|accesslog-sluice)
            local file=$run_dir/access-$2.log lines
            sleep 1  # sluice's writer thread drains its queue
            lines=$(wc -l < "$file" 2>/dev/null || echo 0)
            notes+=("accesslog/$2: $lines access-log lines for $3 saturation requests + the fixed-rate and test ones")
            ;;
        mesh-sluice)
            # The server sidecar's own count of requests that arrived over mutual TLS.
            local mtls
            mtls=$(inns curl -s --max-time 2 http://127.0.0.1:28097/stats/prometheus \
                | awk '/^istio_requests_total\{/ && /reporter="destination"/ && /connection_security_policy="mutual_tls"/ { n += $NF }
                    END { printf "%.0f", n }')
            notes+=("mesh/sluice: the server sidecar counted $mtls requests over mutual TLS (saturation: $3)")
            [ "${mtls:-0}" -gt 0 ] || { log "mesh/sluice: no request arrived over mutual TLS"; failed+=("mesh-sluice(no mTLS)"); }
            ;;
    esac
}

for scenario in $SCENARIOS; do
    targets=$(targets_of "$scenario") || { log "unknown scenario $scenario"; exit 1; }
    ns_up "$scenario"
    start_upstream
    for target in $targets; do measure "$scenario" "$target"; done
    cleanup; pids=()
    ns_remove "$ns"
done

# ---- report ---------------------------------------------------------------------------------------
report=$run_dir/report.txt
{
    report_title "sluice scenarios"
    echo "load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "upstream: nginx, 1 KiB body; one worker per proxy; pinned: $([ ${#proxy_cpu[@]} -gt 0 ] && echo 'proxies CPU 1, load+upstream CPU 0' || echo no)"
    echo "saturation: wrk -t1 -c$CONNS ${DURATION}s (h2: h2load -c$CONNS -m$STREAMS); fixed rate: $RATE req/s, $RATE_CONNS connections, ${DURATION}s"
    echo
    printf '%-12s %-10s %9s %8s %9s %8s %8s %9s %8s %8s %9s %8s %6s\n' scenario target "req/s" "sat CPU%" \
        "sat ms/1k" "p50 ms" "p99 ms" "CPU ms/1k" "RSS MiB" "rps/anc" "satms/anc" "cpu/anc" errors
    ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "-" && b != "-" && b > 0) printf "%.2f", a / b; else printf "-" }'; }
    anchor=""
    for r in "${results[@]}"; do
        read -r scenario target rps satcpu satms p50 p99 cpu rss errors <<<"$r"
        [ "${anchor%% *}" != "$scenario" ] && anchor=$r
        read -r _ _ arps _ asatms _ _ acpu _ _ <<<"$anchor"
        printf '%-12s %-10s %9s %8s %9s %8s %8s %9s %8s %8s %9s %8s %6s\n' "$scenario" "$target" "$rps" "$satcpu" \
            "$satms" "$p50" "$p99" "$cpu" "$rss" "$(ratio "$rps" "$arps")" "$(ratio "$satms" "$asatms")" \
            "$(ratio "$cpu" "$acpu")" "$errors"
    done
    echo
    echo "anc = the scenario's first row (nginx, or HAProxy for passthrough); for req/s higher is better,"
    echo "for CPU lower. sat ms/1k: the proxies' CPU per 1,000 requests during the saturation run;"
    echo "CPU ms/1k: the same at the fixed rate (HTTP/1.1 clients only). mesh rows sum both proxies."
    echo "accesslog's -off rows: the same proxies with the log off (run.sh's row), for what the log costs."
    for n in "${notes[@]}"; do echo "$n"; done
    if [ "${#failed[@]}" -gt 0 ]; then echo; echo "not measured or failed: ${failed[*]}"; fi
    echo
    echo "raw outputs: $run_dir"
} | tee "$report"
cp "$report" "$out/scenarios-latest.txt"
[ "${#failed[@]}" -eq 0 ]
