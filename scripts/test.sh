#!/usr/bin/env bash
# The whole test suite, set-up included: unit tests, parity against HF transformers + peft,
# and end-to-end runs of real coordinator and worker processes.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$PEFTRAIN_ROOT/scripts/setup.sh"
cd "$PEFTRAIN_ROOT"
cargo test --release --workspace --no-fail-fast "$@"
