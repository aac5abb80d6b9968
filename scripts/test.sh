#!/usr/bin/env bash
# Runs every check CI runs: formatting, clippy, and the whole test suite
# (unit tests, the fake Discord's tests, and end-to-end tests that drive the
# real proxy binary with raw websocket clients, twilight-gateway and serenity).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --all-targets
