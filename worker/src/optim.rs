//! AdamW over the trainable set only, written step by step as `torch.optim.AdamW` computes it
//! (single-tensor path), and gradient clipping as `clip_grad_norm_`.

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
    /// Number of updates taken (torch's `state['step']`, shared by all parameters here because
    /// every parameter is updated at every step).
    pub step: u64,
    /// Moments in sorted-name order, like the trainable set.
    pub state: BTreeMap<String, Moments>,
}

impl AdamW {
    pub fn new(config: AdamWConfig, params: &BTreeMap<String, Tensor>) -> AdamW {
        let state = params
            .iter()
            .map(|(n, p)| {
                (
                    n.clone(),
                    Moments {
                        exp_avg: p.zeros_like().detach(),
                        exp_avg_sq: p.zeros_like().detach(),
                    },
                )
            })
            .collect();
        AdamW { config, step: 0, state }
    }

    /// One update with learning rate `lr`, reading each parameter's `.grad()`.
    pub fn step(&mut self, params: &BTreeMap<String, Tensor>, lr: f64) {
        self.step += 1;
        let c = self.config;
        let bias_correction1 = 1.0 - c.beta1.powi(self.step as i32);
        let bias_correction2 = 1.0 - c.beta2.powi(self.step as i32);
        let step_size = lr / bias_correction1;
        let bc2_sqrt = bias_correction2.sqrt();
        tch::no_grad(|| {
            for (name, p) in params {
                let grad = p.grad();
                if !grad.defined() {
                    continue;
                }
                let Some(m) = self.state.get_mut(name) else { continue };
                let mut p = p.shallow_clone();
                if c.weight_decay != 0.0 && decays(name) {
                    let _ = p.g_mul_scalar_(1.0 - lr * c.weight_decay);
                }
                let _ = m.exp_avg.lerp_(&grad, 1.0 - c.beta1);
                let _ = m.exp_avg_sq.g_mul_scalar_(c.beta2);
                let _ = m.exp_avg_sq.g_add_(&(&grad * &grad * (1.0 - c.beta2)));
                let denom = m.exp_avg_sq.sqrt() / bc2_sqrt + c.eps;
                let _ = p.g_sub_(&(&m.exp_avg / denom * step_size));
            }
        });
    }
}

/// Global L2 norm of the gradients (as `clip_grad_norm_` computes it: the norm of per-tensor
/// norms), then every gradient scaled by min(1, max_norm / (norm + 1e-6)). Returns the norm
/// before clipping.
pub fn clip_grad_norm(params: &BTreeMap<String, Tensor>, max_norm: f64) -> f64 {
    tch::no_grad(|| {
        let grads: Vec<Tensor> = params.values().map(|p| p.grad()).filter(|g| g.defined()).collect();
        if grads.is_empty() {
            return 0.0;
        }
        let norms: Vec<Tensor> = grads.iter().map(|g| g.norm().to_kind(Kind::Float)).collect();
        let total = Tensor::stack(&norms, 0).norm();
        let total_f = total.double_value(&[]);
        if max_norm > 0.0 && total_f.is_finite() {
            let coef = (max_norm / (total_f + 1e-6)).min(1.0);
            for g in &grads {
                let mut g = g.shallow_clone();
                let _ = g.g_mul_scalar_(coef);
            }
        }
        total_f
    })
}
