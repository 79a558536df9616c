//! AdamW over the trainable set only, written step by step as `torch.optim.AdamW` computes it
//! (single-tensor path, operation for operation), with `clip_grad_norm_`'s coefficient applied
//! as the gradient is read: a fused loop on the CPU, flat-buffer tensor ops on a device.

use std::collections::BTreeMap;

use tch::{Kind, Tensor};

/// Optimizer hyper-parameters (the Trainer's defaults: betas 0.9/0.999, eps 1e-8).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// Whether a parameter gets weight decay: the Trainer exempts biases and LayerNorm weights.
pub fn decays(name: &str) -> bool {
    !(name.ends_with("bias") || name.contains("LayerNorm") || name.contains("layer_norm"))
}

/// First and second moments of one parameter.
pub struct Moments {
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
}

pub struct AdamW {
    pub config: AdamWConfig,
    /// All first and second moments as two flat buffers in sorted-name order (the per-name
    /// `state` entries are views into them), so the device path updates everything with a
    /// handful of kernels.
    pub flat_exp_avg: Tensor,
    pub flat_exp_avg_sq: Tensor,
    /// Number of updates taken (torch's `state['step']`, shared by all parameters here because
    /// every parameter is updated at every step).
    pub step: u64,
    /// Moments in sorted-name order, like the trainable set.
    pub state: BTreeMap<String, Moments>,
}

impl AdamW {
    pub fn new(config: AdamWConfig, params: &BTreeMap<String, Tensor>) -> AdamW {
        let n: i64 = params.values().map(|p| p.numel() as i64).sum();
        let device = params.values().next().map(|p| p.device()).unwrap_or(tch::Device::Cpu);
        let flat_exp_avg = Tensor::zeros([n], (Kind::Float, device));
        let flat_exp_avg_sq = Tensor::zeros([n], (Kind::Float, device));
        let mut off = 0i64;
        let state = params
            .iter()
            .map(|(name, p)| {
                let k = p.numel() as i64;
                let m = Moments {
                    exp_avg: flat_exp_avg.narrow(0, off, k).view(p.size().as_slice()),
                    exp_avg_sq: flat_exp_avg_sq.narrow(0, off, k).view(p.size().as_slice()),
                };
                off += k;
                (name.clone(), m)
            })
            .collect();
        AdamW {
            config,
            flat_exp_avg,
            flat_exp_avg_sq,
            step: 0,
            state,
        }
    }

    /// The update over flat buffers, with tensor ops on the parameters' device: `params` is
    /// the flat storage of every trainable parameter, `grads` the flat (reduced) gradient,
    /// `decay` a 0/1 mask of where weight decay applies. The ops and their order are torch's
    /// single-tensor AdamW, applied once to everything instead of once per tensor.
    pub fn step_device(&mut self, params: &Tensor, grads: &Tensor, decay: Option<&Tensor>, clip_coef: f64, lr: f64) {
        self.step += 1;
        let c = self.config;
        let bias_correction1 = 1.0 - c.beta1.powi(self.step as i32);
        let bias_correction2 = 1.0 - c.beta2.powi(self.step as i32);
        let step_size = lr / bias_correction1;
        let bc2_sqrt = bias_correction2.sqrt();
        tch::no_grad(|| {
            let g = if clip_coef < 1.0 { grads * clip_coef } else { grads.shallow_clone() };
            let mut p = params.shallow_clone();
            if c.weight_decay != 0.0 {
                if let Some(mask) = decay {
                    let _ = p.g_mul_(&(mask * (-lr * c.weight_decay) + 1.0));
                }
            }
            let _ = self.flat_exp_avg.lerp_(&g, 1.0 - c.beta1);
            let _ = self.flat_exp_avg_sq.g_mul_scalar_(c.beta2);
            let _ = self.flat_exp_avg_sq.g_add_(&(&g * &g * (1.0 - c.beta2)));
            let denom = self.flat_exp_avg_sq.sqrt() / bc2_sqrt + c.eps;
            let _ = p.g_sub_(&(&self.flat_exp_avg / denom * step_size));
        });
    }
}

/// A CPU fp32 tensor's values as a mutable slice. The caller guarantees the tensor is a
/// contiguous fp32 tensor on the CPU that nothing else touches for the slice's lifetime.
unsafe fn cpu_slice<'a>(t: &'a Tensor) -> &'a mut [f32] {
    std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, t.numel())
}

/// Whether the fused CPU path applies: every parameter and moment a contiguous fp32 CPU
/// tensor.
pub fn fusable(params: &BTreeMap<String, Tensor>, opt: &AdamW) -> bool {
    params.values().chain(opt.state.values().flat_map(|m| [&m.exp_avg, &m.exp_avg_sq])).all(|t| {
        t.device() == tch::Device::Cpu && t.kind() == Kind::Float && t.is_contiguous()
    })
}

impl AdamW {
    /// The update fused into one pass over each parameter on the CPU, reading
    /// the gradients from the flat (reduced) buffer in sorted-name order and scaling them by
    /// the clip coefficient on the way: one read of grads and one read-write of weights and
    /// moments instead of a dozen tensor passes. The arithmetic is torch's, operation for
    /// operation, in fp32.
    pub fn step_flat(&mut self, params: &BTreeMap<String, Tensor>, grads: &[f32], clip_coef: f32, lr: f64, threads: usize) {
        let mut off = 0usize;
        let slices: Vec<&[f32]> = params
            .values()
            .map(|p| {
                let s = &grads[off..off + p.numel()];
                off += p.numel();
                s
            })
            .collect();
        self.step_fused(params, &slices, clip_coef, lr, threads);
    }

    /// The fused update reading each parameter's own `.grad` (a group of one: nothing was
    /// exchanged, so nothing is copied).
    pub fn step_grads(&mut self, params: &BTreeMap<String, Tensor>, clip_coef: f32, lr: f64, threads: usize) {
        let grads: Vec<Tensor> = params.values().map(|p| p.grad()).collect();
        // SAFETY: `grads_fusable` checked contiguous fp32 CPU gradients; they are read only.
        let slices: Vec<&[f32]> = grads.iter().map(|g| unsafe { &*cpu_slice(g) }).collect();
        self.step_fused(params, &slices, clip_coef, lr, threads);
    }

    fn step_fused(&mut self, params: &BTreeMap<String, Tensor>, grads: &[&[f32]], clip_coef: f32, lr: f64, threads: usize) {
        self.step += 1;
        let c = self.config;
        let bias_correction1 = 1.0 - c.beta1.powi(self.step as i32);
        let bias_correction2 = 1.0 - c.beta2.powi(self.step as i32);
        let step_size = (lr / bias_correction1) as f32;
        let bc2_sqrt = bias_correction2.sqrt() as f32;
        let (b1w, b2, b2c, eps) = ((1.0 - c.beta1) as f32, c.beta2 as f32, (1.0 - c.beta2) as f32, c.eps as f32);
        for ((name, p), g) in params.iter().zip(grads) {
            let Some(m) = self.state.get(name) else { continue };
            let n = p.numel();
            let g = *g;
            let decay = if c.weight_decay != 0.0 && decays(name) { (1.0 - lr * c.weight_decay) as f32 } else { 1.0 };
            // SAFETY: `fusable` checked contiguous fp32 CPU tensors; the optimizer owns the
            // moments and the replica's thread owns the parameters during the step.
            let (p, ea, es) = unsafe { (cpu_slice(p), cpu_slice(&m.exp_avg), cpu_slice(&m.exp_avg_sq)) };
            let update = |p: &mut [f32], ea: &mut [f32], es: &mut [f32], g: &[f32]| {
                for i in 0..p.len() {
                    let gi = g[i] * clip_coef;
                    if decay != 1.0 {
                        p[i] *= decay;
                    }
                    ea[i] += b1w * (gi - ea[i]);
                    es[i] = es[i] * b2 + b2c * gi * gi;
                    let denom = es[i].sqrt() / bc2_sqrt + eps;
                    p[i] -= step_size * (ea[i] / denom);
                }
            };
            let parts = threads.max(1).min(n / (1 << 16)).max(1);
            if parts == 1 {
                update(p, ea, es, g);
            } else {
                let chunk = n.div_ceil(parts);
                std::thread::scope(|s| {
                    for (((p, ea), es), g) in p.chunks_mut(chunk).zip(ea.chunks_mut(chunk)).zip(es.chunks_mut(chunk)).zip(g.chunks(chunk)) {
                        s.spawn(move || update(p, ea, es, g));
                    }
                });
            }
        }
    }
}

/// Whether every trainable parameter has a contiguous fp32 CPU gradient.
pub fn grads_fusable(params: &BTreeMap<String, Tensor>) -> bool {
    params.values().all(|p| {
        let g = p.grad();
        g.defined() && g.device() == tch::Device::Cpu && g.kind() == Kind::Float && g.is_contiguous()
    })
}

/// The norm of the gradients and the clip coefficient, without scaling them (the fused
/// update applies the coefficient as it reads each gradient).
pub fn grad_norm_coef(params: &BTreeMap<String, Tensor>, max_norm: f64) -> (f64, f32) {
    tch::no_grad(|| {
        let norms: Vec<Tensor> = params.values().map(|p| p.grad()).filter(|g| g.defined()).map(|g| g.norm().to_kind(Kind::Float)).collect();
        if norms.is_empty() {
            return (0.0, 1.0);
        }
        let total = Tensor::stack(&norms, 0).norm().double_value(&[]);
        let coef = if max_norm > 0.0 && total.is_finite() { (max_norm / (total + 1e-6)).min(1.0) } else { 1.0 };
        (total, coef as f32)
    })
}

/// The clip coefficient and norm for a flat gradient buffer laid out as `params` (norm of the
/// per-tensor norms, as clip_grad_norm_ computes it).
pub fn flat_clip(params: &BTreeMap<String, Tensor>, grads: &[f32], max_norm: f64) -> (f64, f32) {
    let mut off = 0usize;
    let mut sq = 0f64;
    for p in params.values() {
        let n = p.numel();
        let t: f64 = grads[off..off + n].iter().map(|&x| (x as f64) * (x as f64)).sum();
        sq += t;
        off += n;
    }
    let total = sq.sqrt();
    let coef = if max_norm > 0.0 && total.is_finite() { (max_norm / (total + 1e-6)).min(1.0) } else { 1.0 };
    (total, coef as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(seed: i64) -> BTreeMap<String, Tensor> {
        tch::manual_seed(seed);
        [("a.bias", vec![5i64]), ("a.weight", vec![5, 3]), ("b.LayerNorm.weight", vec![7])]
            .into_iter()
            .map(|(n, s)| (n.to_string(), Tensor::randn(s.as_slice(), (Kind::Float, tch::Device::Cpu))))
            .collect()
    }

    /// The device path (tensor ops over flat buffers) and the fused CPU loop compute the same
    /// update, weight decay and clipping included, over several steps.
    #[test]
    fn device_and_fused_paths_agree() {
        let cfg = AdamWConfig { weight_decay: 0.1, ..Default::default() };
        let (pa, pb) = (params(1), params(1));
        let (mut oa, mut ob) = (AdamW::new(cfg, &pa), AdamW::new(cfg, &pb));
        let flat = |ps: &BTreeMap<String, Tensor>| Tensor::cat(&ps.values().map(|p| p.reshape([-1])).collect::<Vec<_>>(), 0);
        let mask = Tensor::cat(&pa.iter().map(|(n, p)| Tensor::full([p.numel() as i64], if decays(n) { 1.0 } else { 0.0 }, (Kind::Float, tch::Device::Cpu))).collect::<Vec<_>>(), 0);
        for step in 0..4 {
            tch::manual_seed(100 + step);
            let g = Tensor::randn([flat(&pa).numel() as i64], (Kind::Float, tch::Device::Cpu));
            let mut gv = vec![0f32; g.numel()];
            g.copy_data(&mut gv, g.numel());
            let coef = 0.7;
            // Device path on a flat copy of a's parameters, written back into them.
            let fa = flat(&pa);
            oa.step_device(&fa, &g, Some(&mask), coef, 1e-2);
            let mut off = 0;
            for p in pa.values() {
                let n = p.numel() as i64;
                p.shallow_clone().copy_(&fa.narrow(0, off, n).view(p.size().as_slice()));
                off += n;
            }
            ob.step_flat(&pb, &gv, coef as f32, 1e-2, 1);
        }
        for (n, a) in &pa {
            let d = (a - &pb[n]).abs().max().double_value(&[]);
            assert!(d < 1e-6, "{n} differs by {d}");
        }
    }
}
