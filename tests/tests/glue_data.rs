//! GLUE from the Hugging Face `glue` parquet layout (written here by pyarrow from the real TSV
//! files) reads to the same examples as the GLUE TSV layout; damaged parquet files are errors
//! that name the file and row.

use std::path::Path;

use peftrain::data::{load_split, Split, Task};
use peftrain_tests::{glue_dir, run_reference};

fn write_parquet(tsv: &Path, task: &str, out: &Path, extra: &[&str]) {
    let mut args = vec!["--tsv", tsv.to_str().unwrap(), "--task", task, "--out", out.to_str().unwrap(), "--limit", "300"];
    args.extend_from_slice(extra);
    run_reference("make_parquet.py", &args);
}

#[test]
fn parquet_layout_reads_like_the_tsv_layout() {
    let d = tempfile::tempdir().unwrap();
    for (task, dir, name) in [(Task::Sst2, "SST-2", "sst2"), (Task::Rte, "RTE", "rte")] {
        for (split, tsv, pq) in [(Split::Train, "train.tsv", "train"), (Split::Dev, "dev.tsv", "validation"), (Split::Test, "test.tsv", "test")] {
            let out = d.path().join(name).join(format!("{pq}-00000-of-00001.parquet"));
            write_parquet(&glue_dir().join(dir).join(tsv), name, &out, &[]);
            let from_pq = load_split(d.path(), task, split).expect("parquet split");
            let mut from_tsv = load_split(&glue_dir(), task, split).expect("tsv split");
            from_tsv.truncate(300);
            assert_eq!(from_pq.len(), from_tsv.len());
            for (a, b) in from_pq.iter().zip(&from_tsv) {
                assert_eq!((&a.text_a, &a.text_b, a.label), (&b.text_a, &b.text_b, b.label), "{task} {split:?}");
                if split != Split::Train || task == Task::Rte {
                    assert_eq!(a.idx, b.idx);
                }
            }
            if split == Split::Test {
                assert!(from_pq.iter().all(|e| e.label.is_none()), "test rows carry no label");
            }
        }
    }
}

#[test]
fn damaged_parquet_names_file_and_row() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("rte/train-00000-of-00001.parquet");
    write_parquet(&glue_dir().join("RTE/train.tsv"), "rte", &out, &["--bad-label-row", "41"]);
    let e = load_split(d.path(), Task::Rte, Split::Train).unwrap_err().to_string();
    assert!(e.contains("train-00000-of-00001.parquet:42") && e.contains("label 7 is outside"), "{e}");

    write_parquet(&glue_dir().join("RTE/train.tsv"), "rte", &out, &["--drop-column", "sentence2"]);
    let e = load_split(d.path(), Task::Rte, Split::Train).unwrap_err().to_string();
    assert!(e.contains("train-00000-of-00001.parquet") && e.contains("missing column `sentence2`"), "{e}");

    std::fs::write(&out, b"not parquet at all").unwrap();
    let e = load_split(d.path(), Task::Rte, Split::Train).unwrap_err().to_string();
    assert!(e.contains("train-00000-of-00001.parquet") && e.contains("not a readable parquet file"), "{e}");
}
