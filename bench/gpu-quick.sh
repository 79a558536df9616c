#!/usr/bin/env bash
# A short side-by-side on the GPU (what fits a few minutes of device time): peftrain LoRA at
# fp32 and HF Trainer + peft LoRA at fp32 and bf16, roberta-base shape, 300 steps of 16, with
# peftrain's per-step breakdown (worker compute vs the whole step as the coordinator sees it).
set -uo pipefail
D=${D:-.device}
PY=${PY:-python3}
export LD_LIBRARY_PATH="$($PY -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export PEFTRAIN_WORKER_BIN="$D/bin/peftrain-worker" RUST_LOG=warn HF_HUB_OFFLINE=1
if ls "$D"/whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$D"/whl/*.whl && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name --format=csv,noheader
./"$D"/bin/peftrain train --model "$D/roberta" --random-weights --glue-dir "$D/glue" --task sst2 --device cuda --workers 1 \
  --batch-size 16 --quiet --method lora --base-dtype fp32 --max-steps 300 --logging-steps 50 --eval-limit 64 --output-dir /tmp/q --overwrite-output-dir > /tmp/q.log 2>&1
$PY - <<'PYEOF'
import json
ev = [json.loads(l) for l in open("/tmp/q/metrics.jsonl")]
logs = [e for e in ev if "loss" in e][1:]
ms = sum(e["step_ms_window"] for e in logs); steps = 50 * len(logs)
print(f"peftrain lora fp32: {16 * steps / (ms / 1000):.1f} samples/s, {ms / steps:.2f} ms/step; worker compute (fwd+bwd) of the last logged step {logs[-1]['compute_ms']:.2f} ms")
PYEOF
for p in fp32 bf16; do timeout 100 $PY bench/hf_gpu.py --roberta "$D/roberta" --tsv "$D/glue/SST-2/train.tsv" --steps 300 --precision $p 2>/dev/null | tail -1; done
