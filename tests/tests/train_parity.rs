//! Trajectory parity: a tiny RoBERTa, the same initial weights and data order, dropout 0; the
//! first 30 per-step training losses of `peftrain train` equal a reference loop written with
//! HF transformers + peft + torch.optim.AdamW (tests/reference/hf_train.py) within 1e-4, for
//! full fine-tuning, BitFit (both scopes), LoRA and IA3, each computed padding-free (peftrain's CPU
//! default) and on the padded layout transformers uses; and STS-B's regression (one output,
//! MSE, as transformers' `problem_type="regression"`) for full fine-tuning and LoRA.

use std::path::Path;

use peftrain_tests::{glue_dir, max_abs_diff, peftrain, roberta_dir, run_reference, step_losses, tiny_roberta, trainable_weights, values};

const STEPS: usize = 30;
const BATCH: usize = 8;

/// The task of a trajectory: SST-2's classification, or STS-B's regression.
#[derive(Clone, Copy, PartialEq)]
enum Task {
    Sst2,
    Stsb,
}

impl Task {
    fn flag(self) -> &'static str {
        if self == Task::Sst2 {
            "sst2"
        } else {
            "stsb"
        }
    }
    fn tsv(self) -> &'static str {
        if self == Task::Sst2 {
            "SST-2/train.tsv"
        } else {
            "STS-B/train.tsv"
        }
    }
    fn num_labels(self) -> &'static str {
        if self == Task::Sst2 {
            "2"
        } else {
            "1"
        }
    }
}

fn reference(model: &Path, method: &str, scope: &str, adapter: Option<&Path>) -> serde_json::Value {
    reference_on(Task::Sst2, model, method, scope, adapter)
}

fn reference_on(task: Task, model: &Path, method: &str, scope: &str, adapter: Option<&Path>) -> serde_json::Value {
    let tsv = glue_dir().join(task.tsv());
    let tokenizer = roberta_dir();
    let mut args = vec![
        "train",
        "--model",
        model.to_str().unwrap(),
        "--tokenizer",
        tokenizer.to_str().unwrap(),
        "--tsv",
        tsv.to_str().unwrap(),
        "--method",
        method,
        "--scope",
        scope,
        "--num-labels",
        task.num_labels(),
    ];
    if let Some(a) = adapter {
        args.extend(["--adapter", a.to_str().unwrap()]);
    }
    serde_json::from_str(run_reference("hf_train.py", &args).trim()).expect("reference JSON")
}

fn ours(model: &Path, out: &Path, method: &str, scope: &str, adapter: Option<&Path>, workers: usize, padding: &str) -> Vec<f64> {
    ours_on(Task::Sst2, model, out, method, scope, adapter, workers, padding)
}

#[allow(clippy::too_many_arguments)]
fn ours_on(task: Task, model: &Path, out: &Path, method: &str, scope: &str, adapter: Option<&Path>, workers: usize, padding: &str) -> Vec<f64> {
    let limit = (STEPS * BATCH).to_string();
    let workers = workers.to_string();
    let (tokenizer, glue) = (roberta_dir(), glue_dir());
    let mut args = vec![
        "train",
        "--model",
        model.to_str().unwrap(),
        "--tokenizer",
        tokenizer.to_str().unwrap(),
        "--glue-dir",
        glue.to_str().unwrap(),
        "--task",
        task.flag(),
        "--method",
        method,
        "--bitfit-scope",
        scope,
        "--lora-dropout",
        "0",
        "--train-limit",
        &limit,
        "--eval-limit",
        "16",
        "--batch-size",
        "8",
        "--epochs",
        "1",
        "--lr",
        "1e-3",
        "--weight-decay",
        "0.01",
        "--warmup-steps",
        "3",
        "--no-shuffle",
        "--logging-steps",
        "1",
        "--workers",
        &workers,
        "--threads",
        "1",
        "--output-dir",
        out.to_str().unwrap(),
        // fp32: the numbers are compared with Hugging Face's to the digit.
        "--base-dtype",
        "fp32",
        "--padding",
        padding,
    ];
    if let Some(a) = adapter {
        args.extend(["--init-adapter", a.to_str().unwrap()]);
    }
    peftrain(&args);
    step_losses(out)
}

fn check(method: &str, scope: &str) {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_roberta(dir.path(), 11);
    // An adapter method starts both sides from peft's initial adapter.
    let adapter = matches!(method, "lora" | "ia3").then(|| {
        let a = dir.path().join(format!("{method}-init"));
        run_reference("hf_train.py", &[&format!("{method}-init"), "--model", model.to_str().unwrap(), "--out", a.to_str().unwrap(), "--seed", "5"]);
        a
    });
    let reference = reference(&model, method, scope, adapter.as_deref());
    // Both layouts follow the reference: padding-free and padded as transformers computes.
    for padding in ["free", "padded"] {
        let out = dir.path().join(format!("out-{padding}"));
        check_run(
            method,
            &format!("{scope}, --padding {padding}"),
            &reference,
            &out,
            ours(&model, &out, method, scope, adapter.as_deref(), 1, padding),
        );
    }
}

fn check_run(method: &str, scope: &str, reference: &serde_json::Value, out: &Path, got: Vec<f64>) {
    let want: Vec<f64> = reference["losses"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(got.len(), STEPS, "{method}: one loss per step");
    let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(worst <= 1e-4, "{method}/{scope}: losses differ from the reference by up to {worst}\nours {got:?}\nref  {want:?}");
    // The run must actually train: a trajectory that stays flat would match trivially.
    // total_flos as the Trainer defines it: 6 x padded input tokens x non-embedding parameters.
    let flos: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("train_output.json")).unwrap()).unwrap();
    let (ours_flos, ref_flos) = (flos["metrics"]["total_flos"].as_f64().unwrap(), reference["total_flos"].as_f64().unwrap());
    assert!((ours_flos - ref_flos).abs() <= 1e-9 * ref_flos, "{method}/{scope}: total_flos {ours_flos} vs HF {ref_flos}");
    // The updates themselves: after 30 steps at lr 1e-3 the weights moved by ~1e-2, so an
    // optimizer that did nothing (or the wrong thing) cannot pass this.
    let finals = reference["final"].as_object().unwrap();
    let trained = trainable_weights(out);
    assert_eq!(trained.len(), finals.len(), "{method}/{scope}: trainable set differs from the reference's");
    for (name, t) in &trained {
        let r: Vec<f32> =
            finals[name].as_array().unwrap_or_else(|| panic!("reference lacks {name}")).iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let d = max_abs_diff(&values(t), &r);
        assert!(d <= 1e-4, "{method}/{scope}: final {name} differs by {d}");
    }
}

#[test]
fn full_finetuning_follows_the_reference_loop() {
    check("full", "all");
}

#[test]
fn bitfit_follows_the_reference_loop() {
    check("bitfit", "all");
}

#[test]
fn bitfit_bias_only_follows_the_reference_loop() {
    check("bitfit", "bias-only");
}

#[test]
fn lora_follows_the_reference_loop() {
    check("lora", "all");
}

#[test]
fn ia3_follows_the_reference_loop() {
    check("ia3", "all");
}

/// STS-B from a tiny model whose saved head has one output (the same start on both sides).
fn check_regression(method: &str) {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny-regression");
    run_reference(
        "hf_model.py",
        &["tiny", "--family", "roberta", "--out", model.to_str().unwrap(), "--seed", "12", "--num-labels", "1", "--regression"],
    );
    let adapter = (method == "lora").then(|| {
        let a = dir.path().join("lora-init");
        run_reference(
            "hf_train.py",
            &["lora-init", "--model", model.to_str().unwrap(), "--out", a.to_str().unwrap(), "--seed", "5", "--num-labels", "1"],
        );
        a
    });
    let reference = reference_on(Task::Stsb, &model, method, "all", adapter.as_deref());
    for padding in ["free", "padded"] {
        let out = dir.path().join(format!("out-{padding}"));
        let got = ours_on(Task::Stsb, &model, &out, method, "all", adapter.as_deref(), 1, padding);
        check_run(method, &format!("stsb regression, --padding {padding}"), &reference, &out, got);
    }
}

#[test]
fn stsb_regression_full_finetuning_follows_the_reference_loop() {
    check_regression("full");
}

#[test]
fn stsb_regression_lora_follows_the_reference_loop() {
    check_regression("lora");
}
