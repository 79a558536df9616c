//! AdamW over the trainable set only, written step by step as `torch.optim.AdamW` computes it
//! (single-tensor path, operation for operation), with `clip_grad_norm_`'s coefficient applied
//! as the gradient is read: a fused loop on the CPU, flat-buffer tensor ops on a device.

use std::collections::BTreeMap;

use tch::{Kind, Tensor};

/// Optimizer hyper-parameters (the Trainer's defaults: betas 0.9/0.999, eps 1e-8), as the
/// run spec types them.
pub use peftrain_spec::optimizer::AdamW as AdamWConfig;

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
        AdamW { config, flat_exp_avg, flat_exp_avg_sq, step: 0, state }
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
// A `Tensor` is a handle to storage libtorch owns: mutation through a shared handle is how
// every in-place tch op works, so the borrow checker cannot see this aliasing either way.
#[allow(clippy::mut_from_ref)]
unsafe fn cpu_slice(t: &Tensor) -> &mut [f32] {
    std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, t.numel())
}

/// Whether the fused CPU path applies: every parameter and moment a contiguous fp32 CPU
/// tensor.
pub fn fusable(params: &BTreeMap<String, Tensor>, opt: &AdamW) -> bool {
    params
        .values()
        .chain(opt.state.values().flat_map(|m| [&m.exp_avg, &m.exp_avg_sq]))
        .all(|t| t.device() == tch::Device::Cpu && t.kind() == Kind::Float && t.is_contiguous())
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
        let k = Coeffs::at(&self.config, self.step, lr, clip_coef);
        let mut segments = Vec::with_capacity(params.len());
        for ((name, p), g) in params.iter().zip(grads) {
            let Some(m) = self.state.get(name) else { continue };
            let decay = decay_factor(&self.config, name, lr);
            // SAFETY: `fusable` checked contiguous fp32 CPU tensors; the optimizer owns the
            // moments and the replica's thread owns the parameters during the step.
            let (p, ea, es) = unsafe { (cpu_slice(p), cpu_slice(&m.exp_avg), cpu_slice(&m.exp_avg_sq)) };
            segments.push(Segment { p, ea, es, g, decay });
        }
        // One balanced share of all elements per thread, cutting tensors where needed: full
        // fine-tuning is one 11.7 M-element embedding and a hundred small tensors, and either alone
        // would leave a core idle.
        let total: usize = segments.iter().map(|s| s.p.len()).sum();
        let parts = threads.max(1).min(total / (1 << 15)).max(1);
        if parts == 1 {
            segments.into_iter().for_each(|s| s.update(&k));
            return;
        }
        let share = total.div_ceil(parts);
        let mut shares: Vec<Vec<Segment>> = (0..parts).map(|_| Vec::new()).collect();
        let (mut i, mut room) = (0usize, share);
        for mut s in segments {
            while s.p.len() > room && i + 1 < parts {
                let (head, tail) = s.split_at(room);
                shares[i].push(head);
                s = tail;
                (i, room) = (i + 1, share);
            }
            room = room.saturating_sub(s.p.len());
            shares[i].push(s);
        }
        std::thread::scope(|scope| {
            let mut shares = shares.into_iter();
            let mine = shares.next().unwrap_or_default();
            for theirs in shares {
                scope.spawn(|| theirs.into_iter().for_each(|s| s.update(&k)));
            }
            mine.into_iter().for_each(|s| s.update(&k));
        });
    }
}

/// The per-step constants of the update, in fp32 as torch's fp32 kernels use them.
#[derive(Clone, Copy)]
struct Coeffs {
    clip: f32,
    step_size: f32,
    bc2_sqrt: f32,
    b1w: f32,
    b2: f32,
    b2c: f32,
    eps: f32,
}

impl Coeffs {
    /// The constants of update number `step` (1-based, after the increment).
    fn at(c: &AdamWConfig, step: u64, lr: f64, clip: f32) -> Coeffs {
        let bias_correction1 = 1.0 - c.beta1.powi(step as i32);
        let bias_correction2 = 1.0 - c.beta2.powi(step as i32);
        Coeffs {
            clip,
            step_size: (lr / bias_correction1) as f32,
            bc2_sqrt: bias_correction2.sqrt() as f32,
            b1w: (1.0 - c.beta1) as f32,
            b2: c.beta2 as f32,
            b2c: (1.0 - c.beta2) as f32,
            eps: c.eps as f32,
        }
    }
}

/// The decoupled weight-decay factor `1 - lr * weight_decay` for `name` (1 where it is exempt).
fn decay_factor(c: &AdamWConfig, name: &str, lr: f64) -> f32 {
    if c.weight_decay != 0.0 && decays(name) {
        (1.0 - lr * c.weight_decay) as f32
    } else {
        1.0
    }
}

/// A run of elements of one parameter with its moments and gradient.
struct Segment<'a> {
    p: &'a mut [f32],
    ea: &'a mut [f32],
    es: &'a mut [f32],
    g: &'a [f32],
    decay: f32,
}

impl<'a> Segment<'a> {
    fn split_at(self, at: usize) -> (Segment<'a>, Segment<'a>) {
        let (p0, p1) = self.p.split_at_mut(at);
        let (a0, a1) = self.ea.split_at_mut(at);
        let (s0, s1) = self.es.split_at_mut(at);
        let (g0, g1) = self.g.split_at(at);
        let d = self.decay;
        (Segment { p: p0, ea: a0, es: s0, g: g0, decay: d }, Segment { p: p1, ea: a1, es: s1, g: g1, decay: d })
    }

    /// Runs the loop compiled for the widest vector unit the CPU has. Rust never contracts a
    /// multiply and an add into an FMA, and sqrt and division are correctly rounded at every
    /// width, so each width computes the same bits as the scalar loop; the width only decides
    /// whether the update is bound by memory (torch's vectorised kernel) or by one square root
    /// and one division per element at a time.
    fn update(self, k: &Coeffs) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F.
                return unsafe { update_avx512(self, k) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2.
                return unsafe { update_avx2(self, k) };
            }
        }
        update_body(self, k)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn update_avx512(s: Segment, k: &Coeffs) {
    update_body(s, k)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn update_avx2(s: Segment, k: &Coeffs) {
    update_body(s, k)
}

/// torch's single-tensor AdamW for one element, operation for operation: decoupled weight
/// decay, `exp_avg.lerp_(g, 1-beta1)`, `exp_avg_sq.mul_(beta2).addcmul_(g, g, 1-beta2)`,
/// `denom = sqrt(exp_avg_sq) / sqrt(bc2) + eps`, `p.addcdiv_(exp_avg, denom, -step_size)`.
/// Zipped iterators carry no bounds checks, so the loop vectorises.
#[inline(always)]
fn update_body(s: Segment, k: &Coeffs) {
    let decay = s.decay;
    let n = s.p.len().min(s.ea.len()).min(s.es.len()).min(s.g.len());
    let it = s.p[..n].iter_mut().zip(&mut s.ea[..n]).zip(&mut s.es[..n]).zip(&s.g[..n]);
    for (((p, ea), es), &g) in it {
        let gi = g * k.clip;
        let mut pi = *p;
        if decay != 1.0 {
            pi *= decay;
        }
        *ea += k.b1w * (gi - *ea);
        *es = *es * k.b2 + k.b2c * gi * gi;
        let denom = es.sqrt() / k.bc2_sqrt + k.eps;
        *p = pi - k.step_size * (*ea / denom);
    }
}

/// Whether every trainable parameter has a contiguous fp32 CPU gradient.
pub fn grads_fusable(params: &BTreeMap<String, Tensor>) -> bool {
    params.values().all(|p| {
        let g = p.grad();
        g.defined() && g.device() == tch::Device::Cpu && g.kind() == Kind::Float && g.is_contiguous()
    })
}

/// `clip_grad_norm_`'s coefficient for a total norm: max_norm / (total + 1e-6), capped at 1; 1
/// when clipping is off or the norm is not finite (the update is then skipped anyway).
pub fn clip_coef(total: f64, max_norm: f64) -> f64 {
    if max_norm > 0.0 && total.is_finite() {
        (max_norm / (total + 1e-6)).min(1.0)
    } else {
        1.0
    }
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
        (total, clip_coef(total, max_norm) as f32)
    })
}

/// The clip coefficient and norm for a flat gradient buffer laid out as `params` (norm of the
/// per-tensor norms, as clip_grad_norm_ computes it).
pub fn flat_clip(params: &BTreeMap<String, Tensor>, grads: &[f32], max_norm: f64) -> (f64, f32) {
    let mut off = 0usize;
    let mut sq = 0f64;
    for p in params.values() {
        let n = p.numel();
        sq += sum_squares(&grads[off..off + n]);
        off += n;
    }
    let total = sq.sqrt();
    (total, clip_coef(total, max_norm) as f32)
}

/// Σx² in f64 over eight running sums (a vector's lanes: one serial sum is bound by the
/// latency of its additions), compiled for the widest vector unit the CPU has.
fn sum_squares(x: &[f32]) -> f64 {
    #[inline(always)]
    fn body(x: &[f32]) -> f64 {
        let mut acc = [0f64; 8];
        let chunks = x.chunks_exact(8);
        let rest: f64 = chunks.remainder().iter().map(|&v| (v as f64) * (v as f64)).sum();
        for c in chunks {
            for j in 0..8 {
                acc[j] += (c[j] as f64) * (c[j] as f64);
            }
        }
        acc.iter().sum::<f64>() + rest
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn wide(x: &[f32]) -> f64 {
            body(x)
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { wide(x) };
        }
    }
    body(x)
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
        let mask = Tensor::cat(
            &pa.iter()
                .map(|(n, p)| Tensor::full([p.numel() as i64], if decays(n) { 1.0 } else { 0.0 }, (Kind::Float, tch::Device::Cpu)))
                .collect::<Vec<_>>(),
            0,
        );
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
    /// Shares cut across tensor boundaries and the wide-vector loop give the same bits as one
    /// thread running the baseline loop.
    #[test]
    fn threads_and_vector_widths_agree_bitwise() {
        let cfg = AdamWConfig { weight_decay: 0.1, ..Default::default() };
        // Values from a formula, not the global generator another test may be drawing from.
        let make = || -> BTreeMap<String, Tensor> {
            [("a.bias", 70_001usize), ("b.weight", 100_003), ("c.LayerNorm.weight", 33)]
                .into_iter()
                .map(|(n, k)| {
                    let v: Vec<f32> = (0..k).map(|i| (i as f32 * 0.37).cos()).collect();
                    (n.to_string(), Tensor::from_slice(&v))
                })
                .collect()
        };
        let (pa, pb) = (make(), make());
        let (mut oa, mut ob) = (AdamW::new(cfg, &pa), AdamW::new(cfg, &pb));
        let n: usize = pa.values().map(|p| p.numel()).sum();
        for step in 0..3u32 {
            let g: Vec<f32> = (0..n).map(|i| (i as f32 * 0.618 + step as f32).sin() * 1e-2).collect();
            oa.step_flat(&pa, &g, 0.9, 1e-3, 3);
            // The reference: one thread, the generic loop on every segment.
            ob.step += 1;
            let k = Coeffs::at(&cfg, ob.step, 1e-3, 0.9);
            let mut off = 0;
            for (name, p) in &pb {
                let m = &ob.state[name];
                let decay = decay_factor(&cfg, name, 1e-3);
                let len = p.numel();
                let seg =
                    unsafe { Segment { p: cpu_slice(p), ea: cpu_slice(&m.exp_avg), es: cpu_slice(&m.exp_avg_sq), g: &g[off..off + len], decay } };
                update_body(seg, &k);
                off += len;
            }
        }
        for (name, a) in &pa {
            let eq = a.eq_tensor(&pb[name]).all().int64_value(&[]) == 1;
            assert!(eq, "{name} differs");
        }
        assert!(oa.flat_exp_avg_sq.eq_tensor(&ob.flat_exp_avg_sq).all().int64_value(&[]) == 1);
    }
}
