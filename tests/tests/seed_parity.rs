//! A seed means the same run on both stacks: a tiny RoBERTa checkpoint without a task head,
//! shuffled data, dropout 0, and no initial adapter handed over; `peftrain train --seed S`
//! follows Hugging Face's Trainer seeded with S (run_glue.py's order: `set_seed`, the model
//! with its new head, peft's LoRA, the Trainer's shuffled sampler) to 1e-4 in every step's loss
//! and in the final weights, over three epochs (three epoch orders). Only the same head, the
//! same LoRA A and the same batches in the same order can give that. Dropout masks are the one
//! draw left unequal (peftrain draws its own, see ops/dropout.rs).

use std::path::{Path, PathBuf};

use peftrain_tests::{assert_follows, glue_dir, last_json, peftrain, roberta_dir, run_reference, step_losses};

const ROWS: usize = 40;
const BATCH: usize = 8;
const STEPS: usize = 3 * ROWS / BATCH;

/// A tiny RoBERTa whose checkpoint holds the encoder only: both stacks draw the head.
fn base_only(dir: &Path) -> PathBuf {
    let out = dir.join("tiny-roberta-base");
    run_reference("hf_model.py", &["tiny", "--family", "roberta", "--out", out.to_str().unwrap(), "--seed", "17", "--base-only"]);
    out
}

fn trainer(model: &Path, method: &str, seed: u64) -> serde_json::Value {
    let (tsv, tok) = (glue_dir().join("SST-2/train.tsv"), roberta_dir());
    let (rows, steps, seed) = (ROWS.to_string(), STEPS.to_string(), seed.to_string());
    let printed = run_reference(
        "hf_trainer.py",
        &[
            "--model",
            model.to_str().unwrap(),
            "--tokenizer",
            tok.to_str().unwrap(),
            "--tsv",
            tsv.to_str().unwrap(),
            "--method",
            method,
            "--seed",
            &seed,
            "--limit",
            &rows,
            "--per-device-train-batch-size",
            "8",
            "--gradient-accumulation-steps",
            "1",
            "--steps",
            &steps,
        ],
    );
    last_json(&printed)
}

fn ours(model: &Path, method: &str, seed: u64, workers: usize, out: &Path) -> Vec<f64> {
    let (tok, glue) = (roberta_dir(), glue_dir());
    let (rows, seed, workers) = (ROWS.to_string(), seed.to_string(), workers.to_string());
    #[rustfmt::skip]
    let args = [
        "train", "--model", model.to_str().unwrap(), "--tokenizer", tok.to_str().unwrap(),
        "--glue-dir", glue.to_str().unwrap(), "--task", "sst2", "--method", method, "--lora-dropout", "0",
        "--train-limit", &rows, "--eval-limit", "16", "--batch-size", "8", "--epochs", "3", "--lr", "1e-3",
        "--weight-decay", "0.01", "--warmup-steps", "3", "--seed", &seed, "--logging-steps", "1",
        "--workers", &workers, "--threads", "1", "--base-dtype", "fp32", "--output-dir", out.to_str().unwrap(),
    ];
    peftrain(&args);
    step_losses(out)
}

fn check(method: &str, seed: u64, workers: &[usize]) {
    let d = tempfile::tempdir().unwrap();
    let model = base_only(d.path());
    let reference = trainer(&model, method, seed);
    assert_eq!(reference["losses"].as_array().map(Vec::len), Some(STEPS));
    for &n in workers {
        let what = format!("{method}, seed {seed}, {n} worker(s)");
        let out = d.path().join(format!("out-{n}"));
        let got = ours(&model, method, seed, n, &out);
        assert_follows(&what, &reference, &out, &got);
    }
}

/// The head (dense and out_proj drawn in module order) and every LoRA A (after peft's
/// constructor draws) as peft draws them, and the Trainer's batches; the order is the
/// coordinator's, so two workers see the same batches.
#[test]
fn a_lora_run_follows_the_trainer_seeded_alike() {
    check("lora", 7, &[1, 2]);
}

/// Full fine-tuning: the head's draws and the data order alone.
#[test]
fn a_full_finetuning_run_follows_the_trainer_seeded_alike() {
    check("full", 1234, &[1]);
}

/// The epoch order is torch.randperm's for `seed + epoch` (SST-2's size; a seed past 2^32,
/// which torch's generator takes modulo 2^32).
#[test]
fn the_epoch_order_is_torchs_randperm() {
    let n = 67_349;
    let seeds = [42u64, 43, (1 << 32) + 42, 0];
    let list = seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    let printed = run_reference("randperm.py", &["--n", &n.to_string(), "--seeds", &list]);
    let torch: serde_json::Value = serde_json::from_str(printed.trim()).expect("reference JSON");
    for s in seeds {
        let want: Vec<usize> = torch[s.to_string()].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(peftrain::sampler::epoch_order(n, s, 0, true), want, "seed {s}");
    }
    // Epoch e of seed s is seed s + e's first epoch, as accelerate reseeds its sampler.
    assert_eq!(peftrain::sampler::epoch_order(n, 42, 1, true), peftrain::sampler::epoch_order(n, 43, 0, true));
}
