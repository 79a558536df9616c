"""Writes a GLUE split in the Hugging Face `glue` dataset's parquet layout with pyarrow (columns
sentence or sentence1/sentence2, label, idx; test labels -1), optionally damaged."""
import argparse
import os

import pyarrow as pa
import pyarrow.parquet as pq

LABELS = {"sst2": {"0": 0, "1": 1}, "rte": {"entailment": 0, "not_entailment": 1}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tsv", required=True)
    ap.add_argument("--task", choices=["sst2", "rte"], required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--bad-label-row", type=int, default=-1, help="0-based row to give label 7")
    ap.add_argument("--drop-column")
    a = ap.parse_args()
    with open(a.tsv, encoding="utf-8") as f:
        lines = f.read().split("\n")
    header = lines[0].rstrip("\r").split("\t")
    rows = [l.rstrip("\r").split("\t") for l in lines[1:] if l.strip()][: a.limit]
    cols = {}
    text_cols = ["sentence"] if a.task == "sst2" else ["sentence1", "sentence2"]
    for c in text_cols:
        cols[c] = pa.array([r[header.index(c)] for r in rows], pa.string())
    if "label" in header:
        labels = [LABELS[a.task][r[header.index("label")]] for r in rows]
    else:
        labels = [-1] * len(rows)
    if a.bad_label_row >= 0:
        labels[a.bad_label_row] = 7
    cols["label"] = pa.array(labels, pa.int64())
    idx = [int(r[header.index("index")]) for r in rows] if "index" in header else list(range(len(rows)))
    cols["idx"] = pa.array(idx, pa.int32())
    if a.drop_column:
        del cols[a.drop_column]
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    pq.write_table(pa.table(cols), a.out)


if __name__ == "__main__":
    main()
