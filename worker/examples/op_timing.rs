//! Times single ops on CPU tensors of a MiniLM-sized step (a profiling aid).
use std::time::Instant;
use tch::{Kind, Tensor};

fn time(name: &str, f: impl Fn() -> Tensor) {
    for _ in 0..5 {
        let _ = f();
    }
    let t = Instant::now();
    for _ in 0..100 {
        let _ = f();
    }
    println!("{name}: {:.1} us", t.elapsed().as_secs_f64() * 1e4);
}

fn main() {
    tch::set_num_threads(1);
    let x = Tensor::randn([208, 384], (Kind::Float, tch::Device::Cpu));
    time("tch dropout", || x.dropout(0.1, true));
    let mut stream = peftrain_spec::torch_rng::Mt19937::new(42);
    let mut out = vec![0f32; 208 * 384];
    let t = Instant::now();
    for _ in 0..100 {
        stream.bernoulli_fill(&mut out, 0.9, 1.0 / 0.9);
    }
    println!("torch-order mask alone: {:.1} us", t.elapsed().as_secs_f64() * 1e4);
    let xb = x.to_kind(Kind::BFloat16);
    let w = Tensor::randn([384, 384], (Kind::BFloat16, tch::Device::Cpu));
    time("linear bf16", || xb.linear::<Tensor>(&w, None));
    time("layer_norm", || x.layer_norm([384], None::<Tensor>, None::<Tensor>, 1e-12, true));
    let x4 = Tensor::randn([208, 1536], (Kind::Float, tch::Device::Cpu));
    time("gelu 1536", || x4.gelu("none"));
    time("to bf16", || x.to_kind(Kind::BFloat16));
}
