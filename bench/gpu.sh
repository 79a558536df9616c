#!/usr/bin/env bash
# GPU figures (issue 7, point 4), run on a GPU machine that has Python with torch 2.11.0 and
# transformers but no Rust: the release binaries, SST-2 and the roberta-base tokenizer/config
# travel in .device/ (bench/gpu-pack.sh makes it). roberta-base has random weights of the real
# shape (--random-weights: built on the worker, nothing to carry). Writes results under $OUT.
set -uo pipefail
D=${D:-.device}
OUT=${OUT:-/tmp/peftrain-gpu}
mkdir -p "$OUT"
PY=${PY:-python3}
export LD_LIBRARY_PATH="$($PY -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export PEFTRAIN_WORKER_BIN="$D/bin/peftrain-worker" RUST_LOG=warn HF_HUB_OFFLINE=1
if ls "$D"/whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$D"/whl/*.whl && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
common=(--model "$D/roberta" --random-weights --glue-dir "$D/glue" --task sst2 --device cuda --workers 1 --batch-size 16 --quiet)

# 1. Throughput per method: 600 steps each (the first ones warm cuBLAS up), bf16 and fp32.
for m in lora bitfit full; do
  for dt in bf16 fp32; do
    ./"$D"/bin/peftrain train "${common[@]}" --method "$m" --base-dtype "$dt" --max-steps 600 \
      --logging-steps 100 --eval-limit 256 --output-dir "$OUT/$m-$dt" --overwrite-output-dir > "$OUT/$m-$dt.log" 2>&1 \
      || { echo "FAILED $m $dt"; tail -5 "$OUT/$m-$dt.log"; }
    $PY - "$OUT/$m-$dt" "$m" "$dt" <<'PYEOF'
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl")]
logs = [e for e in ev if "loss" in e][1:]  # the first 100 steps are warm-up
ms = sum(e["step_ms_window"] for e in logs); steps = 100 * len(logs)
print(f"{sys.argv[2]:6} {sys.argv[3]}: {16 * steps / (ms / 1000):8.1f} samples/s  ({ms / steps:.2f} ms/step, peak worker RSS {max(e['worker_peak_rss_bytes'] for e in logs) / 2**30:.2f} GiB)")
PYEOF
  done
done | tee "$OUT/throughput.txt"

# 2. The seed's job: LoRA, SST-2, 3 epochs of batch 16 (12,627 steps), dev evaluation after
#    each epoch; the seed's HF Trainer + peft took 1,923 s.
start=$(date +%s.%N)
./"$D"/bin/peftrain train "${common[@]}" --method lora --base-dtype bf16 --epochs 3 --logging-steps 1000 \
  --output-dir "$OUT/lora-3epochs" --overwrite-output-dir > "$OUT/lora-3epochs.log" 2>&1 || { echo "FAILED 3 epochs"; tail -5 "$OUT/lora-3epochs.log"; }
end=$(date +%s.%N)
echo "LoRA SST-2 3 epochs: wall $(echo "$end - $start" | bc) s (process start to exit); $(grep -o "'train_runtime': [0-9.]*" "$OUT/lora-3epochs.log")" | tee "$OUT/epochs.txt"
grep -E "^[0-9]+ " "$OUT/lora-3epochs.log" | tail -3 | tee -a "$OUT/epochs.txt"

# 3. HF Trainer + peft on the same GPU, same model shape, LoRA, 600 steps (side by side).
if [ -f bench/hf_gpu.py ]; then
  $PY bench/hf_gpu.py --roberta "$D/roberta" --tsv "$D/glue/SST-2/train.tsv" --steps 600 2>"$OUT/hf.log" | tee "$OUT/hf.txt"
fi
