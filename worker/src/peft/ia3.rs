//! (IA)^3 (Liu et al., 2022) as peft implements it: a learned vector `ia3_l`, ones at the
//! start, scales a target Linear's output (`[out, 1]`: `(W x + b) * l`) or, for a
//! feed-forward module, its input (`[1, in]`: `W (x * l) + b`); the head trains as peft's
//! `modules_to_save` (`model::adapters` computes it). Its parameters are
//! `peftrain_spec::Ia3Params`.

use std::collections::BTreeMap;

use tch::Tensor;

pub fn is_added(name: &str) -> bool {
    name.ends_with(".ia3_l")
}

/// peft's merge: the weight scaled by the vector (its rows, or for a feed-forward module its
/// columns), and the bias of a non-feed-forward module scaled with the rows.
pub fn merged(name: &str, value: Tensor, all: &BTreeMap<String, Tensor>) -> Tensor {
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
