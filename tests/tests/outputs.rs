//! What users read and keep: the live step table, metrics.jsonl with the Trainer's field names,
//! TrainOutput, the trainable weights, and `peftrain predict` in GLUE's submission form, whose
//! logits Hugging Face + peft reproduce from the saved adapter.

use std::path::Path;

use peftrain_tests::{glue_dir, max_abs_diff, metrics, peftrain, roberta_dir, run_reference, tiny_roberta};

fn train(model: &Path, out: &Path, method: &str) -> String {
    let (tok, glue) = (roberta_dir(), glue_dir());
    let o = peftrain(&[
        "train",
        "--model",
        model.to_str().unwrap(),
        "--tokenizer",
        tok.to_str().unwrap(),
        "--glue-dir",
        glue.to_str().unwrap(),
        "--task",
        "sst2",
        "--method",
        method,
        "--train-limit",
        "96",
        "--eval-limit",
        "40",
        "--batch-size",
        "8",
        "--max-steps",
        "12",
        "--warmup-steps",
        "2",
        "--lr",
        "1e-3",
        "--logging-steps",
        "4",
        "--eval-steps",
        "6",
        "--output-dir",
        out.to_str().unwrap(),
        "--base-dtype",
        "fp32",
    ]);
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn table_metrics_and_train_output() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_roberta(d.path(), 2);
    let out = d.path().join("out");
    let stdout = train(&model, &out, "lora");
    let lines: Vec<&str> = stdout.lines().collect();
    let h = lines.iter().position(|l| *l == "Step  Training Loss  Validation Loss  Accuracy").expect("table header");
    let steps: Vec<&str> =
        lines[h + 1..].iter().take_while(|l| !l.starts_with("TrainOutput")).map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(steps, ["4", "6", "8", "12"], "rows at logging and evaluation steps:\n{stdout}");
    let row6 = lines[h + 2];
    assert_eq!(row6.split_whitespace().count(), 4, "step 6 shows the last training loss and the evaluation: {row6}");
    let to_line = lines.iter().find(|l| l.starts_with("TrainOutput(")).expect("TrainOutput printed");
    assert!(to_line.starts_with("TrainOutput(global_step=12, training_loss="), "{stdout}");
    for key in ["'train_runtime': ", "'train_samples_per_second': ", "'train_steps_per_second': ", "'total_flos': ", "'train_loss': ", "'epoch': 1.0"]
    {
        assert!(to_line.contains(key), "TrainOutput lacks {key}");
    }
    // And where the results are.
    assert!(
        lines.last().unwrap().contains("adapter_model.safetensors")
            && lines.last().unwrap().contains("report.md")
            && lines.last().unwrap().contains("curves.png")
    );

    let events = metrics(&out);
    let train_events: Vec<_> = events.iter().filter(|e| e.get("loss").is_some()).collect();
    assert_eq!(train_events.len(), 3);
    for e in &train_events {
        for k in ["step", "epoch", "loss", "learning_rate", "grad_norm", "allreduce_bytes", "allreduce_ms"] {
            assert!(e.get(k).is_some(), "training event lacks {k}: {e}");
        }
        // The Trainer logs the scheduler's rate after stepping: linear warmup over 2 steps,
        // then linear decay to 0 at step 12, evaluated at the logged step.
        let s = e["step"].as_f64().unwrap();
        let want = 1e-3 * (12.0 - s) / 10.0;
        assert!((e["learning_rate"].as_f64().unwrap() - want).abs() < 1e-12, "learning_rate at step {s}");
        assert!((e["epoch"].as_f64().unwrap() - s / 12.0).abs() < 1e-12);
    }
    let evals: Vec<_> = events.iter().filter(|e| e.get("eval_loss").is_some()).collect();
    assert_eq!(evals.iter().map(|e| e["step"].as_u64().unwrap()).collect::<Vec<_>>(), [6, 12]);
    assert!(evals.iter().all(|e| e["eval_accuracy"].as_f64().unwrap() <= 1.0));
    let to: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("train_output.json")).unwrap()).unwrap();
    assert_eq!(to["global_step"], 12);
    let mean: f64 = train_events.iter().map(|e| e["loss"].as_f64().unwrap()).sum::<f64>() / 3.0;
    assert!((to["training_loss"].as_f64().unwrap() - mean).abs() < 1e-9, "training_loss is the mean of all step losses");
    for f in ["trainable.safetensors", "trainable_config.json", "adapter_model.safetensors", "adapter_config.json", "run_config.json"] {
        assert!(out.join(f).is_file(), "{f} written");
    }
}

fn predict_and_compare(method: &str, via: &str, tolerance: f32) {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_roberta(d.path(), 3);
    let out = d.path().join("out");
    train(&model, &out, method);
    let preds = d.path().join("preds.tsv");
    let (tok, glue) = (roberta_dir(), glue_dir());
    peftrain(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--tokenizer",
        tok.to_str().unwrap(),
        "--glue-dir",
        glue.to_str().unwrap(),
        "--task",
        "sst2",
        "--adapter",
        out.to_str().unwrap(),
        "--split",
        "test",
        "--eval-limit",
        "50",
        "--with-logits",
        "--output",
        preds.to_str().unwrap(),
        "--base-dtype",
        "fp32",
    ]);
    let text = std::fs::read_to_string(&preds).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("index\tprediction\tlogits"));
    let mut ours = Vec::new();
    for (i, l) in lines.enumerate() {
        let f: Vec<&str> = l.split('\t').collect();
        assert_eq!(f[0], i.to_string(), "GLUE test index");
        let logits: Vec<f32> = f[2].split(',').map(|v| v.parse().unwrap()).collect();
        // run_glue.py writes the label name (the hub's SST-2 names), not the id.
        let argmax = if logits[1] > logits[0] { "positive" } else { "negative" };
        assert_eq!(f[1], argmax, "prediction is the argmax of the logits");
        ours.extend(logits);
    }
    assert_eq!(ours.len(), 100);
    let reference: serde_json::Value = serde_json::from_str(
        run_reference(
            "hf_predict.py",
            &[
                "--model",
                model.to_str().unwrap(),
                "--tokenizer",
                tok.to_str().unwrap(),
                "--adapter",
                out.to_str().unwrap(),
                "--tsv",
                glue.join("SST-2/test.tsv").to_str().unwrap(),
                "--limit",
                "50",
                "--via",
                via,
            ],
        )
        .trim(),
    )
    .unwrap();
    let theirs: Vec<f32> =
        reference["logits"].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32)).collect();
    let diff = max_abs_diff(&ours, &theirs);
    assert!(diff <= tolerance, "{method}: predict's logits differ from HF ({via}) by {diff}");
}

#[test]
fn predict_lora_matches_peft_from_the_saved_adapter() {
    predict_and_compare("lora", "peft", 1e-4);
}

/// peft loads peftrain's IA3 adapter (adapter_model.safetensors + adapter_config.json) and
/// gives peftrain's logits.
#[test]
fn predict_ia3_matches_peft_from_the_saved_adapter() {
    predict_and_compare("ia3", "peft", 1e-5);
}

#[test]
fn predict_bitfit_matches_transformers_with_the_saved_weights() {
    predict_and_compare("bitfit", "state-dict", 1e-4);
}

/// `peftrain predict`'s logits (first 50 SST-2 test rows) for `model` + `adapter`.
fn predicted_logits(model: &Path, adapter: &Path, dir: &Path) -> Vec<f32> {
    let preds = dir.join("p.tsv");
    let (tok, glue) = (roberta_dir(), glue_dir());
    peftrain(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--tokenizer",
        tok.to_str().unwrap(),
        "--glue-dir",
        glue.to_str().unwrap(),
        "--task",
        "sst2",
        "--adapter",
        adapter.to_str().unwrap(),
        "--split",
        "test",
        "--eval-limit",
        "50",
        "--with-logits",
        "--output",
        preds.to_str().unwrap(),
        "--base-dtype",
        "fp32",
    ]);
    std::fs::read_to_string(&preds)
        .unwrap()
        .lines()
        .skip(1)
        .flat_map(|l| l.split('\t').nth(2).unwrap().split(',').map(|v| v.parse::<f32>().unwrap()).collect::<Vec<_>>())
        .collect()
}

fn reference_logits(args: &[&str]) -> Vec<f32> {
    let glue = glue_dir();
    let tok = roberta_dir();
    let mut a = vec!["--tokenizer", tok.to_str().unwrap(), "--tsv"];
    let tsv = glue.join("SST-2/test.tsv");
    a.push(tsv.to_str().unwrap());
    a.extend(["--limit", "50"]);
    a.extend_from_slice(args);
    let v: serde_json::Value = serde_json::from_str(run_reference("hf_predict.py", &a).trim()).unwrap();
    v["logits"].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32)).collect()
}

#[test]
fn peftrain_loads_an_adapter_that_peft_trained() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_roberta(d.path(), 12);
    let (init, trained) = (d.path().join("init"), d.path().join("peft-trained"));
    run_reference("hf_train.py", &["lora-init", "--model", model.to_str().unwrap(), "--out", init.to_str().unwrap(), "--seed", "2"]);
    let tsv = glue_dir().join("SST-2/train.tsv");
    let tok = roberta_dir();
    run_reference(
        "hf_train.py",
        &[
            "train",
            "--model",
            model.to_str().unwrap(),
            "--tokenizer",
            tok.to_str().unwrap(),
            "--tsv",
            tsv.to_str().unwrap(),
            "--method",
            "lora",
            "--adapter",
            init.to_str().unwrap(),
            "--steps",
            "10",
            "--save-adapter",
            trained.to_str().unwrap(),
        ],
    );
    let ours = predicted_logits(&model, &trained, d.path());
    let theirs = reference_logits(&["--model", model.to_str().unwrap(), "--adapter", trained.to_str().unwrap(), "--via", "peft"]);
    let diff = max_abs_diff(&ours, &theirs);
    assert!(diff <= 1e-4, "logits of a peft-trained adapter differ by {diff}");
}

/// An IA3 adapter peft made (vectors drawn away from one, so it is not the identity) and then
/// trained: peftrain's logits from it equal peft's.
#[test]
fn peftrain_loads_an_ia3_adapter_that_peft_made_and_trained() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_roberta(d.path(), 13);
    let (init, trained) = (d.path().join("init"), d.path().join("peft-trained"));
    run_reference(
        "hf_train.py",
        &["ia3-init", "--model", model.to_str().unwrap(), "--out", init.to_str().unwrap(), "--seed", "3", "--perturb", "0.3"],
    );
    let tsv = glue_dir().join("SST-2/train.tsv");
    let tok = roberta_dir();
    for adapter in [&init, &trained] {
        if adapter == &trained {
            run_reference(
                "hf_train.py",
                &[
                    "train",
                    "--model",
                    model.to_str().unwrap(),
                    "--tokenizer",
                    tok.to_str().unwrap(),
                    "--tsv",
                    tsv.to_str().unwrap(),
                    "--method",
                    "ia3",
                    "--adapter",
                    init.to_str().unwrap(),
                    "--steps",
                    "10",
                    "--save-adapter",
                    trained.to_str().unwrap(),
                ],
            );
        }
        let ours = predicted_logits(&model, adapter, d.path());
        let theirs = reference_logits(&["--model", model.to_str().unwrap(), "--adapter", adapter.to_str().unwrap(), "--via", "peft"]);
        let diff = max_abs_diff(&ours, &theirs);
        assert!(diff <= 1e-5, "logits of a peft IA3 adapter ({}) differ by {diff}", adapter.display());
    }
}

fn merged_matches(method: &str, tolerance: f32) {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_roberta(d.path(), 14);
    let out = d.path().join("out");
    train(&model, &out, method);
    let merged = d.path().join("merged");
    peftrain(&["merge", "--model", model.to_str().unwrap(), "--adapter", out.to_str().unwrap(), "--output", merged.to_str().unwrap()]);
    let ours = predicted_logits(&model, &out, d.path());
    let theirs = reference_logits(&["--model", merged.to_str().unwrap(), "--via", "merged"]);
    let diff = max_abs_diff(&ours, &theirs);
    assert!(diff <= tolerance, "{method}: AutoModelForSequenceClassification on the merged checkpoint differs by {diff}");
}

#[test]
fn merged_lora_checkpoint_loads_in_transformers_with_the_same_logits() {
    merged_matches("lora", 1e-4);
}

#[test]
fn merged_ia3_checkpoint_loads_in_transformers_with_the_same_logits() {
    merged_matches("ia3", 1e-5);
}

#[test]
fn merged_bitfit_checkpoint_loads_in_transformers_with_the_same_logits() {
    merged_matches("bitfit", 1e-4);
}

#[test]
fn eval_and_compare_from_saved_outputs() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_roberta(d.path(), 15);
    let out = d.path().join("cmp");
    let (tok, glue) = (roberta_dir(), glue_dir());
    let o = peftrain(&[
        "compare",
        "--model",
        model.to_str().unwrap(),
        "--tokenizer",
        tok.to_str().unwrap(),
        "--glue-dir",
        glue.to_str().unwrap(),
        "--task",
        "sst2",
        "--methods",
        "full,bitfit,lora",
        "--train-limit",
        "96",
        "--eval-limit",
        "40",
        "--batch-size",
        "8",
        "--max-steps",
        "12",
        "--logging-steps",
        "4",
        "--eval-steps",
        "6",
        "--output-dir",
        out.to_str().unwrap(),
        "--base-dtype",
        "fp32",
    ]);
    let stdout = String::from_utf8(o.stdout).unwrap();
    assert!(stdout.contains("report: ") && stdout.contains("curves.png"), "{stdout}");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for m in ["full", "bitfit", "lora"] {
        assert!(md.lines().any(|l| l.starts_with(&format!("| {m} |"))), "report table row for {m}:\n{md}");
        assert!(md.contains(&format!("## {m}")), "step table for {m}");
        assert!(out.join(m).join("metrics.jsonl").is_file());
    }
    assert!(md.contains("Step  Training Loss  Validation Loss  Accuracy"));
    let png = std::fs::read(out.join("curves.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "curves.png is a PNG");
    // The same report from the finished runs' directories (how cluster runs are compared).
    let again = d.path().join("again");
    let runs = ["full", "bitfit", "lora"].map(|m| out.join(m).display().to_string()).join(",");
    peftrain(&["report", "--runs", &runs, "--output-dir", again.to_str().unwrap(), "--title", "peftrain compare: full, bitfit, lora on sst2"]);
    let md_again = std::fs::read_to_string(again.join("report.md")).unwrap();
    assert_eq!(md_again.lines().take(6).collect::<Vec<_>>(), md.lines().take(6).collect::<Vec<_>>(), "same table");
    // eval from the saved LoRA output: the run's own final evaluation, again.
    eval_repeats_the_final_evaluation(&model, &out.join("lora"));
}

/// `peftrain eval --adapter run` gives the run's own final evaluation again.
fn eval_repeats_the_final_evaluation(model: &Path, run: &Path) {
    let (tok, glue) = (roberta_dir(), glue_dir());
    let o = peftrain(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--tokenizer",
        tok.to_str().unwrap(),
        "--glue-dir",
        glue.to_str().unwrap(),
        "--task",
        "sst2",
        "--adapter",
        run.to_str().unwrap(),
        "--eval-limit",
        "40",
        "--base-dtype",
        "fp32",
    ]);
    let v: serde_json::Value = serde_json::from_str(String::from_utf8(o.stdout).unwrap().trim().lines().last().unwrap()).unwrap();
    let last = metrics(run).into_iter().rfind(|e| e.get("eval_loss").is_some()).unwrap();
    assert!((v["eval_loss"].as_f64().unwrap() - last["eval_loss"].as_f64().unwrap()).abs() < 1e-6);
    assert_eq!(v["eval_accuracy"], last["eval_accuracy"]);
}

/// `--method ia3` through compare (its default learning rate) and eval of what it saved.
#[test]
fn ia3_trains_in_compare_and_evaluates_from_its_adapter() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_roberta(d.path(), 16);
    let out = d.path().join("cmp");
    let (tok, glue) = (roberta_dir(), glue_dir());
    peftrain(&[
        "compare",
        "--model",
        model.to_str().unwrap(),
        "--tokenizer",
        tok.to_str().unwrap(),
        "--glue-dir",
        glue.to_str().unwrap(),
        "--task",
        "sst2",
        "--methods",
        "ia3",
        "--train-limit",
        "96",
        "--eval-limit",
        "40",
        "--batch-size",
        "8",
        "--max-steps",
        "12",
        "--logging-steps",
        "4",
        "--eval-steps",
        "6",
        "--output-dir",
        out.to_str().unwrap(),
        "--base-dtype",
        "fp32",
    ]);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.lines().any(|l| l.starts_with("| ia3 |")),
        "report table row for ia3:
{md}"
    );
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("ia3/adapter_config.json")).unwrap()).unwrap();
    assert_eq!((config["peft_type"].as_str(), config["feedforward_modules"].clone()), (Some("IA3"), serde_json::json!(["output.dense"])));
    eval_repeats_the_final_evaluation(&model, &out.join("ia3"));
}
