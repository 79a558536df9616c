//! (IA)^3 (Liu et al., 2022) as peft implements it: a learned vector `ia3_l`, ones at the
//! start, scales a target Linear's output (`[out, 1]`: `(W x + b) * l`) or, for a
//! feed-forward module, its input (`[1, in]`: `W (x * l) + b`); the head trains as peft's
//! `modules_to_save` (`model::adapters` computes it). Its parameters are
//! `peftrain_spec::Ia3Params`.

use std::collections::BTreeMap;

use tch::Tensor;

use super::{AdapterSpec, Ia3Params, Peft, HEAD_PREFIX};

impl Peft for Ia3Params {
    /// The head only, as peft's `modules_to_save`.
    fn trains_base(&self, name: &str) -> bool {
        name.starts_with(HEAD_PREFIX)
    }

    fn adapter_for(&self, module: &str) -> Option<AdapterSpec> {
        self.targets(module).then(|| AdapterSpec::Ia3 { feedforward: self.is_feedforward(module) })
    }

    fn peft_extra_params(&self, head_params: i64) -> i64 {
        head_params
    }

    fn merged(&self, name: &str, value: Tensor, all: &BTreeMap<String, Tensor>) -> Tensor {
        merged(name, value, all)
    }

    fn target_modules(&self) -> Option<&[String]> {
        Some(&self.target_modules)
    }
}

pub fn is_added(name: &str) -> bool {
    name.ends_with(".ia3_l")
}

/// peft's merge: the weight scaled by the vector (its rows, or for a feed-forward module its
/// columns), and the bias of a non-feed-forward module scaled with the rows.
fn merged(name: &str, value: Tensor, all: &BTreeMap<String, Tensor>) -> Tensor {
    let (module, is_weight) = match (name.strip_suffix(".weight"), name.strip_suffix(".bias")) {
        (Some(m), _) => (m, true),
        (_, Some(m)) => (m, false),
        _ => return value,
    };
    let Some(l) = all.get(&format!("{module}.ia3_l")) else { return value };
    let feedforward = l.size().first() == Some(&1) && l.size().get(1) != Some(&1);
    match (is_weight, feedforward) {
        (true, _) => value * l,
        (false, false) => value * l.flatten(0, -1),
        (false, true) => value,
    }
}
