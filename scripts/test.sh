#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what the tests need, then format,
# lints, and every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
