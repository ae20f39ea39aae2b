#!/usr/bin/env bash
# Builds the sluice binary statically linked: one executable that needs nothing from the
# filesystem it runs on (no libc, no loader), for the `FROM scratch` image (Dockerfile) and for
# copying onto any Linux host of the same architecture.
#
#   scripts/build-static.sh [--profile PROFILE] [--out DIR]
#
#   --profile  cargo profile (default release; the tests use dev, bench-fast is release code
#              without the fat-LTO link)
#   --out      where to write `sluice` (default target/PROFILE-DIR/static/, e.g.
#              target/release/static/sluice)
#
# Prints the binary's path as its last line. Outside a git checkout, set SLUICE_COMMIT to the
# commit (the Dockerfile does): crates/sluice/build.rs embeds it for `sluice version`.
#
# How: glibc's static libraries (`-C target-feature=+crt-static`: a static-pie executable). Only
# the final link needs the flag, so it goes to the sluice binary alone (`cargo rustc -- …`): every
# dependency is the one a normal build of the same profile compiled, shared in target/, and only
# the binary's own crate is compiled again, as a unit of its own (the extra flags give it its own
# hash, so the normal build's binary and incremental state are left alone; seconds in dev once
# built). `--emit link=DIR/sluice` writes the result to DIR instead of target/PROFILE-DIR/, where
# the normal build's sluice stays (the end-to-end tests run it meanwhile).
#
# Why glibc and not musl: musl needs the *-linux-musl standard library, one more rustup download
# that a machine reaching only package registries cannot count on. glibc's static build resolves
# names from /etc/hosts and /etc/resolv.conf (search domains included) by itself, with no NSS
# module to load, which is all sluice needs from it.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '6,11p' "$0" | sed 's/^# \{0,1\}//'; }
die() { printf 'build-static: %s\n' "$*" >&2; exit 2; }

profile=release
out=
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) [ $# -ge 2 ] || die "--profile needs a value"; profile=$2; shift 2 ;;
        --profile=*) profile=${1#*=}; shift ;;
        --out) [ $# -ge 2 ] || die "--out needs a value"; out=$2; shift 2 ;;
        --out=*) out=${1#*=}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

# cargo's directory for a profile: dev and test build into debug/, release and bench into release/.
case "$profile" in
    dev|test) dir=debug ;;
    release|bench) dir=release ;;
    *) dir=$profile ;;
esac
# Where cargo builds (CARGO_TARGET_DIR, a config's build.target-dir, or target/).
target_dir=$(cargo metadata --format-version 1 --no-deps \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -n "$target_dir" ] || die "cannot find cargo's target directory (cargo metadata)"
out=${out:-$target_dir/$dir/static}
mkdir -p "$out"
out=$(cd "$out" && pwd)
bin="$out/sluice"
rm -f "$bin"

cargo rustc --locked -p sluice --bin sluice --profile "$profile" \
    -- -C target-feature=+crt-static --emit "link=$bin" >&2
[ -x "$bin" ] || die "cargo finished but $bin is missing"

# A static executable has no program interpreter (PT_INTERP) and needs no shared library.
if readelf --program-headers --wide "$bin" | grep -q 'INTERP'; then
    die "$bin asks for a program interpreter: it is not statically linked"
fi
if readelf --dynamic --wide "$bin" | grep -q '(NEEDED)'; then
    die "$bin needs shared libraries: $(readelf --dynamic --wide "$bin" | grep '(NEEDED)' | tr -s ' ')"
fi
echo "$bin"
