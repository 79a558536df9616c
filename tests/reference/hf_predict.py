"""Logits of the first rows of a GLUE TSV with a model + trained weights, through Hugging Face:
a peft adapter via PeftModel.from_pretrained, or peftrain's trainable.safetensors loaded into
the transformers model with load_state_dict (strict about names), or (--via card) the model
the "How to use" snippet of the adapter's README.md builds, run as written from the directory
that holds the adapter."""
import argparse
import json
import os

import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--adapter")
    ap.add_argument("--tsv", required=True)
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--via", choices=["peft", "state-dict", "merged", "card"], default="peft")
    ap.add_argument("--num-labels", type=int, default=2)
    ap.add_argument("--regression", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(2)
    kw = {"problem_type": "regression"} if a.regression else {}
    if a.via == "card":
        card = open(os.path.join(a.adapter, "README.md"), encoding="utf-8").read()
        code = card.split("```python\n", 1)[1].split("```", 1)[0]
        here = os.getcwd()
        os.chdir(os.path.dirname(os.path.abspath(a.adapter)))
        scope = {}
        exec(code, scope)
        os.chdir(here)
        model = scope["model"]
    elif a.via == "merged":
        # A merged checkpoint carries its own label count and names.
        model = AutoModelForSequenceClassification.from_pretrained(a.model)
        assert model.config.num_labels == a.num_labels, model.config.num_labels
    else:
        model = AutoModelForSequenceClassification.from_pretrained(a.model, num_labels=a.num_labels, **kw)
    if a.via in ("merged", "card"):
        pass  # --model is a merged checkpoint, or the card built the model: nothing else.
    elif a.via == "peft":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, a.adapter)
    else:
        sd = load_file(os.path.join(a.adapter, "trainable.safetensors"))
        missing, unexpected = model.load_state_dict(sd, strict=False)
        assert not unexpected, unexpected
    model.eval()
    tok = AutoTokenizer.from_pretrained(a.tokenizer)
    with open(a.tsv, encoding="utf-8") as f:
        lines = f.read().split("\n")
    header = lines[0].rstrip("\r").split("\t")
    rows = [l.rstrip("\r").split("\t") for l in lines[1:] if l.strip()][: a.limit]
    if "sentence" in header:
        enc = tok([r[header.index("sentence")] for r in rows], truncation=True, max_length=128, padding=True, return_tensors="pt")
    else:
        enc = tok([r[header.index("sentence1")] for r in rows], [r[header.index("sentence2")] for r in rows],
                  truncation=True, max_length=128, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
    print(json.dumps({"logits": logits.tolist(), "id2label": {str(k): v for k, v in model.config.id2label.items()}}))


if __name__ == "__main__":
    main()
