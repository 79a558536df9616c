//! Dropout as `torch.nn.Dropout` computes it (zero with probability p, scale the rest by
//! 1/(1-p)), with the mask drawn on the host when the tensor lives there.
//!
//! libtorch's CPU dropout draws one mt19937 Bernoulli per element at about 9 ns each: for
//! MiniLM on SST-2 that was a sixth of a training step, more than the query projection's
//! matmul. A SplitMix64 stream gives two 32-bit uniforms per 64-bit draw at well under a
//! nanosecond; keep-if-uniform ≥ p·2^32 has the same resolution as torch's float uniforms.
//! On a GPU libtorch's own kernel is used (a host mask would be a copy per call).

use std::cell::Cell;

use tch::{Device, Kind, Tensor};

thread_local! {
    static STATE: Cell<u64> = const { Cell::new(0x9E37_79B9_7F4A_7C15) };
}

/// Seeds the host dropout stream of this thread (one per training step, beside
/// `tch::manual_seed` for the dropout libtorch still draws: attention probabilities, GPUs).
pub fn seed(seed: u64) {
    STATE.with(|s| s.set(seed ^ 0x5DEE_CE66_D1CE_4E5B));
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `n` mask values: 0 with probability `p`, else 1/(1-p).
pub fn mask(n: usize, p: f64) -> Vec<f32> {
    let mut out = vec![0f32; n];
    fill_mask(&mut out, p);
    out
}

/// Fills `out` with the next mask values of this thread's stream.
fn fill_mask(out: &mut [f32], p: f64) {
    let threshold = (p * 4_294_967_296.0).round().min(u32::MAX as f64) as u32;
    let keep = (1.0 / (1.0 - p)) as f32;
    // Branch-free: a kept element is `keep * 1.0`, a dropped one `keep * 0.0`.
    let pick = |u: u32| keep * ((u >= threshold) as u32 as f32);
    STATE.with(|s| {
        let mut state = s.get();
        let mut pairs = out.chunks_exact_mut(2);
        for pair in &mut pairs {
            let r = splitmix64(&mut state);
            pair[0] = pick(r as u32);
            pair[1] = pick((r >> 32) as u32);
        }
        if let [last] = pairs.into_remainder() {
            *last = pick(splitmix64(&mut state) as u32);
        }
        s.set(state);
    })
}

/// `x` with dropout `p` when `train`. On the CPU the result is fp32 whatever `x`'s dtype (the
/// mask multiplies in fp32; every caller adds it to the fp32 residual stream or feeds an fp32
/// adapter next).
pub fn dropout(x: &Tensor, p: f64, train: bool) -> Tensor {
    if !train || p <= 0.0 {
        return x.shallow_clone();
    }
    if x.device() != Device::Cpu || p >= 1.0 {
        return x.dropout(p, train);
    }
    // Drawn straight into the tensor's storage: no intermediate vector to copy.
    let m = Tensor::empty(x.size().as_slice(), (Kind::Float, Device::Cpu));
    // SAFETY: a fresh contiguous fp32 CPU tensor of x.numel() elements, written only here.
    fill_mask(unsafe { std::slice::from_raw_parts_mut(m.data_ptr() as *mut f32, x.numel()) }, p);
    if x.kind() == Kind::Float {
        x * m
    } else {
        x.to_kind(Kind::Float) * m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_drops_p_and_scales_the_rest() {
        seed(7);
        let m = mask(1_000_001, 0.1);
        assert_eq!(m.len(), 1_000_001);
        let dropped = m.iter().filter(|v| **v == 0.0).count() as f64 / m.len() as f64;
        // Binomial standard deviation at n = 1e6 is 3e-4.
        assert!((dropped - 0.1).abs() < 1.5e-3, "dropped {dropped}");
        assert!(m.iter().all(|v| *v == 0.0 || *v == (1.0f64 / 0.9) as f32));
        seed(7);
        assert_eq!(mask(1000, 0.1), m[..1000].to_vec(), "the same seed draws the same mask");
        seed(8);
        assert_ne!(mask(1000, 0.1), m[..1000].to_vec());
    }
}
