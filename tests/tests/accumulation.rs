//! Gradient accumulation equal to the Trainer's: a 30-step LoRA trajectory with
//! `--gradient-accumulation-steps 2` (micro-batches of 4, an epoch of 60 rows ending in a step
//! of one micro-batch) follows Hugging Face's Trainer + peft at the same settings to 1e-4 in
//! every step's loss and in the final weights, over 1 worker (`--per-device-train-batch-size
//! 4`) and 2 (`--batch-size 8`: each micro-batch split in two); and the all-reduce runs once per
//! optimizer step (as many bytes per step as without accumulation).

use std::path::Path;

use peftrain_tests::{glue_dir, max_abs_diff, metrics, peftrain, roberta_dir, run_reference, step_losses, tiny_roberta, trainable_weights, values};

fn ours(model: &Path, adapter: &Path, out: &Path, extra: &[&str]) -> Vec<f64> {
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
        "--lora-dropout",
        "0",
        "--init-adapter",
        adapter.to_str().unwrap(),
        "--train-limit",
        "60",
        "--eval-limit",
        "16",
        "--lr",
        "1e-3",
        "--weight-decay",
        "0.01",
        "--warmup-steps",
        "3",
        "--no-shuffle",
        "--logging-steps",
        "1",
        "--threads",
        "1",
        "--base-dtype",
        "fp32",
        "--output-dir",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    peftrain(&args);
    step_losses(out)
}

#[test]
fn accumulated_steps_follow_the_trainer_over_one_and_two_workers() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_roberta(d.path(), 13);
    let adapter = d.path().join("lora-init");
    run_reference("hf_train.py", &["lora-init", "--model", model.to_str().unwrap(), "--out", adapter.to_str().unwrap(), "--seed", "5"]);
    let tsv = glue_dir().join("SST-2/train.tsv");
    let tok = roberta_dir();
    // The Trainer prints its own summary first: the reference's JSON is the last line.
    let printed = run_reference(
        "hf_trainer.py",
        &[
            "--model",
            model.to_str().unwrap(),
            "--tokenizer",
            tok.to_str().unwrap(),
            "--tsv",
            tsv.to_str().unwrap(),
            "--adapter",
            adapter.to_str().unwrap(),
            "--limit",
            "60",
            "--per-device-train-batch-size",
            "4",
            "--gradient-accumulation-steps",
            "2",
            "--steps",
            "30",
        ],
    );
    let reference: serde_json::Value = serde_json::from_str(printed.lines().last().unwrap_or("")).unwrap();
    let want: Vec<f64> = reference["losses"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(want.len(), 30);
    let runs = [
        ("1 worker", vec!["--max-steps", "30", "--workers", "1", "--per-device-train-batch-size", "4", "--gradient-accumulation-steps", "2"]),
        ("2 workers", vec!["--max-steps", "30", "--workers", "2", "--batch-size", "8", "--gradient-accumulation-steps", "2"]),
    ];
    for (what, extra) in &runs {
        let out = d.path().join(what.replace(' ', "-"));
        let got = ours(&model, &adapter, &out, extra);
        assert_eq!(got.len(), 30, "{what}");
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(worst <= 1e-4, "{what}: losses differ from the Trainer's by up to {worst}\nours {got:?}\nHF   {want:?}");
        let finals = reference["final"].as_object().unwrap();
        let trained = trainable_weights(&out);
        assert_eq!(trained.len(), finals.len(), "{what}: the trainable set");
        for (name, t) in &trained {
            let r: Vec<f32> = finals[name].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            let diff = max_abs_diff(&values(t), &r);
            assert!(diff <= 1e-4, "{what}: final {name} differs from the Trainer's by {diff}");
        }
    }
    // One all-reduce per optimizer step: the accumulated run moved as many bytes per step as
    // a run of the same global batch without accumulation.
    let plain = d.path().join("plain");
    ours(&model, &adapter, &plain, &["--workers", "2", "--batch-size", "8", "--max-steps", "3"]);
    let bytes = |dir: &Path| metrics(dir).iter().filter_map(|e| e.get("allreduce_bytes")?.as_u64()).next().unwrap();
    let accumulated = bytes(&d.path().join("2-workers"));
    assert!(accumulated > 0);
    assert_eq!(accumulated, bytes(&plain), "an all-reduce per micro-batch would move twice the bytes");
}

#[test]
fn a_batch_that_does_not_split_into_its_micro_batches_is_refused_in_one_line() {
    let d = tempfile::tempdir().unwrap();
    let model = d.path().to_str().unwrap();
    let (code, err) = peftrain_tests::peftrain_fails(&["train", "--model", model, "--batch-size", "10", "--gradient-accumulation-steps", "3"]);
    assert_eq!(code, 2);
    peftrain_tests::assert_one_clear_line(&err, &["--batch-size 10", "--gradient-accumulation-steps 3"]);
    let (code, err) = peftrain_tests::peftrain_fails(&["train", "--model", model, "--per-device-train-batch-size", "0"]);
    assert_eq!(code, 2);
    peftrain_tests::assert_one_clear_line(&err, &["--per-device-train-batch-size 0"]);
}
