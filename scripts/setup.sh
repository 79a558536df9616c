#!/usr/bin/env bash
# Set-up on a fresh machine, idempotent and quick when already done: a .venv with torch 2.11.0
# (libtorch for tch) and the reference stack, then the release binaries.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$PEFTRAIN_ROOT"

PYTHON_BIN="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON_BIN --version)"
  "$PYTHON_BIN" -m venv .venv
fi
stamp=.venv/.peftrain-requirements
if ! cmp -s scripts/requirements.txt "$stamp"; then
  echo "setup: installing scripts/requirements.txt into .venv (torch pulls ~4.7 GB of CUDA wheels; that is normal)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r scripts/requirements.txt
  cp scripts/requirements.txt "$stamp"
fi
echo "setup: building release binaries"
cargo build --release --workspace --bins
