//! The adapters a method puts on a Linear module, as peft computes them: LoRA's low-rank update
//! beside the base, IA3's vector scaling its input or output. `peft::MethodExt::adapter_for`
//! says which (plain data); this file declares the tensors and runs them.

use tch::{Kind, Tensor};

use super::dropout::dropout;
use super::layers::as_kind;
use crate::error::ModelError;
use crate::params::{Builder, Init};
use crate::peft::AdapterSpec;

/// What a method puts on a Linear module.
pub enum Adapter {
    /// peft's `lora.Linear`: `{module}.lora_A.weight` [r, in] (Kaiming-uniform) and
    /// `{module}.lora_B.weight` [out, r] (zeros).
    Lora { a: Tensor, b: Tensor, scaling: f64, dropout: f64 },
    /// peft's `ia3.Linear`: `{module}.ia3_l`, ones, [1, in] on a feed-forward module's input,
    /// else [out, 1] on the output.
    Ia3 { l: Tensor, feedforward: bool },
}

impl Adapter {
    pub fn new(b: &mut Builder, module: &str, spec: AdapterSpec, in_dim: i64, out_dim: i64) -> Result<Adapter, ModelError> {
        Ok(match spec {
            AdapterSpec::Lora { r, scaling, dropout } => Adapter::Lora {
                a: b.added(&format!("{module}.lora_A.weight"), &[r, in_dim], Init::KaimingUniform)?,
                b: b.added(&format!("{module}.lora_B.weight"), &[out_dim, r], Init::Zeros)?,
                scaling,
                dropout,
            },
            AdapterSpec::Ia3 { feedforward } => {
                let shape = if feedforward { [1, in_dim] } else { [out_dim, 1] };
                Adapter::Ia3 { l: b.added(&format!("{module}.ia3_l"), &shape, Init::Ones)?, feedforward }
            }
        })
    }

    /// The adapted module's output, given its base Linear `base`.
    pub fn forward(&self, x: &Tensor, base: &dyn Fn(&Tensor) -> Tensor, train: bool) -> Tensor {
        match self {
            Adapter::Lora { a, b, scaling, dropout: p } => {
                // peft: result + lora_B(lora_A(dropout(x))) * scaling, the adapter in fp32.
                let h = dropout(&as_kind(x, a.kind()), *p, train);
                let delta = h.linear::<Tensor>(a, None).linear::<Tensor>(b, None) * *scaling;
                base(x).to_kind(Kind::Float) + delta
            }
            Adapter::Ia3 { l, feedforward } => {
                // peft: the scaling in the vector's dtype (fp32), the product cast back to the
                // dtype it scales, as `(x * l).to(previous_dtype)` and `(result * l).to(result_dtype)`.
                let l = l.flatten(0, -1);
                if *feedforward {
                    base(&(x.to_kind(Kind::Float) * l).to_kind(x.kind()))
                } else {
                    let y = base(x);
                    let kind = y.kind();
                    (y * l).to_kind(kind)
                }
            }
        }
    }
}
