//! GLUE from the Hugging Face `glue` parquet layout (written here by pyarrow from the real TSV
//! files, with the hub's column names and label ids) reads to the same examples as the GLUE
//! TSV layout, for every task in ../shared (CoLA without a header, MRPC with its byte-order
//! mark, STS-B's float scores); the real files have the rows GLUE has; damaged parquet files
//! are errors that name the file and row.

use std::path::Path;

use peftrain::data::{load_split, Label, Split, Task};
use peftrain_tests::{glue_dir, run_reference};

fn write_parquet(tsv: &Path, task: &str, out: &Path, extra: &[&str]) {
    let mut args = vec!["--tsv", tsv.to_str().unwrap(), "--task", task, "--out", out.to_str().unwrap(), "--limit", "300"];
    args.extend_from_slice(extra);
    run_reference("make_parquet.py", &args);
}

#[test]
fn parquet_layout_reads_like_the_tsv_layout() {
    let d = tempfile::tempdir().unwrap();
    for (task, dir, name) in [
        (Task::Sst2, "SST-2", "sst2"),
        (Task::Rte, "RTE", "rte"),
        (Task::Cola, "CoLA", "cola"),
        (Task::Mrpc, "MRPC", "mrpc"),
        (Task::Stsb, "STS-B", "stsb"),
        (Task::Wnli, "WNLI", "wnli"),
    ] {
        for (split, tsv, pq) in [(Split::Train, "train.tsv", "train"), (Split::Dev, "dev.tsv", "validation"), (Split::Test, "test.tsv", "test")] {
            let out = d.path().join(name).join(format!("{pq}-00000-of-00001.parquet"));
            write_parquet(&glue_dir().join(dir).join(tsv), name, &out, &[]);
            let from_pq = load_split(d.path(), task, split).expect("parquet split");
            let mut from_tsv = load_split(&glue_dir(), task, split).expect("tsv split");
            from_tsv.truncate(300);
            assert_eq!(from_pq.len(), from_tsv.len());
            for (a, b) in from_pq.iter().zip(&from_tsv) {
                assert_eq!((&a.text_a, &a.text_b, a.label), (&b.text_a, &b.text_b, b.label), "{task} {split:?}");
                if split != Split::Train || task != Task::Sst2 {
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
fn every_glue_file_reads_whole_with_the_task_s_labels() {
    // Rows per file as GLUE ships them (../shared/README.md), and labels of the right kind.
    for (task, train, dev, test) in [
        (Task::Cola, 8551, 1043, 1063),
        (Task::Sst2, 67349, 872, 1821),
        (Task::Mrpc, 3668, 408, 1725),
        (Task::Stsb, 5749, 1500, 1379),
        (Task::Rte, 2490, 277, 3000),
        (Task::Wnli, 635, 71, 146),
    ] {
        for (split, n) in [(Split::Train, train), (Split::Dev, dev), (Split::Test, test)] {
            let rows = load_split(&glue_dir(), task, split).unwrap_or_else(|e| panic!("{task} {split}: {e}"));
            assert_eq!(rows.len(), n, "{task} {split}");
            let k = task.num_labels() as u32;
            for r in &rows {
                match (split, r.label) {
                    (Split::Test, l) => assert_eq!(l, None, "{task} test rows carry no label"),
                    (_, Some(Label::Class(c))) => assert!(c < k && task != Task::Stsb),
                    (_, Some(Label::Score(s))) => assert!(task == Task::Stsb && (0.0..=5.0).contains(&s)),
                    (_, None) => panic!("{task} {split}: a row without a label"),
                }
                assert_eq!(r.text_b.is_some(), task != Task::Cola && task != Task::Sst2);
            }
        }
    }
    // A few values read straight from the files.
    let cola = load_split(&glue_dir(), Task::Cola, Split::Train).unwrap();
    assert_eq!(
        (cola[0].text_a.as_str(), cola[0].label),
        ("Our friends won't buy this analysis, let alone the next one we propose.", Some(Label::Class(1)))
    );
    let stsb = load_split(&glue_dir(), Task::Stsb, Split::Dev).unwrap();
    assert_eq!((stsb[0].text_a.as_str(), stsb[0].label), ("A man with a hard hat is dancing.", Some(Label::Score(5.0))));
    let mrpc = load_split(&glue_dir(), Task::Mrpc, Split::Train).unwrap();
    assert_eq!(mrpc[0].label, Some(Label::Class(1)));
}

#[test]
fn qqp_qnli_and_mnli_read_from_their_glue_layouts() {
    // Their training sets are too large to have here: a few rows in GLUE's own columns.
    let d = tempfile::tempdir().unwrap();
    let write = |dir: &str, file: &str, text: &str| {
        std::fs::create_dir_all(d.path().join(dir)).unwrap();
        std::fs::write(d.path().join(dir).join(file), text).unwrap();
    };
    write("QQP", "train.tsv", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n7\t1\t2\tHow?\tWhy?\t1\n8\t3\t4\tA?\tB?\t0\n");
    write("QQP", "test.tsv", "id\tquestion1\tquestion2\n0\tWho?\tWhom?\n");
    write("QNLI", "dev.tsv", "index\tquestion\tsentence\tlabel\n3\tWhere?\tHere.\tnot_entailment\n");
    write(
        "MNLI",
        "dev_mismatched.tsv",
        "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tlabel1\tgold_label\n5\t1\t1e\tletters\tA.\tB.\tneutral\tcontradiction\n",
    );
    let qqp = load_split(d.path(), Task::Qqp, Split::Train).unwrap();
    assert_eq!((qqp[0].idx, qqp[0].text_a.as_str(), qqp[0].text_b.as_deref(), qqp[0].label), (7, "How?", Some("Why?"), Some(Label::Class(1))));
    assert_eq!(load_split(d.path(), Task::Qqp, Split::Test).unwrap()[0].label, None);
    let qnli = load_split(d.path(), Task::Qnli, Split::Dev).unwrap();
    assert_eq!((qnli[0].text_a.as_str(), qnli[0].label), ("Where?", Some(Label::Class(1))));
    let mm = load_split(d.path(), Task::Mnli, Split::DevMismatched).unwrap();
    assert_eq!((mm[0].idx, mm[0].label), (5, Some(Label::Class(2))), "gold_label, in the hub's order (entailment, neutral, contradiction)");
    let e = load_split(d.path(), Task::Mnli, Split::Dev).unwrap_err().to_string();
    assert!(e.contains("MNLI/dev_matched.tsv") && e.contains("mnli/validation_matched-*.parquet"), "{e}");
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
