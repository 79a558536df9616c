//! Gradient accumulation equal to the Trainer's: a 30-step LoRA trajectory with
//! `--gradient-accumulation-steps 2` (micro-batches of 4, an epoch of 60 rows ending in a step
//! of one micro-batch) follows Hugging Face's Trainer + peft at the same settings to 1e-4 in
//! every step's loss and in the final weights, over 1 worker (`--per-device-train-batch-size
//! 4`) and 2 (`--batch-size 8`: each micro-batch split in two); and the all-reduce runs once per
//! optimizer step (as many bytes per step as without accumulation).

use std::path::Path;

use peftrain_tests::{assert_follows, glue_dir, last_json, metrics, peftrain, roberta_dir, run_reference, step_losses, tiny_roberta};

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
    let reference = last_json(&printed);
    assert_eq!(reference["losses"].as_array().map(Vec::len), Some(30));
    let runs = [
        ("1 worker", vec!["--max-steps", "30", "--workers", "1", "--per-device-train-batch-size", "4", "--gradient-accumulation-steps", "2"]),
        ("2 workers", vec!["--max-steps", "30", "--workers", "2", "--batch-size", "8", "--gradient-accumulation-steps", "2"]),
    ];
    for (what, extra) in &runs {
        let out = d.path().join(what.replace(' ', "-"));
        let got = ours(&model, &adapter, &out, extra);
        assert_follows(what, &reference, &out, &got);
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
