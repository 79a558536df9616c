"""Reference computations with Hugging Face transformers (+ peft) for peftrain's parity tests.

Subcommands:
  tiny     write a tiny RoBERTa/BERT classifier (real vocab size, random weights) as safetensors
  forward  logits, loss and the gradient of every parameter for a padded batch
  head     save an all-MiniLM-L6-v2 classifier whose new head is seeded, plus logits on a batch
"""
import argparse
import json
import os
import sys

import torch
from safetensors.torch import save_file


def tiny(args):
    from transformers import BertConfig, BertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(args.seed)
    common = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        hidden_dropout_prob=args.dropout,
        attention_probs_dropout_prob=args.dropout,
        num_labels=args.num_labels,
        hidden_act=args.act,
    )
    if args.regression:
        common["problem_type"] = "regression"
    if args.family == "roberta":
        cfg = RobertaConfig(vocab_size=50265, max_position_embeddings=130, type_vocab_size=1,
                            pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5, **common)
        model = RobertaForSequenceClassification(cfg)
    else:
        cfg = BertConfig(vocab_size=30522, max_position_embeddings=128, type_vocab_size=2,
                         pad_token_id=0, layer_norm_eps=1e-12, **common)
        model = BertForSequenceClassification(cfg)
    # Perturb every parameter (LayerNorm weights included) so that a parameter that is not
    # loaded, or loaded under the wrong name, shows in the logits.
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * args.scale)
    model.save_pretrained(args.out, safe_serialization=True)
    if args.bin:
        # The pickled format torch.save writes (pytorch_model.bin), instead of safetensors.
        os.remove(os.path.join(args.out, "model.safetensors"))
        # As transformers 4 wrote it with save_pretrained(safe_serialization=False): a plain dict
        # per shard. (torch.save of an OrderedDict state_dict is not readable by libtorch.)
        torch.save(dict(model.state_dict()), os.path.join(args.out, "pytorch_model.bin"))
    if args.base_only:
        # A base checkpoint: encoder keys without the family prefix, no task head.
        from safetensors.torch import load_file
        path = os.path.join(args.out, "model.safetensors")
        sd = load_file(path)
        prefix = args.family + "."
        base = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        save_file(base, path, metadata={"format": "pt"})


def corrupt(args):
    """Damage a checkpoint: drop a tensor or give it the wrong shape."""
    from safetensors.torch import load_file

    path = os.path.join(args.model, "model.safetensors")
    sd = load_file(path)
    if args.mode == "drop":
        del sd[args.tensor]
    elif args.mode == "shape":
        sd[args.tensor] = sd[args.tensor][..., :-1].contiguous()
    elif args.mode == "nan":
        sd[args.tensor] = torch.full_like(sd[args.tensor], float("nan"))
    else:
        # A non-float dtype under a weight's name: int32, bool, or int64 holding 2^62.
        t = sd[args.tensor]
        sd[args.tensor] = {
            "int32": lambda: torch.ones_like(t, dtype=torch.int32),
            "bool": lambda: torch.ones_like(t, dtype=torch.bool),
            "int64": lambda: torch.full_like(t, 2**62, dtype=torch.int64),
        }[args.mode]()
    save_file(sd, path, metadata={"format": "pt"})


def params(args):
    """peft's trainable and all-parameter counts of a method on the model a config.json describes."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    cfg = AutoConfig.from_pretrained(args.config, num_labels=2)
    model = AutoModelForSequenceClassification.from_config(cfg)
    if args.method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=args.lora_r, lora_alpha=16,
                                                 target_modules=args.lora_targets.split(",")))
        trainable, total = model.get_nb_trainable_parameters()
    elif args.method == "ia3":
        from peft import IA3Config, TaskType, get_peft_model

        model = get_peft_model(model, IA3Config(task_type=TaskType.SEQ_CLS))
        trainable, total = model.get_nb_trainable_parameters()
    else:
        for name, p in model.named_parameters():
            head = name.startswith("classifier.")
            p.requires_grad = (args.method == "full" or name.endswith(".bias")
                               or (args.method == "bitfit" and head))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
    print(json.dumps({"trainable": trainable, "all": total}))


def load_batch(path):
    with open(path) as f:
        b = json.load(f)
    out = {
        "input_ids": torch.tensor(b["input_ids"], dtype=torch.long),
        "attention_mask": torch.tensor(b["attention_mask"], dtype=torch.long),
    }
    if b.get("token_type_ids") is not None:
        out["token_type_ids"] = torch.tensor(b["token_type_ids"], dtype=torch.long)
    labels = torch.tensor(b["labels"], dtype=torch.long) if b.get("labels") is not None else None
    return out, labels


def forward(args):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2)
    if args.eval:
        model.eval()
    else:
        model.train()
    inputs, labels = load_batch(args.batch)
    out = model(**inputs, labels=labels)
    tensors = {"logits": out.logits.detach().contiguous()}
    if labels is not None:
        out.loss.backward()
        tensors["loss"] = out.loss.detach().reshape(1)
        for name, p in model.named_parameters():
            if p.grad is not None:
                tensors["grad." + name] = p.grad.detach().contiguous()
    save_file(tensors, args.out)


def head(args):
    """all-MiniLM-L6-v2 with a classification head newly initialised from a seed."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2)
    model.eval()
    model.save_pretrained(args.out, safe_serialization=True)
    inputs, _ = load_batch(args.batch)
    with torch.no_grad():
        logits = model(**inputs).logits
    save_file({"logits": logits.contiguous()}, args.logits)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tiny")
    t.add_argument("--family", choices=["roberta", "bert"], required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--dropout", type=float, default=0.0)
    t.add_argument("--scale", type=float, default=0.05)
    t.add_argument("--act", default="gelu")
    t.add_argument("--base-only", action="store_true")
    t.add_argument("--num-labels", type=int, default=2)
    t.add_argument("--regression", action="store_true", help="one output, problem_type regression")
    t.add_argument("--bin", action="store_true")
    f = sub.add_parser("forward")
    f.add_argument("--model", required=True)
    f.add_argument("--batch", required=True)
    f.add_argument("--out", required=True)
    f.add_argument("--eval", action="store_true")
    c = sub.add_parser("corrupt")
    c.add_argument("--model", required=True)
    c.add_argument("--tensor", required=True)
    c.add_argument("--mode", choices=["drop", "shape", "nan", "int32", "bool", "int64"], required=True)
    pc = sub.add_parser("params")
    pc.add_argument("--config", required=True)
    pc.add_argument("--method", choices=["full", "bitfit", "bitfit-bias-only", "lora", "ia3"], required=True)
    pc.add_argument("--lora-r", type=int, default=8)
    pc.add_argument("--lora-targets", default="query,value")
    h = sub.add_parser("head")
    h.add_argument("--model", required=True)
    h.add_argument("--seed", type=int, default=0)
    h.add_argument("--out", required=True)
    h.add_argument("--batch", required=True)
    h.add_argument("--logits", required=True)
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    {"tiny": tiny, "forward": forward, "head": head, "corrupt": corrupt, "params": params}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
