"""Writes rows (a JSON list of objects) as CSV (the csv module's quoting), TSV (unquoted),
JSON Lines and parquet (pyarrow), as a user would hand them to run_glue.py or peftrain."""
import argparse
import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", required=True)
    ap.add_argument("--out", required=True, help="path without extension; every format is written")
    a = ap.parse_args()
    rows = json.load(open(a.rows))
    cols = list(rows[0].keys())
    with open(a.out + ".csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    with open(a.out + ".tsv", "w", encoding="utf-8") as f:
        f.write("\t".join(cols) + "\n")
        for r in rows:
            f.write("\t".join(str(r[c]) for c in cols) + "\n")
    with open(a.out + ".jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    pq.write_table(pa.table({c: [r[c] for r in rows] for c in cols}), a.out + ".parquet")


if __name__ == "__main__":
    main()
