//! What users read and keep: the live step table, metrics.jsonl with the Trainer's field names,
//! TrainOutput, the trainable weights, and `peftrain predict` in GLUE's submission form, whose
//! logits Hugging Face + peft reproduce from the saved adapter.

use std::path::Path;

use peftrain_tests::{glue_dir, max_abs_diff, metrics, peftrain, roberta_dir, run_reference, tiny_roberta};

fn train(model: &Path, out: &Path, method: &str) -> String {
    let (tok, glue) = (roberta_dir(), glue_dir());
    let o = peftrain(&[
        "train", "--model", model.to_str().unwrap(), "--tokenizer", tok.to_str().unwrap(), "--glue-dir", glue.to_str().unwrap(),
        "--task", "sst2", "--method", method, "--train-limit", "96", "--eval-limit", "40", "--batch-size", "8",
        "--max-steps", "12", "--warmup-steps", "2", "--lr", "1e-3", "--logging-steps", "4", "--eval-steps", "6",
        "--output-dir", out.to_str().unwrap(),
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
    let steps: Vec<&str> = lines[h + 1..].iter().take_while(|l| !l.starts_with("TrainOutput")).map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(steps, ["4", "6", "8", "12"], "rows at logging and evaluation steps:\n{stdout}");
    let row6 = lines[h + 2];
    assert_eq!(row6.split_whitespace().count(), 4, "step 6 shows the last training loss and the evaluation: {row6}");
    assert!(lines.last().unwrap().starts_with("TrainOutput(global_step=12, training_loss="), "{stdout}");
    for key in ["'train_runtime': ", "'train_samples_per_second': ", "'train_steps_per_second': ", "'total_flos': ", "'train_loss': ", "'epoch': 1.0"] {
        assert!(lines.last().unwrap().contains(key), "TrainOutput lacks {key}");
    }

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

fn predict_and_compare(method: &str, via: &str) {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_roberta(d.path(), 3);
    let out = d.path().join("out");
    train(&model, &out, method);
    let preds = d.path().join("preds.tsv");
    let (tok, glue) = (roberta_dir(), glue_dir());
    peftrain(&[
        "predict", "--model", model.to_str().unwrap(), "--tokenizer", tok.to_str().unwrap(), "--glue-dir", glue.to_str().unwrap(),
        "--task", "sst2", "--adapter", out.to_str().unwrap(), "--split", "test", "--eval-limit", "50", "--with-logits",
        "--output", preds.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&preds).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("index\tprediction\tlogits"));
    let mut ours = Vec::new();
    for (i, l) in lines.enumerate() {
        let f: Vec<&str> = l.split('\t').collect();
        assert_eq!(f[0], i.to_string(), "GLUE test index");
        let logits: Vec<f32> = f[2].split(',').map(|v| v.parse().unwrap()).collect();
        let argmax = if logits[1] > logits[0] { "1" } else { "0" };
        assert_eq!(f[1], argmax, "prediction is the argmax of the logits");
        ours.extend(logits);
    }
    assert_eq!(ours.len(), 100);
    let reference: serde_json::Value = serde_json::from_str(
        run_reference(
            "hf_predict.py",
            &["--model", model.to_str().unwrap(), "--tokenizer", tok.to_str().unwrap(), "--adapter", out.to_str().unwrap(),
              "--tsv", glue.join("SST-2/test.tsv").to_str().unwrap(), "--limit", "50", "--via", via],
        )
        .trim(),
    )
    .unwrap();
    let theirs: Vec<f32> = reference["logits"].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32)).collect();
    let diff = max_abs_diff(&ours, &theirs);
    assert!(diff <= 1e-4, "{method}: predict's logits differ from HF ({via}) by {diff}");
}

#[test]
fn predict_lora_matches_peft_from_the_saved_adapter() {
    predict_and_compare("lora", "peft");
}

#[test]
fn predict_bitfit_matches_transformers_with_the_saved_weights() {
    predict_and_compare("bitfit", "state-dict");
}
