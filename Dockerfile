# syntax=docker/dockerfile:1
#
# sluice's image: one statically linked binary, run as uid 1337 (Istio's proxy uid; `sluice init
# -u 1337` exempts it from capture). Every role is this one image: the Deployments in deploy/
# choose `control`, `gateway` or `sidecar` by their args, and injected pods run its `init` as
# their `istio-init` container. That one needs iptables-restore and iptables-save (as Istio's
# proxyv2 image ships them), so the base is Debian's slim image with the iptables package and
# nothing else, not an empty one.
#
#   docker build --build-arg SLUICE_COMMIT=$(git rev-parse --short=12 HEAD) -t sluice:0.1.0 .
#
# The binary is built by scripts/build-static.sh, exactly as the tests build it (with their fast
# profile instead of release). .git is not in the build context (.dockerignore), so the commit
# that `sluice version` prints comes from the SLUICE_COMMIT build argument.

# The toolchain the project is built and tested with, on Debian 12 (glibc's static libraries and
# the C compiler that jemalloc and ring need come with the image).
ARG RUST_VERSION=1.95.0
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
ARG SLUICE_COMMIT=unknown
ARG PROFILE=release
# The registry and target caches survive between builds (and stay out of the image); --out
# writes the binary outside the cached target directory, where the next stage finds it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    SLUICE_COMMIT="${SLUICE_COMMIT}" scripts/build-static.sh --profile "${PROFILE}" --out /out

# The binary, the CA bundle and iptables (for `sluice init` in istio-init, which runs as root
# with NET_ADMIN; every other container runs as 1337 without capabilities). The bundle is what
# DestinationRule TLS origination trusts when it names no caCertificates.
FROM docker.io/library/debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends iptables \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/sluice /usr/local/bin/sluice
USER 1337:1337
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["--help"]
