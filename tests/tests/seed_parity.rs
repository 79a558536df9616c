//! A seed means the same run on both stacks: a tiny RoBERTa checkpoint without a task head,
//! shuffled data, and no initial adapter handed over; `peftrain train --seed S` follows Hugging
//! Face's Trainer seeded with S (run_glue.py's order: `set_seed`, the model with its new head,
//! peft's LoRA, the Trainer's shuffled sampler, its dropout masks) to 1e-4 in every step's loss
//! and in the final weights, over three epochs (three epoch orders) with an evaluation at each
//! epoch's end. Only the same head, the same LoRA A, the same batches in the same order and,
//! with dropout on, the same masks can give that.

use std::path::{Path, PathBuf};

use peftrain_tests::{assert_follows, glue_dir, last_json, peftrain, roberta_dir, run_reference, step_losses};

const ROWS: usize = 40;
const BATCH: usize = 8;
const STEPS: usize = 3 * ROWS / BATCH;

/// A tiny RoBERTa whose checkpoint holds the encoder only: both stacks draw the head.
fn base_only(dir: &Path, dropout: f64) -> PathBuf {
    let out = dir.join("tiny-roberta-base");
    let p = dropout.to_string();
    run_reference("hf_model.py", &["tiny", "--family", "roberta", "--out", out.to_str().unwrap(), "--seed", "17", "--base-only", "--dropout", &p]);
    out
}

fn trainer(model: &Path, method: &str, seed: u64, lora_dropout: f64) -> serde_json::Value {
    let (tsv, dev, tok) = (glue_dir().join("SST-2/train.tsv"), glue_dir().join("SST-2/dev.tsv"), roberta_dir());
    let (rows, steps, seed, p) = (ROWS.to_string(), STEPS.to_string(), seed.to_string(), lora_dropout.to_string());
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
            "--lora-dropout",
            &p,
            "--eval-tsv",
            dev.to_str().unwrap(),
        ],
    );
    last_json(&printed)
}

fn ours(model: &Path, method: &str, seed: u64, lora_dropout: f64, workers: usize, out: &Path) -> Vec<f64> {
    let (tok, glue) = (roberta_dir(), glue_dir());
    let (rows, seed, workers, p) = (ROWS.to_string(), seed.to_string(), workers.to_string(), lora_dropout.to_string());
    #[rustfmt::skip]
    let args = [
        "train", "--model", model.to_str().unwrap(), "--tokenizer", tok.to_str().unwrap(),
        "--glue-dir", glue.to_str().unwrap(), "--task", "sst2", "--method", method, "--lora-dropout", &p,
        "--train-limit", &rows, "--eval-limit", "16", "--batch-size", "8", "--epochs", "3", "--lr", "1e-3",
        "--weight-decay", "0.01", "--warmup-steps", "3", "--seed", &seed, "--logging-steps", "1",
        "--workers", &workers, "--threads", "1", "--base-dtype", "fp32", "--output-dir", out.to_str().unwrap(),
    ];
    peftrain(&args);
    step_losses(out)
}

/// `dropout`: the model's hidden and attention dropout and LoRA's.
fn check(method: &str, seed: u64, dropout: f64, workers: &[usize]) {
    let d = tempfile::tempdir().unwrap();
    let model = base_only(d.path(), dropout);
    let reference = trainer(&model, method, seed, dropout);
    assert_eq!(reference["losses"].as_array().map(Vec::len), Some(STEPS));
    for &n in workers {
        let what = format!("{method}, seed {seed}, dropout {dropout}, {n} worker(s)");
        let out = d.path().join(format!("out-{n}"));
        let got = ours(&model, method, seed, dropout, n, &out);
        assert_follows(&what, &reference, &out, &got);
    }
}

/// The head (dense and out_proj drawn in module order) and every LoRA A (after peft's
/// constructor draws) as peft draws them, and the Trainer's batches; the order is the
/// coordinator's, so two workers see the same batches (dropout off: with it, each rank draws
/// its own masks, as a torchrun rank does).
#[test]
fn a_lora_run_follows_the_trainer_seeded_alike() {
    check("lora", 7, 0.0, &[1, 2]);
}

/// With dropout in the embeddings, attention, hidden states, head and LoRA: the masks are the
/// ones the Trainer's generator draws over its padded batches, epoch and evaluation iterators
/// drawing their base seeds between them, though peftrain computes padding-free. Where torch
/// hands `bernoulli_` to MKL (Intel CPUs) its masks come from another generator, and only the
/// serial kernel's stream is checked (against a Python rendering of it).
#[test]
fn a_lora_run_with_dropout_follows_the_trainer_seeded_alike() {
    if !torch_draws_serially() {
        eprintln!("torch's CPU bernoulli_ uses MKL on this CPU: the Trainer's masks are another generator's; skipped");
        return;
    }
    check("lora", 7, 0.1, &[1]);
}

/// Full fine-tuning: the head's draws and the data order alone, then with dropout.
#[test]
fn a_full_finetuning_run_follows_the_trainer_seeded_alike() {
    check("full", 1234, 0.0, &[1]);
    if torch_draws_serially() {
        check("full", 1234, 0.1, &[1]);
    }
}

/// Whether this torch's `bernoulli_` on the CPU is ATen's serial kernel over mt19937 (the one
/// peftrain's masks follow), as the reference checks against its own rendering of it.
fn torch_draws_serially() -> bool {
    let printed = run_reference("bernoulli.py", &["--seed", "5", "--n", "10"]);
    let v: serde_json::Value = serde_json::from_str(printed.trim()).expect("reference JSON");
    v["torch_is_serial"].as_bool().expect("torch_is_serial")
}

/// The masks' stream: `torch.empty(n).bernoulli_(1 - p)` after `manual_seed(s)`, from any
/// position (a draw across the generator's 624-word blocks, and after an odd number of
/// outputs), against the serial kernel rendered in Python and, where torch runs it, torch.
#[test]
fn dropout_masks_are_torchs_bernoulli() {
    use peftrain_spec::torch_rng::Mt19937;
    for (seed, skip, n, keep) in [(5u64, 0u64, 5000usize, 0.9), (42, 1, 1000, 0.9), (7, 623, 700, 0.75), ((1 << 32) + 3, 4, 333, 0.5)] {
        let args = [("--seed", seed.to_string()), ("--skip", skip.to_string()), ("--n", n.to_string()), ("--keep", keep.to_string())];
        let args: Vec<&str> = args.iter().flat_map(|(f, v)| [*f, v.as_str()]).collect();
        let printed = run_reference("bernoulli.py", &args);
        let v: serde_json::Value = serde_json::from_str(printed.trim()).expect("reference JSON");
        let mut g = Mt19937::new(seed);
        g.skip(skip);
        let mut ours = vec![0f32; n];
        g.bernoulli_fill(&mut ours, keep, 1.0);
        let want = |k: &str| v[k].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect::<Vec<_>>();
        assert_eq!(ours, want("serial"), "seed {seed}, after {skip} outputs: the serial kernel");
        if v["torch_is_serial"].as_bool() == Some(true) {
            assert_eq!(ours, want("torch"), "seed {seed}, after {skip} outputs: torch");
        }
    }
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
