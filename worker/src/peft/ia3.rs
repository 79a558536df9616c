//! (IA)^3 (Liu et al., 2022) as peft's `ia3.Linear` computes it: a learned vector `ia3_l`,
//! ones at the start, scales a target Linear's output (`[out, 1]`: `(W x + b) * l`) or, for a
//! feed-forward module, its input (`[1, in]`: `W (x * l) + b`); merged by scaling the weight's
//! rows (and the bias) or its columns. Its parameters and rules are `peftrain_spec::Ia3Params`.

use std::collections::BTreeMap;

use tch::{Kind, Tensor};

use super::{Ia3Params, LinearAdapter, Peft};
use crate::error::ModelError;
use crate::params::{Builder, Init};

/// `{module}.ia3_l`, fp32.
struct Ia3 {
    l: Tensor,
    feedforward: bool,
}

impl Peft for Ia3Params {
    fn adapter(&self, b: &mut Builder, module: &str, in_dim: i64, out_dim: i64) -> Result<Option<Box<dyn LinearAdapter>>, ModelError> {
        if !self.targets(module) {
            return Ok(None);
        }
        let feedforward = self.is_feedforward(module);
        let shape = if feedforward { [1, in_dim] } else { [out_dim, 1] };
        Ok(Some(Box::new(Ia3 { l: b.added(&format!("{module}.ia3_l"), &shape, Init::Ones)?, feedforward })))
    }

    /// peft's merge: the weight scaled by the vector (its rows, or for a feed-forward module its
    /// columns), and the bias of a non-feed-forward module scaled with the rows.
    fn merged(&self, name: &str, value: Tensor, all: &BTreeMap<String, Tensor>) -> Tensor {
        let (module, is_weight) = match (name.strip_suffix(".weight"), name.strip_suffix(".bias")) {
            (Some(m), _) => (m, true),
            (_, Some(m)) => (m, false),
            _ => return value,
        };
        let Some(l) = all.get(&format!("{module}.ia3_l")) else { return value };
        match (is_weight, self.is_feedforward(module)) {
            (true, _) => value * l,
            (false, false) => value * l.flatten(0, -1),
            (false, true) => value,
        }
    }
}

impl LinearAdapter for Ia3 {
    fn forward(&self, x: &Tensor, base: &dyn Fn(&Tensor) -> Tensor, _train: bool) -> Tensor {
        // peft: the scaling in the vector's dtype (fp32), the product cast back to the dtype it
        // scales, as `(x * l).to(previous_dtype)` and `(result * l).to(result_dtype)`.
        let l = self.l.flatten(0, -1);
        if self.feedforward {
            base(&(x.to_kind(Kind::Float) * l).to_kind(x.kind()))
        } else {
            let y = base(x);
            let kind = y.kind();
            (y * l).to_kind(kind)
        }
    }
}
