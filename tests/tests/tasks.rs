//! GLUE's other tasks end to end on the real files (CoLA, MRPC, STS-B; MNLI's layout on
//! RTE's sentences): the step table's columns and metrics.jsonl's keys follow the task as the
//! Trainer's do, and every metric `eval` reports equals scikit-learn's / scipy's on the logits
//! `predict` writes for the same rows (1e-9).

use std::path::{Path, PathBuf};

use peftrain::data::{load_split, Label, Split, Task};
use peftrain_tests::{glue_dir, metrics, peftrain, roberta_dir, run_reference};

fn tiny_base(dir: &Path) -> PathBuf {
    let out = dir.join("tiny-base");
    run_reference("hf_model.py", &["tiny", "--family", "roberta", "--out", out.to_str().unwrap(), "--seed", "5", "--base-only"]);
    out
}

/// Trains `task` briefly and returns the table's header line.
fn train(model: &Path, glue: &Path, task: &str, out: &Path) -> String {
    let o = peftrain(&[
        "train",
        "--model",
        model.to_str().unwrap(),
        "--tokenizer",
        roberta_dir().to_str().unwrap(),
        "--glue-dir",
        glue.to_str().unwrap(),
        "--task",
        task,
        "--method",
        "lora",
        "--train-limit",
        "96",
        "--eval-limit",
        "60",
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
        out.to_str().unwrap(),
        "--base-dtype",
        "fp32",
    ]);
    let stdout = String::from_utf8(o.stdout).unwrap();
    stdout.lines().find(|l| l.starts_with("Step  ")).unwrap_or_else(|| panic!("no table:\n{stdout}")).to_string()
}

/// `eval`'s JSON line for a split of the trained run.
fn eval(model: &Path, glue: &Path, task: &str, out: &Path, split: &str) -> serde_json::Value {
    let o = peftrain(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--tokenizer",
        roberta_dir().to_str().unwrap(),
        "--glue-dir",
        glue.to_str().unwrap(),
        "--task",
        task,
        "--adapter",
        out.to_str().unwrap(),
        "--split",
        split,
        "--eval-limit",
        "60",
        "--base-dtype",
        "fp32",
    ]);
    serde_json::from_str(String::from_utf8(o.stdout).unwrap().trim().lines().last().unwrap()).unwrap()
}

/// `predict --with-logits` on a split: the logits by row.
fn predicted(model: &Path, glue: &Path, task: &str, out: &Path, split: &str, dir: &Path) -> Vec<Vec<f64>> {
    let p = dir.join(format!("{task}-{split}.tsv"));
    peftrain(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--tokenizer",
        roberta_dir().to_str().unwrap(),
        "--glue-dir",
        glue.to_str().unwrap(),
        "--task",
        task,
        "--adapter",
        out.to_str().unwrap(),
        "--split",
        split,
        "--eval-limit",
        "60",
        "--with-logits",
        "--output",
        p.to_str().unwrap(),
        "--base-dtype",
        "fp32",
    ]);
    std::fs::read_to_string(&p)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split('\t').nth(2).unwrap().split(',').map(|v| v.parse().unwrap()).collect())
        .collect()
}

/// scikit-learn's / scipy's metrics of `logits` against the split's gold labels.
fn reference_metrics(logits: &[Vec<f64>], gold: &[Label], dir: &Path) -> serde_json::Map<String, serde_json::Value> {
    let case = match gold[0] {
        Label::Score(_) => serde_json::json!({
            "kind": "scores",
            "predicted": logits.iter().map(|l| l[0] as f32 as f64).collect::<Vec<_>>(),
            "gold": gold.iter().map(|g| match g { Label::Score(s) => *s as f64, Label::Class(_) => f64::NAN }).collect::<Vec<_>>(),
        }),
        Label::Class(_) => serde_json::json!({
            "kind": "classes",
            // numpy's argmax: the first of equal maxima.
            "predicted": logits.iter().map(|l| (0..l.len()).fold(0, |b, i| if l[i] > l[b] { i } else { b })).collect::<Vec<_>>(),
            "gold": gold.iter().map(|g| match g { Label::Class(c) => *c as i64, Label::Score(_) => -1 }).collect::<Vec<_>>(),
        }),
    };
    let path = dir.join("case.json");
    std::fs::write(&path, serde_json::to_vec(&[case]).unwrap()).unwrap();
    let v: Vec<serde_json::Map<String, serde_json::Value>> =
        serde_json::from_str(run_reference("metrics.py", &[path.to_str().unwrap()]).trim()).unwrap();
    v.into_iter().next().unwrap()
}

fn check_task(task: Task, glue: &Path, header: &str, keys: &[&str], d: &Path, model: &Path) {
    let name = task.name();
    let out = d.join(format!("out-{name}"));
    assert_eq!(train(model, glue, name, &out), header, "{name}: the Trainer's columns");
    let evals: Vec<serde_json::Value> = metrics(&out).into_iter().filter(|e| e.get("eval_loss").is_some()).collect();
    assert_eq!(evals.len(), 2, "{name}: evaluations at steps 6 and 12");
    for k in keys {
        assert!(evals.iter().all(|e| e[format!("eval_{k}")].is_f64()), "{name}: metrics.jsonl has eval_{k}");
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains(header), "{name}: report.md's step table");
    let mut splits = vec![("validation", Split::Dev, "")];
    if task == Task::Mnli {
        splits.push(("validation_mismatched", Split::DevMismatched, "_mm"));
    }
    for (split_name, split, suffix) in splits {
        let ours = eval(model, glue, name, &out, split_name);
        // The final evaluation of the run, repeated from its saved weights.
        for k in keys {
            // This split's keys: MNLI's `_mm` ones for the mismatched set, the others for the main.
            let base = match (suffix, k.strip_suffix("_mm")) {
                ("", None) => *k,
                ("_mm", Some(b)) => b,
                _ => continue,
            };
            let logged = evals[1][format!("eval_{k}")].as_f64().unwrap();
            let again = ours[format!("eval_{base}")].as_f64().unwrap();
            assert!((logged - again).abs() < 1e-9, "{name} {split_name}: eval {base} {again} vs the run's {logged}");
        }
        let gold: Vec<Label> = load_split(glue, task, split).unwrap().into_iter().take(60).map(|e| e.label.unwrap()).collect();
        let logits = predicted(model, glue, name, &out, split_name, d);
        assert_eq!(logits.len(), gold.len());
        let theirs = reference_metrics(&logits, &gold, d);
        let mut compared = 0;
        for (k, v) in theirs {
            if let Some(o) = ours.get(format!("eval_{k}")) {
                let (a, b) = (o.as_f64().unwrap(), v.as_f64().unwrap());
                assert!((a - b).abs() <= 1e-9, "{name} {split_name} {k}: peftrain {a}, reference {b}");
                compared += 1;
            }
        }
        assert!(compared >= 1, "{name}: a metric compared");
    }
}

#[test]
fn cola_mrpc_and_stsb_report_their_metrics_as_scikit_learn_and_scipy_compute_them() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_base(d.path());
    check_task(Task::Cola, &glue_dir(), "Step  Training Loss  Validation Loss  Matthews Correlation", &["matthews_correlation"], d.path(), &model);
    check_task(Task::Mrpc, &glue_dir(), "Step  Training Loss  Validation Loss  F1        Accuracy", &["f1", "accuracy"], d.path(), &model);
    check_task(Task::Stsb, &glue_dir(), "Step  Training Loss  Validation Loss  Pearson   Spearmanr", &["pearson", "spearmanr"], d.path(), &model);
}

/// GLUE's MNLI layout (train.tsv, dev_matched.tsv, dev_mismatched.tsv with `gold_label`),
/// written from RTE's sentences with three labels: MNLI itself is too large to have here.
fn mnli_like(dir: &Path) -> PathBuf {
    let glue = dir.join("glue");
    std::fs::create_dir_all(glue.join("MNLI")).unwrap();
    let names = ["entailment", "neutral", "contradiction"];
    for (src, dst) in [(Split::Train, "train.tsv"), (Split::Dev, "dev_matched.tsv"), (Split::Dev, "dev_mismatched.tsv")] {
        let rows = load_split(&glue_dir(), Task::Rte, src).unwrap();
        let skip = if dst == "dev_mismatched.tsv" { 100 } else { 0 };
        let mut text = String::from("index\tgenre\tsentence1\tsentence2\tgold_label\n");
        for (i, r) in rows.iter().skip(skip).take(120).enumerate() {
            let label = names[(i + r.text_a.len()) % 3];
            text.push_str(&format!("{i}\tfiction\t{}\t{}\t{label}\n", r.text_a, r.text_b.as_deref().unwrap()));
        }
        std::fs::write(glue.join("MNLI").join(dst), text).unwrap();
    }
    glue
}

#[test]
fn mnli_reports_matched_and_mismatched_accuracy() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_base(d.path());
    let glue = mnli_like(d.path());
    check_task(Task::Mnli, &glue, "Step  Training Loss  Validation Loss  Accuracy  Accuracy Mm", &["accuracy", "accuracy_mm"], d.path(), &model);
    let evals: Vec<serde_json::Value> = metrics(&d.path().join("out-mnli")).into_iter().filter(|e| e.get("eval_loss").is_some()).collect();
    assert!(evals.iter().all(|e| e["eval_loss_mm"].is_f64()), "the mismatched set's loss, as run_glue.py's _mm keys");
}
