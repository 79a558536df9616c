//! LoRA (Hu et al., 2021) as peft implements it: `y = W x + b + B(A(dropout(x))) * alpha / r`
//! on the target Linear modules (`model::adapters`), A Kaiming-uniform and B zero at the start,
//! the head trained as peft's `modules_to_save`. Its parameters are `peftrain_spec::LoraParams`.

use std::collections::BTreeMap;

use tch::Tensor;

pub fn is_added(name: &str) -> bool {
    name.contains(".lora_A.") || name.contains(".lora_B.")
}

/// W + B·A·scaling for an adapted module's weight; everything else unchanged.
pub fn merged(name: &str, value: Tensor, all: &BTreeMap<String, Tensor>, scaling: f64) -> Tensor {
    let Some(module) = name.strip_suffix(".weight") else { return value };
    match (all.get(&format!("{module}.lora_A.weight")), all.get(&format!("{module}.lora_B.weight"))) {
        (Some(a), Some(b)) => value + b.mm(a) * scaling,
        _ => value,
    }
}
