//! The encoders against Hugging Face transformers: tiny RoBERTa and BERT with random weights
//! written by the reference (logits within 1e-5, every gradient within 1e-4 relative), and the
//! real all-MiniLM-L6-v2 checkpoint on SST-2 dev sentences (logits within 1e-4); both on the
//! padded layout and padding-free.

use std::collections::HashMap;
use std::path::Path;

use peftrain::data::{load_split, Split, Task};
use peftrain::tokenize::TextTokenizer;
use peftrain_tests::{max_abs_diff, minilm_dir, run_reference, values, PaddedBatch};
use peftrain_worker::model::{self, LoadOptions};
use peftrain_worker::peft::Method;
use tch::{Device, Kind, Reduction, Tensor};

fn opts(method: &Method) -> LoadOptions<'_> {
    LoadOptions { method, device: Device::Cpu, base_kind: Kind::Float, num_labels: Some(2), seed: 0, shapes_only: false, random_init: false }
}

/// A deterministic batch of varied lengths (so padding is exercised), avoiding special ids.
fn batch(vocab: i64, pad: i64, pairs: bool) -> PaddedBatch {
    let lengths = [9usize, 17, 4, 17, 12, 6];
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let seqs: Vec<Vec<i64>> =
        lengths.iter().map(|&l| (0..l).map(|_| 5 + (next() % (vocab as u64 - 5)) as i64).filter(|&t| t != pad).collect()).collect();
    let types: Vec<Vec<i64>> = seqs.iter().map(|s| (0..s.len()).map(|j| (j >= s.len() / 2) as i64).collect()).collect();
    let labels = (0..seqs.len() as i64).map(|i| i % 2).collect();
    PaddedBatch::new(&seqs, pairs.then_some(types.as_slice()), Some(labels), pad)
}

fn read_reference(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path).expect("reference output").into_iter().collect()
}

/// Builds the family's tiny model with the reference, runs both, compares logits and grads.
#[derive(PartialEq, Clone, Copy)]
enum Checkpoint {
    /// `*ForSequenceClassification` safetensors with the family prefix and a head.
    Full,
    /// A base model: no prefix, no head.
    BaseOnly,
    /// `pytorch_model.bin` written by torch.save.
    PickledBin,
}

fn check_tiny(family: &str, kind: Checkpoint) {
    let base_only = kind == Checkpoint::BaseOnly;
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("model");
    let md = model_dir.to_str().unwrap();
    let mut args = vec!["tiny", "--family", family, "--out", md, "--seed", "3"];
    if base_only {
        args.push("--base-only");
    }
    if kind == Checkpoint::PickledBin {
        args.push("--bin");
    }
    run_reference("hf_model.py", &args);
    let (vocab, pad, pairs) = if family == "roberta" { (50265, 1, false) } else { (30522, 0, true) };
    let b = batch(vocab, pad, pairs);
    let batch_path = dir.path().join("batch.json");
    b.write(&batch_path);

    let method = Method::Full;
    let loaded = model::load(&model_dir, &opts(&method)).expect("load tiny model");
    if base_only {
        // A base checkpoint has no head: transformers initialises it afresh, and so do we.
        let want: Vec<&str> = if family == "roberta" {
            vec!["classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight", "classifier.out_proj.bias"]
        } else {
            vec!["classifier.weight", "classifier.bias"]
        };
        assert_eq!(loaded.newly_initialized, want);
        return;
    }
    assert!(loaded.newly_initialized.is_empty(), "{:?}", loaded.newly_initialized);
    let ref_path = dir.path().join("ref.safetensors");
    run_reference("hf_model.py", &["forward", "--model", md, "--batch", batch_path.to_str().unwrap(), "--out", ref_path.to_str().unwrap()]);
    let reference = read_reference(&ref_path);

    // Both layouts against the same reference: padded as transformers computes, and
    // padding-free (real tokens only), which must give the same numbers.
    for packed in [false, true] {
        let inputs = if packed { b.inputs().packed() } else { b.inputs() };
        for p in loaded.params.trainable.values() {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        check_against(family, packed, &loaded, &inputs, &b, &reference);
    }
}

fn check_against(
    family: &str,
    packed: bool,
    loaded: &model::Loaded,
    inputs: &model::Inputs,
    b: &PaddedBatch,
    reference: &std::collections::HashMap<String, Tensor>,
) {
    let family = if packed { format!("{family} (padding-free)") } else { family.to_string() };
    let logits = loaded.model.forward(inputs, true);
    let d = max_abs_diff(&values(&logits), &values(&reference["logits"]));
    assert!(d <= 1e-5, "{family}: logits differ from HF by {d}");

    let labels = Tensor::from_slice(b.labels.as_ref().unwrap());
    let loss = logits.cross_entropy_loss::<Tensor>(&labels, None, Reduction::Mean, -100, 0.0);
    let dl = (loss.double_value(&[]) - reference["loss"].double_value(&[0])).abs();
    assert!(dl <= 1e-5, "{family}: loss differs by {dl}");
    loss.backward();
    let mut checked = 0;
    for (name, p) in &loaded.params.trainable {
        let r = reference.get(&format!("grad.{name}")).unwrap_or_else(|| panic!("HF has no gradient for {name}"));
        let grad = p.grad();
        let g = if grad.defined() { values(&grad) } else { vec![0.0; p.numel()] };
        let r = values(r);
        let scale = r.iter().fold(0f32, |m, v| m.max(v.abs()));
        if name.ends_with("attention.self.key.bias") {
            // d loss / d key.bias is exactly zero (softmax is shift-invariant); peftrain keeps it
            // zero, transformers computes summation noise. Both must be negligible next to the
            // query bias's gradient of the same layer.
            let q = values(&reference[&format!("grad.{}", name.replace(".key.", ".query."))]);
            let q_scale = q.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(g.iter().all(|v| *v == 0.0), "{family}: {name} got a gradient");
            assert!(scale <= 1e-4 * q_scale, "{family}: HF's {name} gradient {scale} is not noise next to {q_scale}");
            checked += 1;
            continue;
        }
        let rel = max_abs_diff(&g, &r) / scale.max(1e-12);
        assert!(rel <= 1e-4, "{family}: gradient of {name} differs by {rel} relative (scale {scale})");
        checked += 1;
    }
    let hf_grads = reference.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(checked, hf_grads, "{family}: every HF parameter has a counterpart");
}

#[test]
fn tiny_roberta_matches_transformers() {
    check_tiny("roberta", Checkpoint::Full);
}

#[test]
fn tiny_bert_matches_transformers() {
    check_tiny("bert", Checkpoint::Full);
}

#[test]
fn base_checkpoints_without_prefix_or_head_load() {
    check_tiny("roberta", Checkpoint::BaseOnly);
    check_tiny("bert", Checkpoint::BaseOnly);
}

#[test]
fn pytorch_model_bin_loads() {
    check_tiny("bert", Checkpoint::PickledBin);
}

#[test]
fn dropout_is_active_in_training_and_off_in_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("model");
    let md = model_dir.to_str().unwrap();
    run_reference("hf_model.py", &["tiny", "--family", "roberta", "--out", md, "--seed", "4", "--dropout", "0.1"]);
    let b = batch(50265, 1, false);
    let bp = dir.path().join("batch.json");
    b.write(&bp);
    let rp = dir.path().join("ref.safetensors");
    run_reference("hf_model.py", &["forward", "--model", md, "--batch", bp.to_str().unwrap(), "--out", rp.to_str().unwrap(), "--eval"]);
    let method = Method::Full;
    let m = model::load(&model_dir, &opts(&method)).unwrap();
    let eval = tch::no_grad(|| m.model.forward(&b.inputs(), false));
    let d = max_abs_diff(&values(&eval), &values(&read_reference(&rp)["logits"]));
    assert!(d <= 1e-5, "evaluation (dropout off) differs from HF's eval() by {d}");
    tch::manual_seed(1);
    let t1 = values(&tch::no_grad(|| m.model.forward(&b.inputs(), true)));
    tch::manual_seed(2);
    let t2 = values(&tch::no_grad(|| m.model.forward(&b.inputs(), true)));
    assert!(max_abs_diff(&t1, &t2) > 1e-3, "training forwards with different seeds must differ (dropout on)");
    assert!(max_abs_diff(&t1, &values(&eval)) > 1e-3, "training forward must differ from evaluation");
}

#[test]
fn minilm_logits_match_transformers_on_sst2_dev() {
    let minilm = minilm_dir();
    let tok = TextTokenizer::load(&minilm, 128).expect("MiniLM tokenizer");
    let dev = load_split(&peftrain_tests::glue_dir(), Task::Sst2, Split::Dev).expect("SST-2 dev");
    let enc = tok.encode_all(&dev).expect("tokenize");
    let seqs: Vec<Vec<i64>> = enc.examples.iter().map(|e| e.ids.iter().map(|&i| i as i64).collect()).collect();
    let types: Vec<Vec<i64>> = enc.examples.iter().map(|e| e.type_ids.iter().map(|&i| i as i64).collect()).collect();

    let dir = tempfile::tempdir().unwrap();
    let head_dir = dir.path().join("minilm-cls");
    let mut all_ref = Vec::new();
    let mut all_ours = Vec::new();
    let mut all_packed = Vec::new();
    let mut all_bf16 = Vec::new();
    let mut loaded_bf16 = None;
    let method = Method::Full;
    let mut loaded = None;
    for (k, chunk) in seqs.chunks(256).enumerate() {
        let tchunk = &types[k * 256..k * 256 + chunk.len()];
        let b = PaddedBatch::new(chunk, Some(tchunk), None, 0);
        let bp = dir.path().join(format!("batch{k}.json"));
        let lp = dir.path().join(format!("logits{k}.safetensors"));
        b.write(&bp);
        run_reference(
            "hf_model.py",
            &[
                "head",
                "--model",
                minilm.to_str().unwrap(),
                "--seed",
                "7",
                "--out",
                head_dir.to_str().unwrap(),
                "--batch",
                bp.to_str().unwrap(),
                "--logits",
                lp.to_str().unwrap(),
            ],
        );
        let m = loaded.get_or_insert_with(|| model::load(&head_dir, &opts(&method)).expect("load MiniLM classifier"));
        let logits = tch::no_grad(|| m.model.forward(&b.inputs(), false));
        all_ours.extend(values(&logits));
        all_packed.extend(values(&tch::no_grad(|| m.model.forward(&b.inputs().packed(), false))));
        let mb = loaded_bf16.get_or_insert_with(|| {
            model::load(&head_dir, &LoadOptions { base_kind: Kind::BFloat16, ..opts(&method) }).expect("load MiniLM classifier in bf16")
        });
        all_bf16.extend(values(&tch::no_grad(|| mb.model.forward(&b.inputs().packed(), false))));
        all_ref.extend(values(&read_reference(&lp)["logits"]));
    }
    assert_eq!(all_ours.len(), dev.len() * 2);
    let d = max_abs_diff(&all_ours, &all_ref);
    assert!(d <= 1e-4, "MiniLM logits differ from HF by {d} over {} sentences", dev.len());
    let d = max_abs_diff(&all_packed, &all_ref);
    assert!(d <= 1e-4, "MiniLM logits computed padding-free differ from HF by {d} over {} sentences", dev.len());
    // A bf16 base (8-bit mantissa: ~0.4% per rounding) against HF's fp32: close, and the same
    // predicted class wherever HF's margin is clear.
    let d = max_abs_diff(&all_bf16, &all_ref);
    eprintln!("bf16 base: logits within {d} of HF fp32");
    assert!(d <= 0.05, "MiniLM logits with a bf16 base differ from HF fp32 by {d}");
    for (ours, theirs) in all_bf16.chunks(2).zip(all_ref.chunks(2)) {
        if (theirs[0] - theirs[1]).abs() > 0.1 {
            assert_eq!(ours[0] > ours[1], theirs[0] > theirs[1], "bf16 base flips a clear prediction: {ours:?} vs {theirs:?}");
        }
    }

    // The package's own checkpoint has no `bert.` prefix and no head: it loads, and the head is
    // reported as newly initialised.
    let base = model::load(&minilm, &opts(&method)).expect("load prefix-less MiniLM");
    assert_eq!(base.newly_initialized, vec!["classifier.weight", "classifier.bias"]);
}
