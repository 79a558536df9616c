//! Times forward+backward+AdamW of a replica on random token batches (a profiling aid, not a
//! benchmark of record: see bench/ for those).
//! Usage: step_timing MODEL_DIR METHOD BATCH SEQ STEPS [bf16] [random]   (PADDED=1: padded layout)

use std::time::Instant;

use peftrain_worker::optim::AdamWConfig;
use peftrain_worker::peft::{BitFitScope, LoraConfig, Method};
use peftrain_worker::replica::{Micro, Replica, ReplicaSpec, Shard};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let method = match a[2].as_str() {
        "full" => Method::Full,
        "bitfit" => Method::BitFit(BitFitScope::All),
        _ => Method::Lora(LoraConfig {
            dropout: std::env::var("LORA_DROPOUT").ok().and_then(|v| v.parse().ok()).unwrap_or(0.1),
            ..LoraConfig::default()
        }),
    };
    let (b, l, steps): (usize, usize, usize) = (a[3].parse().unwrap(), a[4].parse().unwrap(), a[5].parse().unwrap());
    let spec = ReplicaSpec {
        model_dir: a[1].clone().into(),
        method,
        num_labels: 2,
        regression: false,
        seed: 0,
        init_adapter: None,
        optimizer: AdamWConfig::default(),
        max_grad_norm: 1.0,
        base_kind: if a.get(6).is_some_and(|s| s == "bf16") { tch::Kind::BFloat16 } else { tch::Kind::Float },
        random_init: a.get(7).is_some_and(|s| s == "random"),
        padding_free: std::env::var("PADDED").is_err(),
    };
    tch::set_num_threads(std::env::var("THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(2));
    let mut r = Replica::build(&spec, tch::Device::Cpu).unwrap();
    // LENGTHS=file of whitespace-separated example lengths: shards of those lengths in turn
    // (real length mixes); otherwise every example is SEQ long.
    let pool: Vec<u32> = std::env::var("LENGTHS")
        .ok()
        .map(|p| std::fs::read_to_string(p).unwrap().split_whitespace().map(|v| v.parse().unwrap()).collect())
        .unwrap_or_else(|| vec![l as u32]);
    let shard_at = |s: usize| {
        let lengths: Vec<u32> = (0..b).map(|i| pool[(s * b + i) % pool.len()]).collect();
        let n: u32 = lengths.iter().sum();
        Shard {
            ids: (0..n).map(|i| 1000 + (i * 7919) % 20000).collect(),
            type_ids: vec![],
            lengths,
            labels: (0..b as i64).map(|i| i % 2).collect(),
            scores: vec![],
        }
    };
    let mut t_fb = 0.0;
    let mut t_rest = 0.0;
    for s in 0..steps + 3 {
        let t0 = Instant::now();
        let shard = shard_at(s);
        let _ = r.forward_backward(&shard, &[Micro { examples: shard.len(), divisor: b as f64 }], peftrain_spec::torch_rng::Mt19937::new(s as u64));
        let t1 = Instant::now();
        let t2 = Instant::now();
        let local = std::env::var("LOCAL").is_ok();
        let g = if local { Vec::new() } else { r.flat_grads() };
        let t3 = Instant::now();
        let norm = if local { r.hold_local(s as u64, 1e-4) } else { r.hold(s as u64, g, 1e-4) };
        let t4 = Instant::now();
        let _ = r.commit(s as u64);
        if s == steps + 2 {
            println!(
                "  flatten {:.1} ms, clip {:.1} ms, adamw {:.1} ms (norm {norm:.3})",
                1e3 * (t3 - t2).as_secs_f64(),
                1e3 * (t4 - t3).as_secs_f64(),
                1e3 * t4.elapsed().as_secs_f64()
            );
        }
        if s >= 3 {
            t_fb += (t1 - t0).as_secs_f64();
            t_rest += t1.elapsed().as_secs_f64();
        }
    }
    println!(
        "fwd+bwd {:.1} ms/step, grads+adamw {:.1} ms/step, {:.1} samples/s",
        1e3 * t_fb / steps as f64,
        1e3 * t_rest / steps as f64,
        (b * steps) as f64 / (t_fb + t_rest)
    );
}
