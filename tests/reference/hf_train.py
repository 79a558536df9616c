"""A reference training loop written with Hugging Face transformers + peft + torch.optim, for
peftrain's trajectory-parity test: the same model, data order, batches, schedule, clipping and
AdamW as the Trainer would use, printing the per-step training losses as JSON.

Subcommands:
  lora-init  write peft's initial LoRA adapter (A Kaiming-uniform, B zero, head copied) so
             both sides start from the same weights
  ia3-init   the same for peft's IA3 (vectors of ones, head copied); --perturb S draws the
             vectors as 1 + S * N(0, 1) instead, an adapter that is not the identity
  train      run the loop and print {"losses": [...], "final": {name: [values]}}
"""
import argparse
import json
import os

import torch
from safetensors.torch import save_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.optimization import get_linear_schedule_with_warmup


def read_rows(path, limit):
    """SST-2's `sentence`/`label`, or STS-B's `sentence1`/`sentence2`/`score` (a regression)."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    header = lines[0].rstrip("\r").split("\t")
    rows = [r.rstrip("\r").split("\t") for r in lines[1:] if r.strip()][:limit]
    if "score" in header:
        a, b, l = header.index("sentence1"), header.index("sentence2"), header.index("score")
        return [(r[a], r[b]) for r in rows], [float(r[l]) for r in rows]
    s, l = header.index("sentence"), header.index("label")
    return [r[s] for r in rows], [int(r[l]) for r in rows]


def load_model(a):
    kw = {"problem_type": "regression"} if a.num_labels == 1 else {}
    return AutoModelForSequenceClassification.from_pretrained(a.model, num_labels=a.num_labels, **kw)


def lora_config(a):
    from peft import LoraConfig, TaskType

    return LoraConfig(task_type=TaskType.SEQ_CLS, r=a.lora_r, lora_alpha=a.lora_alpha, lora_dropout=0.0,
                      target_modules=a.lora_targets.split(","))


def ia3_config(a):
    from peft import IA3Config, TaskType

    # peft's defaults for RoBERTa/BERT: key, value, output.dense; output.dense feed-forward.
    return IA3Config(task_type=TaskType.SEQ_CLS)


def build(a):
    model = load_model(a)
    if a.method in ("lora", "ia3"):
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, a.adapter, is_trainable=True)
    elif a.method == "bitfit":
        for n, p in model.named_parameters():
            p.requires_grad = n.endswith("bias") or (a.scope == "all" and n.startswith("classifier."))
    return model


def lora_init(a):
    from peft import get_peft_model

    torch.manual_seed(a.seed)
    model = load_model(a)
    model = get_peft_model(model, lora_config(a))
    model.save_pretrained(a.out)


def ia3_init(a):
    from peft import get_peft_model

    torch.manual_seed(a.seed)
    model = AutoModelForSequenceClassification.from_pretrained(a.model, num_labels=2)
    model = get_peft_model(model, ia3_config(a))
    if a.perturb:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "ia3_l" in n:
                    p.copy_(1.0 + a.perturb * torch.randn_like(p))
    model.save_pretrained(a.out)


def train(a):
    torch.manual_seed(0)
    model = build(a)
    model.train()
    tok = AutoTokenizer.from_pretrained(a.tokenizer)
    texts, labels = read_rows(a.tsv, a.batch_size * a.steps)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    # The Trainer's grouping: no weight decay on biases and LayerNorm weights.
    decay = [p for n, p in params if not (n.endswith("bias") or "LayerNorm" in n)]
    no_decay = [p for n, p in params if n.endswith("bias") or "LayerNorm" in n]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": a.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=a.lr, betas=(0.9, 0.999), eps=1e-8, foreach=False,
    )
    sched = get_linear_schedule_with_warmup(opt, a.warmup_steps, a.steps)
    losses, norms = [], []
    total_flos = 0.0
    for step in range(a.steps):
        i = step * a.batch_size
        batch = texts[i:i + a.batch_size]
        if isinstance(batch[0], tuple):
            enc = tok([t[0] for t in batch], [t[1] for t in batch], truncation=True, max_length=a.max_length, padding=True, return_tensors="pt")
        else:
            enc = tok(batch, truncation=True, max_length=a.max_length, padding=True, return_tensors="pt")
        y = torch.tensor(labels[i:i + a.batch_size])
        out = model(**enc, labels=y)
        # Trainer.floating_point_ops: 6 x input_ids.numel() x num_parameters(exclude_embeddings=True)
        total_flos += float(6 * enc["input_ids"].numel() * model.num_parameters(exclude_embeddings=True))
        opt.zero_grad()
        out.loss.backward()
        norm = torch.nn.utils.clip_grad_norm_([p for _, p in params], a.max_grad_norm)
        opt.step()
        sched.step()
        losses.append(out.loss.item())
        norms.append(norm.item())
    final = {}
    for n, p in params:
        key = (n.replace("base_model.model.", "").replace(".modules_to_save.default", "").replace(".default.", ".")
               .replace(".ia3_l.default", ".ia3_l"))
        final[key] = p.detach().flatten().tolist()
    if a.save_adapter:
        model.save_pretrained(a.save_adapter)
    print(json.dumps({"losses": losses, "grad_norms": norms, "total_flos": total_flos, "final": final}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["lora-init", "ia3-init", "train"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokenizer")
    ap.add_argument("--tsv")
    ap.add_argument("--method", default="full")
    ap.add_argument("--scope", default="all")
    ap.add_argument("--adapter")
    ap.add_argument("--out")
    ap.add_argument("--save-adapter", help="after training, save the peft adapter here (lora)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--warmup-steps", type=int, default=3)
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--lora-alpha", type=float, default=16)
    ap.add_argument("--lora-targets", default="query,value")
    ap.add_argument("--perturb", type=float, default=0.0)
    ap.add_argument("--num-labels", type=int, default=2, help="1: a regression (MSE), as STS-B")
    a = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    {"lora-init": lora_init, "ia3-init": ia3_init, "train": train}[a.cmd](a)


if __name__ == "__main__":
    main()
