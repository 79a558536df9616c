#!/usr/bin/env bash
# peftrain vs HF Trainer + peft: samples/s, peak RSS, dev accuracy, FLOP/s; see bench/speed.py.
#   ./bench/speed.sh --quick     # a few minutes
#   ./bench/speed.sh             # the full grid, about an hour on 2 cores
# PEFTRAIN_SKIP_SETUP=1 skips scripts/setup.sh (venv and release build) when both are known fresh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
if [ -z "${PEFTRAIN_SKIP_SETUP:-}" ]; then
  "$PEFTRAIN_ROOT/scripts/setup.sh" >/dev/null
fi
exec "$PEFTRAIN_PYTHON" "$PEFTRAIN_ROOT/bench/speed.py" "$@"
