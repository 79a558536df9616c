//! Training results do not depend on how many workers ran them, nor on their all-reduce: tiny
//! RoBERTa, dropout 0, same seed and global batch, 30 steps; 1 worker, and 2 and 3 real worker
//! processes on the ring and on halving-doubling, give per-step losses and final trainable
//! weights equal within 1e-5, and the same validation loss and accuracy. Every logged step
//! records the most bytes a worker sent: the ring 4 x trainable x 2(N-1)/N, halving-doubling the
//! same over the largest power of two p <= N plus the whole buffer sent back to a folded
//! worker when p < N, plus framing.

use std::path::Path;

use peftrain_tests::{glue_dir, max_abs_diff, metrics, peftrain, roberta_dir, step_losses, tiny_roberta, trainable_weights, values};

fn run(model: &Path, out: &Path, method: &str, workers: usize, all_reduce: &str) {
    let (tok, glue) = (roberta_dir(), glue_dir());
    let w = workers.to_string();
    peftrain(&[
        "train",
        "--all-reduce",
        all_reduce,
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
        "--lora-dropout",
        "0",
        "--train-limit",
        "240",
        "--eval-limit",
        "48",
        "--batch-size",
        "8",
        "--eval-batch-size",
        "16",
        "--max-steps",
        "30",
        "--lr",
        "1e-3",
        "--weight-decay",
        "0.01",
        "--warmup-steps",
        "3",
        "--logging-steps",
        "1",
        "--eval-steps",
        "10",
        "--workers",
        &w,
        "--threads",
        "1",
        "--base-dtype",
        "fp32",
        "--output-dir",
        out.to_str().unwrap(),
    ]);
}

fn evals(dir: &Path) -> Vec<(f64, f64)> {
    metrics(dir).iter().filter_map(|e| Some((e.get("eval_loss")?.as_f64()?, e.get("eval_accuracy")?.as_f64()?))).collect()
}

fn check_method(method: &str) {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_roberta(d.path(), 21);
    let runs: Vec<(usize, &str)> = vec![(1, "ring"), (2, "ring"), (3, "ring"), (2, "halving-doubling"), (3, "halving-doubling")];
    let dirs: Vec<_> = runs.iter().map(|(n, alg)| d.path().join(format!("w{n}-{alg}"))).collect();
    for ((n, alg), dir) in runs.iter().zip(&dirs) {
        run(&model, dir, method, *n, alg);
    }
    let base_losses = step_losses(&dirs[0]);
    let base_weights = trainable_weights(&dirs[0]);
    let base_evals = evals(&dirs[0]);
    assert_eq!(base_losses.len(), 30);
    assert_eq!(base_evals.len(), 3, "evaluations at steps 10, 20, 30");
    let trainable: usize = base_weights.values().map(|t| t.numel()).sum();
    for ((n, alg), dir) in runs.iter().copied().zip(&dirs) {
        let method = format!("{method} on {alg}");
        let losses = step_losses(dir);
        let worst = losses.iter().zip(&base_losses).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(worst <= 1e-5, "{method}, {n} workers: per-step losses differ from 1 worker by {worst}");
        for (name, t) in trainable_weights(dir) {
            let diff = max_abs_diff(&values(&t), &values(&base_weights[&name]));
            assert!(diff <= 1e-5, "{method}, {n} workers: final {name} differs by {diff}");
        }
        for ((l, a), (bl, ba)) in evals(dir).iter().zip(&base_evals) {
            assert!((l - bl).abs() <= 1e-5, "{method}, {n} workers: eval loss {l} vs {bl}");
            assert_eq!(a, ba, "{method}, {n} workers: eval accuracy");
        }
        // Communication: what one worker sent per step.
        let s = 4.0 * trainable as f64;
        let p = if alg == "ring" { n } else { 1 << (usize::BITS - 1 - n.leading_zeros()) };
        let payload = s * 2.0 * (p as f64 - 1.0) / p as f64 + if p < n { s } else { 0.0 };
        for e in metrics(dir).iter().filter(|e| e.get("loss").is_some()) {
            let bytes = e["allreduce_bytes"].as_f64().unwrap();
            assert!(e["allreduce_ms"].as_f64().is_some());
            if n == 1 {
                assert_eq!(bytes, 0.0, "{method}: a single worker sends nothing");
                assert!(e.get("all_reduce").is_none(), "{method}: a group of one runs no all-reduce");
            } else {
                assert_eq!(e["all_reduce"], alg, "{method}, {n} workers: the group's algorithm is logged");
                // Framing: 5 bytes per gRPC message plus ~40 bytes of chunk header, a few
                // messages per round; segment rounding moves at most a few values.
                assert!(
                    bytes >= payload - 64.0 && bytes <= payload * 1.002 + 2048.0,
                    "{method}, {n} workers: {bytes} bytes sent, expected {payload} plus framing"
                );
            }
        }
    }
}

#[test]
fn full_finetuning_is_independent_of_worker_count() {
    let _serial = peftrain_tests::one_at_a_time();
    check_method("full");
}

#[test]
fn bitfit_is_independent_of_worker_count() {
    let _serial = peftrain_tests::one_at_a_time();
    check_method("bitfit");
}

#[test]
fn lora_is_independent_of_worker_count() {
    let _serial = peftrain_tests::one_at_a_time();
    check_method("lora");
}
