"""Writes a GLUE split in the Hugging Face `glue` dataset's parquet layout with pyarrow (the
hub's column names, ClassLabel ids, float STS-B scores, idx; test labels -1), from GLUE's own
TSV file, optionally damaged. Its reading of the TSV layouts is its own, independent of
peftrain's."""
import argparse
import os

import pyarrow as pa
import pyarrow.parquet as pq

# task: (TSV text columns, hub text columns, TSV label column, label names by id or None for
# a regression, column names of headerless TSV files)
TASKS = {
    "cola": (["sentence"], ["sentence"], "label", ["unacceptable", "acceptable"], ["source", "label", "original_label", "sentence"]),
    "sst2": (["sentence"], ["sentence"], "label", ["negative", "positive"], None),
    "mrpc": (["#1 String", "#2 String"], ["sentence1", "sentence2"], "Quality", ["not_equivalent", "equivalent"], None),
    "stsb": (["sentence1", "sentence2"], ["sentence1", "sentence2"], "score", None, None),
    "rte": (["sentence1", "sentence2"], ["sentence1", "sentence2"], "label", ["entailment", "not_entailment"], None),
    "wnli": (["sentence1", "sentence2"], ["sentence1", "sentence2"], "label", ["not_entailment", "entailment"], None),
}


def label_id(names, v):
    # GLUE's TSV writes some labels as names (RTE) and some as ids (SST-2, CoLA, MRPC, WNLI).
    return names.index(v) if v in names else int(v)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tsv", required=True)
    ap.add_argument("--task", choices=sorted(TASKS), required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--bad-label-row", type=int, default=-1, help="0-based row to give label 7")
    ap.add_argument("--drop-column")
    a = ap.parse_args()
    tsv_text, hub_text, tsv_label, names, implicit = TASKS[a.task]
    with open(a.tsv, encoding="utf-8-sig") as f:
        lines = [l.rstrip("\r") for l in f.read().split("\n")]
    first = lines[0].split("\t")
    if implicit and not all(c in first for c in tsv_text):
        header, body = implicit, lines
    else:
        header, body = first, lines[1:]
    rows = [l.split("\t") for l in body if l.strip()][: a.limit]
    cols = {}
    for t, h in zip(tsv_text, hub_text):
        cols[h] = pa.array([r[header.index(t)] for r in rows], pa.string())
    if tsv_label in header and names is None:
        labels, kind = [float(r[header.index(tsv_label)]) for r in rows], pa.float32()
    elif tsv_label in header:
        labels, kind = [label_id(names, r[header.index(tsv_label)]) for r in rows], pa.int64()
    else:
        labels, kind = [-1] * len(rows), pa.float32() if names is None else pa.int64()
    if a.bad_label_row >= 0:
        labels[a.bad_label_row] = 7
    cols["label"] = pa.array(labels, kind)
    idx = [int(r[header.index("index")]) for r in rows] if "index" in header else list(range(len(rows)))
    cols["idx"] = pa.array(idx, pa.int32())
    if a.drop_column:
        del cols[a.drop_column]
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    pq.write_table(pa.table(cols), a.out)


if __name__ == "__main__":
    main()
