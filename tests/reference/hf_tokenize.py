"""Token ids of a GLUE split with Hugging Face's AutoTokenizer (the reference for peftrain's
tokenizer): reads the TSV itself (tab-separated, no quoting) and writes one id list per row."""
import argparse
import json
import os

from transformers import AutoTokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--tsv", required=True)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--out", required=True)
    ap.add_argument("--slow", action="store_true", help="build from vocab files, not tokenizer.json")
    a = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(a.tokenizer)
    with open(a.tsv, encoding="utf-8") as f:
        lines = f.read().split("\n")
    header = lines[0].rstrip("\r").split("\t")
    rows = [l.rstrip("\r").split("\t") for l in lines[1:] if l.strip()]
    if "sentence" in header:
        c = header.index("sentence")
        enc = tok([r[c] for r in rows], truncation=True, max_length=a.max_length)
    else:
        c1, c2 = header.index("sentence1"), header.index("sentence2")
        enc = tok([r[c1] for r in rows], [r[c2] for r in rows], truncation=True, max_length=a.max_length)
    out = {"input_ids": enc["input_ids"], "token_type_ids": enc.get("token_type_ids")}
    with open(a.out, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
