//! The user's own data, named as run_glue.py names it (`--train-file`, `--validation-file`,
//! `--test-file`, column flags): CSV, TSV, JSON Lines and parquet (written here by Python's csv
//! module and pyarrow) read to the same examples, string labels keep their names sorted, bad
//! files are one clear line, and a three-label model trains, predicts names, loads in peft and
//! merges with its names and label count.

use std::path::{Path, PathBuf};

use peftrain::data::{infer_labels, load_split, read_user_file, Label, Labels, Split, Task, UserColumns};
use peftrain_tests::{assert_one_clear_line, bin, glue_dir, peftrain, roberta_dir, run_reference};

const NAMES: [&str; 3] = ["mid", "low", "high"];

/// `n` rows of SST-2's dev set with three string labels, written in every format under `stem`.
fn write_rows(dir: &Path, stem: &str, n: usize, with_label: bool) -> PathBuf {
    let dev = load_split(&glue_dir(), Task::Sst2, Split::Dev).unwrap();
    let rows: Vec<serde_json::Value> = dev
        .iter()
        .take(n)
        .enumerate()
        .map(|(i, e)| {
            let mut o = serde_json::json!({"id": i, "sentence": e.text_a});
            if with_label {
                o["label"] = serde_json::json!(NAMES[(i * 7 + e.text_a.len()) % 3]);
            }
            o
        })
        .collect();
    let rows_path = dir.join(format!("{stem}.rows.json"));
    std::fs::write(&rows_path, serde_json::to_vec(&rows).unwrap()).unwrap();
    let out = dir.join(stem);
    run_reference("write_table.py", &["--rows", rows_path.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    out
}

fn cols() -> UserColumns {
    UserColumns { text: None, text_pair: None, label: "label".into() }
}

#[test]
fn every_format_reads_the_same_examples_with_sorted_label_names() {
    let d = tempfile::tempdir().unwrap();
    let stem = write_rows(d.path(), "train", 60, true);
    let mut seen = Vec::new();
    for ext in ["csv", "tsv", "jsonl", "parquet"] {
        let p = stem.with_extension(ext);
        let labels = infer_labels(&p, &cols()).unwrap_or_else(|e| panic!("{ext}: {e}"));
        // run_glue.py: `label_list = sorted(unique labels)`.
        assert_eq!(labels, Labels::classes(vec!["high".into(), "low".into(), "mid".into()]), "{ext}");
        let rows = read_user_file(&p, &cols(), &labels, false, false).unwrap_or_else(|e| panic!("{ext}: {e}"));
        assert_eq!(rows.len(), 60);
        seen.push(rows);
    }
    for other in &seen[1..] {
        assert_eq!(other, &seen[0], "every format reads the same examples");
    }
    let dev = load_split(&glue_dir(), Task::Sst2, Split::Dev).unwrap();
    for (i, r) in seen[0].iter().enumerate() {
        assert_eq!((r.idx, r.text_a.as_str(), r.text_b.as_deref()), (i as u64, dev[i].text_a.as_str(), None));
        let name = NAMES[(i * 7 + dev[i].text_a.len()) % 3];
        let id = ["high", "low", "mid"].iter().position(|n| *n == name).unwrap() as u32;
        assert_eq!(r.label, Some(Label::Class(id)));
    }
    // Float labels are a regression; integers are classes named by their values, sorted.
    std::fs::write(d.path().join("r.csv"), "sentence,label\na,0.5\nb,3\n").unwrap();
    assert_eq!(infer_labels(&d.path().join("r.csv"), &cols()).unwrap(), Labels::regression());
    std::fs::write(d.path().join("i.jsonl"), "{\"sentence\": \"a\", \"label\": 10}\n{\"sentence\": \"b\", \"label\": 2}\n").unwrap();
    assert_eq!(infer_labels(&d.path().join("i.jsonl"), &cols()).unwrap(), Labels::classes(vec!["2".into(), "10".into()]));
}

fn train_args<'a>(model: &'a str, tok: &'a str, out: &'a str, train: &'a str, dev: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--model",
        model,
        "--tokenizer",
        tok,
        "--train-file",
        train,
        "--validation-file",
        dev,
        "--method",
        "lora",
        "--batch-size",
        "8",
        "--max-steps",
        "12",
        "--logging-steps",
        "4",
        "--eval-steps",
        "6",
        "--lr",
        "2e-3",
        "--output-dir",
        out,
        "--base-dtype",
        "fp32",
    ]
}

fn tiny_base(dir: &Path) -> PathBuf {
    let out = dir.join("tiny-base");
    run_reference("hf_model.py", &["tiny", "--family", "roberta", "--out", out.to_str().unwrap(), "--seed", "4", "--base-only"]);
    out
}

#[test]
fn bad_user_files_get_one_clear_line() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_base(d.path());
    let tok = roberta_dir();
    let write = |name: &str, text: &str| {
        let p = d.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let good = write("good.csv", "sentence,label\nfine,a\nok,b\n");
    let out = d.path().join("out").display().to_string();
    let (m, t) = (model.display().to_string(), tok.display().to_string());
    let run = |train: &str, dev: &str, extra: &[&str]| {
        let mut args = train_args(&m, &t, &out, train, dev);
        args.extend_from_slice(extra);
        let o = std::process::Command::new(bin("peftrain"))
            .args(&args)
            .env("PEFTRAIN_WORKER_BIN", bin("peftrain-worker"))
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        assert!(!o.status.success(), "{args:?} was accepted");
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let no_text = write("no_text.csv", "text,label\nfine,a\n");
    assert_one_clear_line(&run(&no_text, &good, &[]), &["no_text.csv", "no text column", "--text-column", "`text`, `label`"]);
    assert_one_clear_line(&run(&good, &good, &["--label-column", "gold"]), &["good.csv", "missing column `gold`", "`sentence`, `label`"]);
    let unseen = write("unseen.csv", "sentence,label\nfine,a\nhmm,c\n");
    assert_one_clear_line(&run(&good, &unseen, &[]), &["unseen.csv:3", "label \"c\" is not one of \"a\", \"b\"", "training file"]);
    let empty = write("empty.csv", "");
    assert_one_clear_line(&run(&empty, &good, &[]), &["empty.csv", "empty file"]);
    let mixed = write("mixed.jsonl", "{\"sentence\": \"a\", \"label\": 1}\n{\"sentence\": \"b\", \"label\": \"x\"}\n");
    assert_one_clear_line(&run(&mixed, &good, &[]), &["mixed.jsonl", "mixes label types"]);
    let bad_ext = write("data.xlsx", "");
    assert_one_clear_line(&run(&bad_ext, &good, &[]), &["data.xlsx", "unknown file type"]);
    assert!(!Path::new(&out).join("metrics.jsonl").exists(), "nothing was trained");
}

#[test]
fn a_three_label_csv_trains_predicts_names_loads_in_peft_and_merges_with_its_names() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_base(d.path());
    let tok = roberta_dir();
    let train = write_rows(d.path(), "train", 96, true).with_extension("csv");
    let dev = write_rows(d.path(), "dev", 40, true).with_extension("jsonl");
    let test = write_rows(d.path(), "test", 30, false);
    let out = d.path().join("out");
    let (m, t, o) = (model.display().to_string(), tok.display().to_string(), out.display().to_string());
    let stdout = String::from_utf8(peftrain(&train_args(&m, &t, &o, train.to_str().unwrap(), dev.to_str().unwrap())).stdout).unwrap();
    assert!(stdout.contains("lora x custom"), "{stdout}");
    assert!(stdout.contains("Step  Training Loss  Validation Loss  Accuracy"), "{stdout}");
    let tc: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("trainable_config.json")).unwrap()).unwrap();
    assert_eq!(tc["labels"]["names"], serde_json::json!(["high", "low", "mid"]));
    assert_eq!(tc["num_labels"], 3);

    // predict: the test file has no label column; the labels come from the trained weights.
    let preds = d.path().join("preds.tsv");
    peftrain(&[
        "predict",
        "--model",
        &m,
        "--tokenizer",
        &t,
        "--adapter",
        &o,
        "--split",
        "test",
        "--test-file",
        test.with_extension("parquet").to_str().unwrap(),
        "--with-logits",
        "--output",
        preds.to_str().unwrap(),
        "--base-dtype",
        "fp32",
    ]);
    let text = std::fs::read_to_string(&preds).unwrap();
    let mut ours = Vec::new();
    for l in text.lines().skip(1) {
        let f: Vec<&str> = l.split('\t').collect();
        let logits: Vec<f32> = f[2].split(',').map(|v| v.parse().unwrap()).collect();
        assert_eq!(logits.len(), 3);
        let argmax = (0..3).fold(0, |b, i| if logits[i] > logits[b] { i } else { b });
        assert_eq!(f[1], ["high", "low", "mid"][argmax], "the prediction is the argmax's name");
        ours.extend(logits);
    }
    assert_eq!(ours.len(), 90);
    // peft loads the 3-label adapter and gives the same logits.
    let reference = |args: &[&str]| -> (Vec<f32>, serde_json::Value) {
        let v: serde_json::Value = serde_json::from_str(run_reference("hf_predict.py", args).trim()).unwrap();
        let l = v["logits"].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32)).collect();
        (l, v["id2label"].clone())
    };
    let tsv = test.with_extension("tsv");
    let (theirs, _) = reference(&[
        "--model",
        &m,
        "--tokenizer",
        &t,
        "--adapter",
        &o,
        "--tsv",
        tsv.to_str().unwrap(),
        "--limit",
        "30",
        "--num-labels",
        "3",
        "--via",
        "peft",
    ]);
    let diff = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert_eq!(theirs.len(), 90);
    assert!(diff <= 1e-5, "peft's logits differ by {diff}");
    // The model card's "How to use" snippet, run as written, builds the same model with the
    // label names.
    let (theirs, id2label) =
        reference(&["--model", &m, "--tokenizer", &t, "--adapter", &o, "--tsv", tsv.to_str().unwrap(), "--limit", "30", "--via", "card"]);
    assert_eq!(id2label, serde_json::json!({"0": "high", "1": "low", "2": "mid"}));
    let diff = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(theirs.len() == 90 && diff <= 1e-5, "the card's model's logits differ by {diff}");

    // merge keeps 3 labels and their names; transformers loads it with the same logits.
    let merged = d.path().join("merged");
    peftrain(&["merge", "--model", &m, "--adapter", &o, "--output", merged.to_str().unwrap()]);
    let (theirs, id2label) = reference(&[
        "--model",
        merged.to_str().unwrap(),
        "--tokenizer",
        &t,
        "--tsv",
        tsv.to_str().unwrap(),
        "--limit",
        "30",
        "--num-labels",
        "3",
        "--via",
        "merged",
    ]);
    assert_eq!(id2label, serde_json::json!({"0": "high", "1": "low", "2": "mid"}));
    let diff = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff <= 1e-4, "the merged model's logits differ by {diff}");
}
