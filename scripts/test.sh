#!/usr/bin/env bash
# Runs every check and test of sluice: formatting, clippy, unit tests and the end-to-end tests in
# network namespaces. Installs what the tests need first (scripts/install-test-deps.sh). Needs root
# (network namespaces, iptables). This is exactly what CI runs (.ci/run).
#
# Extra arguments go to `cargo nextest run`, e.g. `scripts/test.sh -p sluice-e2e` or
# `scripts/test.sh -E 'test(timeout)'`.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh

export SLUICE_TEST_VENV="${SLUICE_TEST_VENV:-$PWD/.venv}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Incremental compilation data is written for every crate of every test binary (tens of GB for
# this workspace) and a run from a clean clone never reuses it; without it the whole build fits
# on a small disk (CI once ran out of space).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

# The end-to-end tests run target/debug/sluice; build it explicitly (a test crate cannot depend on
# another package's binary).
step "cargo build -p sluice"
cargo build -p sluice

profile=default
if [ "${CI:-}" = "true" ]; then profile=ci; fi
step "cargo nextest run --workspace (profile $profile)"
cargo nextest run --workspace --profile "$profile" "$@"
