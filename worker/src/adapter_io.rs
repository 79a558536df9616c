//! Trainable weights on disk for a replica: loading peftrain's or peft's saved weights strictly,
//! peft's key names, and the merged Hugging Face checkpoint (`peftrain merge`).

use std::collections::BTreeMap;
use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::error::ModelError;
use crate::replica::Replica;

impl Replica {
    /// Loads trainable weights saved by peftrain or by peft (`adapter_model.safetensors`),
    /// strictly: every trainable parameter must be there with its shape, and nothing else.
    pub fn load_trainable(&mut self, dir: &Path) -> Result<(), ModelError> {
        let path = ["trainable.safetensors", "adapter_model.safetensors"]
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file())
            .ok_or_else(|| ModelError::Missing { path: dir.to_path_buf(), what: "trainable.safetensors or adapter_model.safetensors".into() })?;
        let tensors = Tensor::read_safetensors(&path).map_err(|e| ModelError::Checkpoint { path: path.clone(), why: e.to_string() })?;
        let mut by_name: BTreeMap<String, Tensor> = BTreeMap::new();
        for (k, t) in tensors {
            by_name.insert(peft_key_to_name(&k), t);
        }
        tch::no_grad(|| -> Result<(), ModelError> {
            for (name, p) in &self.loaded.params.trainable {
                let t = by_name.remove(name).ok_or_else(|| ModelError::MissingTensor { path: path.clone(), name: name.clone() })?;
                crate::params::check_float(&path, name, &t)?;
                if t.size() != p.size() {
                    return Err(ModelError::ShapeMismatch { path: path.clone(), name: name.clone(), expected: p.size(), found: t.size() });
                }
                let mut p = p.shallow_clone();
                p.copy_(&t.to_kind(p.kind()).to_device(p.device()));
            }
            Ok(())
        })?;
        if let Some(extra) = by_name.keys().next() {
            return Err(ModelError::Checkpoint { path, why: format!("tensor `{extra}` is not a trainable parameter of this model and method") });
        }
        Ok(())
    }
}

impl Replica {
    /// A plain Hugging Face checkpoint of the trained model: the method's adapters folded into
    /// the weights they adapt (peft's merge_and_unload: LoRA's W + B·A·alpha/r, IA3's scaled
    /// rows or columns), every other parameter as trained. Keys carry the family prefix, as
    /// `*ForSequenceClassification.save_pretrained` writes.
    pub fn merged_tensors(&self) -> Vec<(String, Tensor)> {
        tch::no_grad(|| {
            let all: BTreeMap<String, Tensor> = self
                .loaded
                .params
                .trainable
                .iter()
                .chain(self.loaded.params.frozen.iter())
                .map(|(n, t)| (n.clone(), t.detach().to_kind(Kind::Float).to_device(Device::Cpu)))
                .collect();
            all.iter()
                .filter(|(n, _)| !self.loaded.params.is_added(n))
                .map(|(n, t)| (n.clone(), crate::peft::peft(&self.spec.method).merged(n, t.shallow_clone(), &all).contiguous()))
                .collect()
        })
    }
}

/// peft's saved key to the model's parameter name:
/// `base_model.model.classifier.modules_to_save.default.dense.weight` -> `classifier.dense.weight`,
/// `...query.lora_A.default.weight` -> `...query.lora_A.weight`, `...key.ia3_l.default` ->
/// `...key.ia3_l`: peft names every adapter tensor `{module}.{tensor}.{adapter}[.weight]`, so
/// dropping the adapter name `default` maps any method's keys.
pub fn peft_key_to_name(key: &str) -> String {
    let k = key.strip_prefix("base_model.model.").unwrap_or(key);
    k.replace(".modules_to_save.default.", ".").replace(".original_module.", ".").replace(".default.", ".").trim_end_matches(".default").to_string()
}
