//! LoRA (Hu et al., 2021) as peft's `lora.Linear` computes it:
//! `y = W x + b + B(A(dropout(x))) * alpha / r` on the target Linear modules, A
//! Kaiming-uniform and B zero at the start; merged as `W + B A alpha / r`. Its parameters and
//! rules are `peftrain_spec::LoraParams`.

use std::collections::BTreeMap;

use tch::{Kind, Tensor};

use super::{LinearAdapter, LoraConfig, Peft};
use crate::error::ModelError;
use crate::ops::as_kind;
use crate::ops::dropout::dropout;
use crate::params::{Builder, Init};

/// `{module}.lora_A.weight` [r, in] and `{module}.lora_B.weight` [out, r], fp32.
struct Lora {
    a: Tensor,
    b: Tensor,
    scaling: f64,
    dropout: f64,
}

impl Peft for LoraConfig {
    fn adapter(&self, b: &mut Builder, module: &str, in_dim: i64, out_dim: i64) -> Result<Option<Box<dyn LinearAdapter>>, ModelError> {
        if !self.targets(module) {
            return Ok(None);
        }
        let r = self.r as i64;
        Ok(Some(Box::new(Lora {
            a: b.added(&format!("{module}.lora_A.weight"), &[r, in_dim], Init::LoraA { out_dim })?,
            b: b.added(&format!("{module}.lora_B.weight"), &[out_dim, r], Init::Zeros)?,
            scaling: self.scaling(),
            dropout: self.dropout,
        })))
    }

    /// W + B·A·scaling for an adapted module's weight; everything else unchanged.
    fn merged(&self, name: &str, value: Tensor, all: &BTreeMap<String, Tensor>) -> Tensor {
        let Some(module) = name.strip_suffix(".weight") else { return value };
        match (all.get(&format!("{module}.lora_A.weight")), all.get(&format!("{module}.lora_B.weight"))) {
            (Some(a), Some(b)) => value + b.mm(a) * self.scaling(),
            _ => value,
        }
    }
}

impl LinearAdapter for Lora {
    fn forward(&self, x: &Tensor, base: &dyn Fn(&Tensor) -> Tensor, train: bool) -> Tensor {
        // peft: result + lora_B(lora_A(dropout(x))) * scaling, the adapter in fp32.
        let h = dropout(&as_kind(x, self.a.kind()), self.dropout, train);
        let delta = h.linear::<Tensor>(&self.a, None).linear::<Tensor>(&self.b, None) * self.scaling;
        base(x).to_kind(Kind::Float) + delta
    }
}
