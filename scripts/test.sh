#!/usr/bin/env bash
# The whole test suite, set-up included: unit tests, parity against HF transformers + peft,
# and end-to-end runs of real coordinator and worker processes.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$PEFTRAIN_ROOT/scripts/setup.sh"
cd "$PEFTRAIN_ROOT"
# Hygiene first, as the Rust ecosystem expects of a workspace: rustfmt's layout (rustfmt.toml)
# and no clippy warning. `--release` shares the build scripts' outputs (torch-sys) with the
# test build below, so the lint pass costs a check build, not a second libtorch probe.
cargo fmt --all --check
cargo clippy --release --workspace --all-targets -- -D warnings
cargo test --release --workspace --no-fail-fast "$@"
