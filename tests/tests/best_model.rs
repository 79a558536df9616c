//! Choosing the model to keep, as the Trainer does: `--metric-for-best-model` with
//! `--load-best-model-at-end` leaves the best evaluation's weights in the output directory
//! (its checkpoint survives `--save-total-limit`), and `--early-stopping-patience` stops after
//! that many evaluations without an improvement above `--early-stopping-threshold`.

use std::path::Path;

use peftrain_tests::{glue_dir, metrics, peftrain, roberta_dir, tiny_roberta};

fn train(model: &Path, out: &Path, extra: &[&str]) {
    let (tok, glue) = (roberta_dir(), glue_dir());
    let mut args = vec![
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
        "lora",
        "--train-limit",
        "96",
        "--eval-limit",
        "40",
        "--batch-size",
        "8",
        "--max-steps",
        "12",
        "--logging-steps",
        "2",
        "--eval-steps",
        "2",
        "--lr",
        "3e-3",
        "--output-dir",
        out.to_str().unwrap(),
        "--base-dtype",
        "fp32",
    ];
    args.extend_from_slice(extra);
    peftrain(&args);
}

fn evals(out: &Path) -> Vec<(u64, f64)> {
    metrics(out).iter().filter_map(|e| Some((e.get("step")?.as_u64()?, e.get("eval_loss")?.as_f64()?))).collect()
}

#[test]
fn the_best_evaluation_s_weights_are_kept_and_its_checkpoint_survives_rotation() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_roberta(d.path(), 8);
    let out = d.path().join("out");
    // "Best" as the largest validation loss: an early evaluation, not the last step's.
    train(
        &model,
        &out,
        &["--load-best-model-at-end", "--metric-for-best-model", "eval_loss", "--greater-is-better", "true", "--save-total-limit", "1"],
    );
    let ev = evals(&out);
    assert_eq!(ev.len(), 6);
    let (best_step, best_loss) = ev.iter().fold(ev[0], |b, &e| if e.1 > b.1 { e } else { b });
    assert_ne!(best_step, 12, "the test needs a best model before the end: {ev:?}");
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("checkpoint-12/trainer_state.json")).unwrap()).unwrap();
    assert_eq!(state["best_global_step"], best_step);
    assert_eq!(state["best_metric"].as_f64().unwrap(), best_loss);
    let best_dir = out.join(format!("checkpoint-{best_step}"));
    assert!(best_dir.is_dir(), "--save-total-limit never deletes the best checkpoint");
    let mut kept: Vec<String> =
        std::fs::read_dir(&out).unwrap().filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| n.starts_with("checkpoint-")).collect();
    kept.sort();
    assert_eq!(
        kept,
        [format!("checkpoint-{best_step}"), "checkpoint-12".to_string()]
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
    );
    for f in ["trainable.safetensors", "adapter_model.safetensors"] {
        assert_eq!(std::fs::read(out.join(f)).unwrap(), std::fs::read(best_dir.join(f)).unwrap(), "{f} is the best evaluation's");
    }
    // Evaluating the output directory gives the best evaluation again.
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
        out.to_str().unwrap(),
        "--eval-limit",
        "40",
        "--base-dtype",
        "fp32",
    ]);
    let v: serde_json::Value = serde_json::from_str(String::from_utf8(o.stdout).unwrap().trim().lines().last().unwrap()).unwrap();
    assert!((v["eval_loss"].as_f64().unwrap() - best_loss).abs() < 1e-6, "{v} vs the best {best_loss}");
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("run_summary.json")).unwrap()).unwrap();
    assert!((summary["final_eval_loss"].as_f64().unwrap() - best_loss).abs() < 1e-12);
}

#[test]
fn early_stopping_ends_the_run_after_the_patience_runs_out() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_roberta(d.path(), 9);
    let out = d.path().join("out");
    // No evaluation improves the accuracy by more than 100: the first sets the best, the next
    // two use up the patience, and the run ends at step 6 of 12.
    train(&model, &out, &["--early-stopping-patience", "2", "--early-stopping-threshold", "100"]);
    assert_eq!(evals(&out).iter().map(|e| e.0).collect::<Vec<_>>(), [2, 4, 6]);
    let to: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("train_output.json")).unwrap()).unwrap();
    assert_eq!(to["global_step"], 6);
    assert!(out.join("checkpoint-6").is_dir());
    // Without a threshold the same run goes on while the metric improves at all.
    let again = d.path().join("again");
    train(&model, &again, &["--early-stopping-patience", "20"]);
    assert_eq!(evals(&again).last().unwrap().0, 12);
}
