//! LoRA (Hu et al., 2021) as peft implements it: `y = W x + b + B(A(dropout(x))) * alpha / r`
//! on the target Linear modules (`model::adapters`), A Kaiming-uniform and B zero at the start,
//! the head trained as peft's `modules_to_save`. Its parameters are `peftrain_spec::LoraParams`.

use std::collections::BTreeMap;

use tch::Tensor;

use super::{AdapterSpec, LoraConfig, Peft, HEAD_PREFIX};

impl Peft for LoraConfig {
    /// The head only, as peft's `modules_to_save`.
    fn trains_base(&self, name: &str) -> bool {
        name.starts_with(HEAD_PREFIX)
    }

    fn adapter_for(&self, module: &str) -> Option<AdapterSpec> {
        self.targets(module).then(|| AdapterSpec::Lora {
            r: self.r as i64,
            scaling: self.scaling(),
            dropout: self.dropout,
        })
    }

    fn peft_extra_params(&self, head_params: i64) -> i64 {
        head_params
    }

    fn merged(&self, name: &str, value: Tensor, all: &BTreeMap<String, Tensor>) -> Tensor {
        merged(name, value, all, self.scaling())
    }

    fn target_modules(&self) -> Option<&[String]> {
        Some(&self.target_modules)
    }
}

pub fn is_added(name: &str) -> bool {
    name.contains(".lora_A.") || name.contains(".lora_B.")
}

/// W + B·A·scaling for an adapted module's weight; everything else unchanged.
fn merged(name: &str, value: Tensor, all: &BTreeMap<String, Tensor>, scaling: f64) -> Tensor {
    let Some(module) = name.strip_suffix(".weight") else { return value };
    match (all.get(&format!("{module}.lora_A.weight")), all.get(&format!("{module}.lora_B.weight"))) {
        (Some(a), Some(b)) => value + b.mm(a) * scaling,
        _ => value,
    }
}
