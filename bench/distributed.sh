#!/usr/bin/env bash
# peftrain vs PyTorch DDP (gloo, torchrun) on all-MiniLM-L6-v2 LoRA, SST-2; see bench/distributed.py.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
"$PEFTRAIN_ROOT/scripts/setup.sh" >/dev/null
exec "$PEFTRAIN_PYTHON" "$PEFTRAIN_ROOT/bench/distributed.py" "$@"
