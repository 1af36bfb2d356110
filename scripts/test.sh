#!/usr/bin/env bash
# Everything CI checks, in order: formatting, lints, generated files, then every
# test (unit, in-process router, real clients, conformance, crash, TLS).
#
# Needs: Rust stable (rustfmt, clippy), Go (builds the test tools once, cached
# under ~/.cache/privreg), and Debian's skopeo, containerd, runc, docker-registry,
# curl, python3, and for the real node containernetworking-plugins, iptables,
# iproute2, util-linux. `.ci/run` installs the Debian packages first.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

step "test tools (crane, oras, OCI conformance suite, helm, SeaweedFS; Kubernetes binaries)"
eval "$(scripts/test-tools.sh --env)"
eval "$(scripts/k8s-tools.sh --env)"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

step "container image (scripts/image.py: release build, OCI archive)"
# tests/realnode.rs imports it into a real node's containerd.
python3 scripts/image.py

step "cargo test"
# Missing tools fail tests instead of skipping them.
export PRIVREG_REQUIRE_TOOLS=1
# Plain `cargo test`: lib, bins and tests/ (the benchmark is `cargo bench`, not a test).
cargo test --locked -- --nocapture 2>&1 | tee target/test-output.log
