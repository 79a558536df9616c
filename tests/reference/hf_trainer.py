"""Hugging Face's Trainer itself (transformers + peft, TrainingArguments as a user writes them)
as the reference of a whole run, for the gradient-accumulation parity test: the same tiny
model, peft adapter, rows and schedule as peftrain, the data in file order (a sequential
sampler, peftrain's --no-shuffle), dropout 0. Prints {"losses": [per optimizer step],
"grad_norms": [...], "final": {name: [values]}} with peftrain's checkpoint keys.

    python hf_trainer.py --model M --tokenizer T --tsv train.tsv --adapter INIT --limit 60 \
        --per-device-train-batch-size 4 --gradient-accumulation-steps 2 --steps 30

Without `--adapter` the run is seeded as run_glue.py seeds it, for the seed-parity test:
`set_seed(--seed)`, then the model (its new head drawn), then peft's LoRA (`--method lora`,
drawn) or nothing more (`--method full`), and the Trainer's own shuffled sampler (`seed` in
TrainingArguments): every random draw is the Trainer's. `--lora-dropout` and a model with dropout
draw masks from the generator too (the Trainer seeds it again in its constructor), and
`--eval-tsv` evaluates at each epoch's end, whose iterator draws from it as well.
"""
import argparse
import json
import os
import sys
import tempfile

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from torch.utils.data import SequentialSampler
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments, set_seed
from transformers.utils import logging as hf_logging

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_train import read_rows  # noqa: E402  (the same rows the loop reference reads)


class InOrder(Trainer):
    """The Trainer with its training data in file order."""

    def _get_train_sampler(self, *args, **kwargs):
        return SequentialSampler(self.train_dataset)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--tsv", required=True)
    ap.add_argument("--adapter", help="peft's initial adapter, data in file order; without it: a seeded run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--method", choices=["lora", "full"], default="lora")
    ap.add_argument("--limit", type=int, required=True)
    ap.add_argument("--per-device-train-batch-size", type=int, default=4)
    ap.add_argument("--gradient-accumulation-steps", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--warmup-steps", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--lora-dropout", type=float, default=0.0)
    ap.add_argument("--eval-tsv", help="evaluate on its first 16 rows at each epoch's end (as peftrain's default)")
    a = ap.parse_args()
    hf_logging.set_verbosity_error()
    set_seed(a.seed)
    model = AutoModelForSequenceClassification.from_pretrained(a.model, num_labels=2)
    if a.adapter:
        model = PeftModel.from_pretrained(model, a.adapter, is_trainable=True)
    elif a.method == "lora":
        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=a.lora_dropout, target_modules=["query", "value"]))
    tok = AutoTokenizer.from_pretrained(a.tokenizer)
    texts, labels = read_rows(a.tsv, a.limit)
    enc = tok(texts, truncation=True, max_length=a.max_length)
    rows = [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "labels": labels[i]} for i in range(len(labels))]
    dev = None
    if a.eval_tsv:
        dev_texts, dev_labels = read_rows(a.eval_tsv, 16)
        dev_enc = tok(dev_texts, truncation=True, max_length=a.max_length)
        dev = [{"input_ids": dev_enc["input_ids"][i], "attention_mask": dev_enc["attention_mask"][i], "labels": dev_labels[i]} for i in range(len(dev_labels))]
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="hf_trainer_"), per_device_train_batch_size=a.per_device_train_batch_size,
        gradient_accumulation_steps=a.gradient_accumulation_steps, max_steps=a.steps, learning_rate=a.lr,
        weight_decay=a.weight_decay, warmup_steps=a.warmup_steps, lr_scheduler_type="linear", max_grad_norm=1.0,
        optim="adamw_torch", logging_steps=1, eval_strategy="epoch" if dev else "no", save_strategy="no", report_to=[], use_cpu=True,
        dataloader_num_workers=0, seed=a.seed, disable_tqdm=True)
    trainer = (InOrder if a.adapter else Trainer)(model=model, args=args, data_collator=DataCollatorWithPadding(tok), train_dataset=rows, eval_dataset=dev)
    # transformers 5.24 takes BERT's `**kwargs` for a loss that honours `num_items_in_batch`,
    # skips its division by the micro-batches, and BertForSequenceClassification's mean
    # cross-entropy ignores the count: accumulated gradients and logged losses come out
    # x gradient_accumulation_steps (huggingface/transformers#47688). Saying the model takes
    # no loss kwargs restores the Trainer's own normalisation (each micro-batch's mean over
    # the step's micro-batches), the one peftrain implements.
    trainer.model_accepts_loss_kwargs = False
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e and "step" in e]
    final = {}
    for n, p in model.named_parameters():
        if p.requires_grad:
            key = n.replace("base_model.model.", "").replace(".modules_to_save.default", "").replace(".default.", ".")
            final[key] = p.detach().flatten().tolist()
    print(json.dumps({"losses": [e["loss"] for e in logs], "grad_norms": [e.get("grad_norm") for e in logs], "final": final}))


if __name__ == "__main__":
    main()
