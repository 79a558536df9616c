"""HF Trainer + peft LoRA on the GPU with roberta-base's shape (random weights), SST-2, batch
16, bf16 autocast: the reference stack's throughput beside peftrain's in bench/gpu.sh."""
import argparse
import json
import time

import torch
from transformers import (DataCollatorWithPadding, RobertaConfig, RobertaForSequenceClassification, RobertaTokenizerFast,
                          Trainer, TrainingArguments)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--roberta", required=True)
    ap.add_argument("--tsv", required=True)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    a = ap.parse_args()
    try:
        from peft import LoraConfig, TaskType, get_peft_model
    except ImportError:
        print(json.dumps({"error": "peft not installed"}))
        return
    tok = RobertaTokenizerFast.from_pretrained(a.roberta)
    rows = [l.rstrip("\n").split("\t") for l in open(a.tsv, encoding="utf-8")][1:]
    rows = rows[: 16 * a.steps]
    enc = tok([r[0] for r in rows], truncation=True, max_length=128)
    data = [{"input_ids": i, "attention_mask": m, "labels": int(r[1])} for i, m, r in zip(enc["input_ids"], enc["attention_mask"], rows)]
    model = RobertaForSequenceClassification(RobertaConfig.from_pretrained(a.roberta, num_labels=2))
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["query", "value"]))
    args = TrainingArguments(output_dir="/tmp/hf-gpu", per_device_train_batch_size=16, max_steps=a.steps, learning_rate=5e-4,
                             warmup_steps=max(1, int(0.06 * a.steps)), logging_steps=a.steps, eval_strategy="no", save_strategy="no", report_to=[], bf16=a.precision == "bf16",
                             dataloader_num_workers=0, seed=42)
    tr = Trainer(model=model, args=args, train_dataset=data, data_collator=DataCollatorWithPadding(tok))
    m = tr.train().metrics
    print(json.dumps({"stack": f"HF Trainer + peft ({a.precision})", "samples_per_second": 16 * a.steps / m["train_runtime"],
                      "train_runtime": m["train_runtime"], "device": torch.cuda.get_device_name(0)}))


if __name__ == "__main__":
    main()
