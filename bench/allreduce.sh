#!/usr/bin/env bash
# The all-reduce alone: N worker processes in their collective-only mode, for N = 2..32, the
# gradients of BitFit, LoRA and full fine-tuning, and 0 / 0.5 / 2 ms links (a delaying proxy in
# front of every worker); prints the table and the alpha-beta fit, writes
# bench/results/allreduce.json. Bounded by --budget (default 1500 s). See bench/allreduce.py.
#   ./bench/allreduce.sh [--workers 2,4,8,16,32] [--latencies 0,0.5,2] [--budget 1500]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
"$PEFTRAIN_ROOT/scripts/setup.sh" >/dev/null
exec timeout 3600 "$PEFTRAIN_PYTHON" "$PEFTRAIN_ROOT/bench/allreduce.py" --worker "$PEFTRAIN_ROOT/target/release/peftrain-worker" \
  --proxy "$PEFTRAIN_ROOT/target/release/peftrain-delay-proxy" --json "$PEFTRAIN_ROOT/bench/results/allreduce.json" "$@"
