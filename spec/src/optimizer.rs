//! The optimizer of a run, typed: AdamW's hyper-parameters and the clipping norm, with the
//! Trainer's defaults once, and their wire form (checked on the way in like a flag).

use peftrain_proto::v1 as pb;

/// AdamW's hyper-parameters (`torch.optim.AdamW` as the Trainer builds it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamW {
    /// TrainingArguments' `adam_beta1`, `adam_beta2`, `adam_epsilon`, `weight_decay`.
    fn default() -> Self {
        AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// The optimizer and the gradient clipping the step applies before it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Optimizer {
    pub adamw: AdamW,
    /// `clip_grad_norm_`'s max norm (TrainingArguments' `max_grad_norm`, 1.0).
    pub max_grad_norm: f64,
}

impl Default for Optimizer {
    fn default() -> Self {
        Optimizer { adamw: AdamW::default(), max_grad_norm: 1.0 }
    }
}

impl Optimizer {
    pub fn to_proto(&self) -> pb::OptimizerSpec {
        let a = &self.adamw;
        pb::OptimizerSpec {
            weight_decay: a.weight_decay as f32,
            beta1: a.beta1 as f32,
            beta2: a.beta2 as f32,
            eps: a.eps as f32,
            max_grad_norm: self.max_grad_norm as f32,
        }
    }

    /// The optimizer a wire spec names, every number checked before anything uses it.
    pub fn from_proto(o: &pb::OptimizerSpec) -> Result<Optimizer, String> {
        use crate::check::{float, Interval};
        let opt = Optimizer {
            adamw: AdamW { beta1: o.beta1 as f64, beta2: o.beta2 as f64, eps: o.eps as f64, weight_decay: o.weight_decay as f64 },
            max_grad_norm: o.max_grad_norm as f64,
        };
        let a = &opt.adamw;
        for (name, v, range) in [
            ("optimizer weight_decay", a.weight_decay, Interval::closed(0.0, 10.0)),
            ("optimizer beta1", a.beta1, Interval::below(0.0, 1.0)),
            ("optimizer beta2", a.beta2, Interval::below(0.0, 1.0)),
            ("optimizer eps", a.eps, Interval::above(0.0, 1.0)),
            ("optimizer max_grad_norm", opt.max_grad_norm, Interval::above(0.0, 1e12)),
        ] {
            float(name, v, range).map_err(|e| format!("run spec: {e}"))?;
        }
        Ok(opt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_keeps_the_optimizer_and_refuses_bad_numbers() {
        let o = Optimizer { adamw: AdamW { weight_decay: 0.01, ..Default::default() }, max_grad_norm: 1.0 };
        let back = Optimizer::from_proto(&o.to_proto()).unwrap();
        // f32 on the wire, as the Trainer's float32 arguments would be.
        assert_eq!(back.adamw.beta1, 0.9f32 as f64);
        assert_eq!(back.max_grad_norm, 1.0);
        for bad in [
            pb::OptimizerSpec { beta1: 1.0, ..o.to_proto() },
            pb::OptimizerSpec { eps: f32::NAN, ..o.to_proto() },
            pb::OptimizerSpec { max_grad_norm: 0.0, ..o.to_proto() },
        ] {
            assert!(Optimizer::from_proto(&bad).is_err(), "{bad:?}");
        }
    }
}
