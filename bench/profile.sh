#!/usr/bin/env bash
# Where a proxy spends its CPU per request: runs bench/run.sh's saturation test with `perf record`
# sampling the proxy's stacks, then writes, per target, a flamegraph (SVG), the folded stacks, and
# a text summary: the share of samples in the kernel vs user space and the top functions by self
# and inclusive time. Compare sluice with nginx, and a build before and after a change
# (`inferno-diff-folded before.folded after.folded | inferno-flamegraph > diff.svg`).
#
#   bench/profile.sh                               # sluice and nginx, bench-fast build, 8 s
#   TARGETS=sluice SLUICE_BIN=target/x/sluice bench/profile.sh
#   PROFILE_OUT=bench/out/profile-… bench/profile.sh   # summarise an earlier run again, no new run
#
# Needs root (perf on another process), Debian's linux-perf (installed if missing) and inferno
# (`cargo install inferno`, installed if missing). Output: bench/out/profile-<time>/ and
# bench/out/profile-latest (a symlink). Sampling costs the proxy throughput: read the shares, not
# the req/s, from a profiled run.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

export TARGETS=${TARGETS:-"nginx sluice"}
export DURATION=${DURATION:-8}
export SLUICE_PROFILE=${SLUICE_PROFILE:-bench-fast}
TOP=${TOP:-40}

command -v perf >/dev/null 2>&1 || {
    echo "[profile] installing linux-perf" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends linux-perf
}
export PATH=$PATH:$HOME/.cargo/bin
command -v inferno-flamegraph >/dev/null 2>&1 || {
    echo "[profile] installing inferno (cargo install)" >&2
    cargo install --locked --quiet inferno
}

out=${PROFILE_OUT:-$repo/bench/out/profile-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
[ -n "${PROFILE_OUT:-}" ] || PERF_DIR=$out bench/run.sh | tee "$out/run.txt"

for data in "$out"/*.perf.data; do
    name=$(basename "$data" .perf.data)
    perf script -i "$data" 2>/dev/null | inferno-collapse-perf --all > "$out/$name.folded"
    inferno-flamegraph --title "$name, saturation" < "$out/$name.folded" > "$out/$name.svg"
    # `head` closes the pipes early: no pipefail in the summary.
    set +o pipefail
    {
        echo "== $name: $(awk '{ n += $NF } END { printf "%.3g", n }' "$out/$name.folded") cycles sampled"
        echo "-- where the samples are: kernel, the binary, libc"
        perf report -i "$data" --no-children --sort dso --stdio -g none 2>/dev/null \
            | grep -E '^ +[0-9.]+%' | head -n 5
        echo
        echo "-- top $TOP by self time"
        perf report -i "$data" --no-children --sort symbol --stdio -g none 2>/dev/null \
            | grep -E '^ +[0-9.]+%' | head -n "$TOP" | cut -c1-150
        echo
        echo "-- top $TOP by inclusive time (user-space frames)"
        perf report -i "$data" --children --sort symbol --stdio -g none 2>/dev/null \
            | grep -E '^ +[0-9.]+%' | grep -v '\[k\]' | grep -v -E 'tokio::runtime::(task|scheduler|context|blocking)|std::sys|start_thread|clone3|FnOnce|__rust_begin' \
            | head -n "$TOP" | cut -c1-150
        echo
    } > "$out/$name.summary.txt"
    set -o pipefail
    cat "$out/$name.summary.txt"
done
ln -sfn "$out" "$repo/bench/out/profile-latest"
echo "[profile] flamegraphs and summaries in $out" >&2
