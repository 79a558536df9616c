"""One training run of the reference stack (Hugging Face Trainer + peft) with the settings
bench/speed.py gives peftrain: same model, GLUE task, method, batch, learning rate, steps, max
length, train/eval rows. Prints one JSON line with train samples/s, dev accuracy, peak RSS and
model FLOP/s.

    python bench/hf_trainer.py --model DIR --task sst2 --method lora --steps 60 --lr 5e-4
    python bench/hf_trainer.py --random-roberta --task sst2 --method full --steps 10 --lr 2e-5

Methods: full (every parameter), bitfit (parameters named *bias plus the classifier head),
lora (peft LoraConfig(SEQ_CLS, r=8, alpha=16, dropout=0.1, query/value); the head trains as
modules_to_save). --random-roberta builds RobertaForSequenceClassification from
$ROBERTA_DIR/config.json with random weights (speed only; its accuracy means nothing).
"""
import argparse
import json
import os
import resource
import sys
import time


def read_glue(path, task, limit):
    """GLUE TSV with a plain split on tabs (no quoting), as peftrain reads it."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    header = lines[0].split("\t")
    rows = [l.split("\t") for l in lines[1:] if l.strip()]
    if limit:
        rows = rows[:limit]
    if task == "sst2":
        texts = [(r[header.index("sentence")],) for r in rows]
        labels = [int(r[header.index("label")]) for r in rows]
    else:  # rte: label ids in the order of the HF glue dataset
        names = ["entailment", "not_entailment"]
        texts = [(r[header.index("sentence1")], r[header.index("sentence2")]) for r in rows]
        labels = [names.index(r[header.index("label")].strip()) for r in rows]
    return texts, labels


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="model directory (config, weights, tokenizer)")
    src.add_argument("--random-roberta", action="store_true", help="roberta-base shape, random weights")
    ap.add_argument("--tokenizer", help="tokenizer directory (default: the model dir, or $ROBERTA_DIR)")
    ap.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR", "../shared/data/glue"))
    ap.add_argument("--task", choices=["sst2", "rte"], default="sst2")
    ap.add_argument("--method", choices=["full", "bitfit", "lora"], default="lora")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--eval-batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--train-limit", type=int, default=0, help="first N training rows (0: all)")
    ap.add_argument("--eval-limit", type=int, default=0, help="first N dev rows (0: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--bf16", action="store_true", help="Trainer's bf16=True (CPU autocast); off in the reference")
    ap.add_argument("--out", help="also write the JSON here")
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, RobertaConfig,
                              RobertaForSequenceClassification, Trainer, TrainingArguments)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(a.seed)
    roberta_dir = os.environ.get("ROBERTA_DIR", "../shared/models/roberta-base")
    t_load = time.perf_counter()
    if a.random_roberta:
        config = RobertaConfig.from_pretrained(roberta_dir, num_labels=2)
        model = RobertaForSequenceClassification(config)
        tok_dir = a.tokenizer or roberta_dir
        name = "roberta-base (random)"
    else:
        model = AutoModelForSequenceClassification.from_pretrained(a.model, num_labels=2)
        tok_dir = a.tokenizer or a.model
        name = os.path.basename(os.path.normpath(a.model))
    # Trainer's total_flos definition: 6 * tokens * non-embedding parameters of the model.
    base_params = model.num_parameters()
    base_non_embedding = model.num_parameters(exclude_embeddings=True)

    if a.method == "bitfit":
        head = "classifier."
        for n, p in model.named_parameters():
            p.requires_grad = n.endswith("bias") or n.startswith(head)
    elif a.method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.1,
                                                 target_modules=["query", "value"]))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    tok = AutoTokenizer.from_pretrained(tok_dir)
    tsv = "SST-2" if a.task == "sst2" else "RTE"

    def encode(split, limit):
        texts, labels = read_glue(os.path.join(a.glue_dir, tsv, split + ".tsv"), a.task, limit)
        cols = list(zip(*texts))
        enc = tok(*cols, truncation=True, max_length=a.max_length)
        return [{**{k: enc[k][i] for k in enc.keys()}, "labels": labels[i]} for i in range(len(labels))]

    train = encode("train", a.train_limit)
    dev = encode("dev", a.eval_limit)
    load_s = time.perf_counter() - t_load

    pad = DataCollatorWithPadding(tok)
    seen = {"samples": 0, "padded_tokens": 0, "real_tokens": 0, "counting": True}

    def collate(features):
        batch = pad(features)
        if seen["counting"]:
            seen["samples"] += batch["input_ids"].shape[0]
            seen["padded_tokens"] += batch["input_ids"].numel()
            seen["real_tokens"] += int(batch["attention_mask"].sum())
        return batch

    def accuracy(p):
        return {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())}

    args = TrainingArguments(
        output_dir=os.path.join(os.environ.get("TMPDIR", "/tmp"), f"hf_trainer_{os.getpid()}"),
        per_device_train_batch_size=a.batch_size, per_device_eval_batch_size=a.eval_batch_size,
        max_steps=a.steps, learning_rate=a.lr, warmup_steps=0.06, weight_decay=0.0, lr_scheduler_type="linear",
        logging_steps=a.steps, eval_strategy="no", save_strategy="no", report_to=[], use_cpu=True,
        dataloader_num_workers=0, seed=a.seed, max_grad_norm=1.0, label_names=["labels"], disable_tqdm=True,
        bf16=a.bf16)
    trainer = Trainer(model=model, args=args, data_collator=collate, train_dataset=train, eval_dataset=dev,
                      compute_metrics=accuracy)
    metrics = trainer.train().metrics
    seen["counting"] = False
    runtime = metrics["train_runtime"]  # the training loop only: model loading and tokenization excluded
    total_flos = trainer.state.total_flos
    t_eval = time.perf_counter()
    ev = trainer.evaluate()
    eval_s = time.perf_counter() - t_eval
    result = {
        "stack": "hf", "model": name, "task": a.task, "method": a.method, "steps": a.steps, "batch_size": a.batch_size,
        "lr": a.lr, "threads": a.threads, "bf16": a.bf16, "optim": str(args.optim), "warmup_steps": args.get_warmup_steps(a.steps), "train_rows": len(train), "eval_rows": len(dev),
        "train_runtime": runtime,
        "samples_per_second": a.steps * a.batch_size / runtime,
        "train_loss": metrics.get("train_loss"),
        "eval_accuracy": ev.get("eval_accuracy"), "eval_loss": ev.get("eval_loss"), "eval_seconds": eval_s,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "total_flos": total_flos, "flops_per_second": total_flos / runtime,
        "mean_padded_length": seen["padded_tokens"] / max(1, seen["samples"]),
        "mean_real_length": seen["real_tokens"] / max(1, seen["samples"]),
        "params": base_params, "non_embedding_params": base_non_embedding, "trainable_params": trainable,
        "load_seconds": load_s,
    }
    line = json.dumps(result)
    if a.out:
        with open(a.out, "w") as f:
            f.write(line + "\n")
    print(line)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
