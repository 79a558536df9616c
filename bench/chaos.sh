#!/usr/bin/env bash
# The chaos bench: a 3-worker run of the tiny model, undisturbed and then with faults injected
# at random (SIGKILL, SIGSTOP/SIGCONT, SIGTERM of a worker, SIGTERM of the coordinator); prints
# faults survived, time lost per fault by kind and throughput retained. See bench/chaos.py.
#   ./bench/chaos.sh [--mtbf 1.0] [--max-steps 3000] [--json bench/results/chaos.json]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
"$PEFTRAIN_ROOT/scripts/setup.sh" >/dev/null
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$PEFTRAIN_PYTHON" "$PEFTRAIN_ROOT/tests/reference/hf_model.py" tiny --family roberta --out "$work/model" --seed 13 >/dev/null 2>&1
"$PEFTRAIN_PYTHON" "$PEFTRAIN_ROOT/bench/chaos.py" --bin "$PEFTRAIN_ROOT/target/release/peftrain" --model "$work/model" \
  --tokenizer "$ROBERTA_DIR" --glue "$GLUE_DIR" --work "$work/runs" "$@"
