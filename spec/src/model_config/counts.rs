//! Parameter counts from config.json alone, as peft's `print_trainable_parameters` reports
//! them: `peftrain params` answers without building (or allocating) a model, and the bounds
//! check in `model_config` uses the same arithmetic. Names are checkpoint keys, so each
//! method's `MethodRules` (which parameters train, what it adds where) read as the worker's
//! model applies them.

use crate::method::{Method, HEAD_PREFIX};
use crate::model_config::{ModelConfig, ModelType};

/// What peft prints: trainable parameters and "all params" (for LoRA including the frozen
/// original of the head that `modules_to_save` keeps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub trainable: u128,
    pub all: u128,
}

/// One parameter tensor of the base model: its checkpoint key and, for a Linear's weight,
/// the module's (in, out) features.
struct Param {
    name: String,
    numel: u128,
    linear: Option<(u128, u128)>,
}

fn base(cfg: &ModelConfig, num_labels: i64) -> Vec<Param> {
    let u = |v: i64| v.max(0) as u128;
    let (h, inter, labels) = (u(cfg.hidden_size), u(cfg.intermediate_size), u(num_labels));
    let mut out = Vec::new();
    let mut tensor = |name: String, numel: u128| out.push(Param { name, numel, linear: None });
    let p = cfg.family().prefix();
    tensor(format!("{p}.embeddings.word_embeddings.weight"), u(cfg.vocab_size) * h);
    tensor(format!("{p}.embeddings.position_embeddings.weight"), u(cfg.max_position_embeddings) * h);
    tensor(format!("{p}.embeddings.token_type_embeddings.weight"), u(cfg.type_vocab_size) * h);
    tensor(format!("{p}.embeddings.LayerNorm.weight"), h);
    tensor(format!("{p}.embeddings.LayerNorm.bias"), h);
    let mut linears: Vec<(String, u128, u128)> = Vec::new();
    let mut norms: Vec<String> = Vec::new();
    for i in 0..cfg.num_hidden_layers.max(0) {
        let l = format!("{p}.encoder.layer.{i}");
        for m in ["query", "key", "value"] {
            linears.push((format!("{l}.attention.self.{m}"), h, h));
        }
        linears.push((format!("{l}.attention.output.dense"), h, h));
        norms.push(format!("{l}.attention.output.LayerNorm"));
        linears.push((format!("{l}.intermediate.dense"), h, inter));
        linears.push((format!("{l}.output.dense"), inter, h));
        norms.push(format!("{l}.output.LayerNorm"));
    }
    match cfg.family() {
        ModelType::Bert => {
            linears.push((format!("{p}.pooler.dense"), h, h));
            linears.push(("classifier".into(), h, labels));
        }
        ModelType::Roberta => {
            linears.push(("classifier.dense".into(), h, h));
            linears.push(("classifier.out_proj".into(), h, labels));
        }
    }
    for n in norms {
        tensor(format!("{n}.weight"), h);
        tensor(format!("{n}.bias"), h);
    }
    for (m, i, o) in linears {
        out.push(Param { name: format!("{m}.weight"), numel: i * o, linear: Some((i, o)) });
        out.push(Param { name: format!("{m}.bias"), numel: o, linear: None });
    }
    out
}

/// All parameters of the base `*ForSequenceClassification` model.
pub fn base_params(cfg: &ModelConfig, num_labels: i64) -> u128 {
    base(cfg, num_labels).iter().map(|p| p.numel).sum()
}

/// Trainable and peft's "all" parameter counts of `method` on the model `cfg` describes.
pub fn counts(cfg: &ModelConfig, num_labels: i64, method: &Method) -> Counts {
    let params = base(cfg, num_labels);
    let all_base: u128 = params.iter().map(|p| p.numel).sum();
    let head: u128 = params.iter().filter(|p| p.name.starts_with(HEAD_PREFIX)).map(|p| p.numel).sum();
    let rules = method.rules();
    let trainable_base: u128 = params.iter().filter(|p| rules.trains_base(&p.name)).map(|p| p.numel).sum();
    let added: u128 = params
        .iter()
        .filter_map(|p| {
            let (i, o) = p.linear?;
            rules.added_numel(p.name.strip_suffix(".weight")?, i, o)
        })
        .sum();
    // peft counts the frozen original `modules_to_save` keeps beside the trained head.
    let head_copy = if rules.keeps_head_copy() { head } else { 0 };
    Counts { trainable: trainable_base + added, all: all_base + added + head_copy }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::method::BitFitScope;

    #[test]
    fn roberta_base_counts_are_peft_s() {
        // roberta-base's config; the figures are peft's print_trainable_parameters for it.
        let cfg = ModelConfig::from_json(
            r#"{"model_type": "roberta", "vocab_size": 50265, "max_position_embeddings": 514, "type_vocab_size": 1, "pad_token_id": 1}"#,
            std::path::Path::new("config.json"),
        )
        .unwrap();
        let t = ["query".to_string(), "value".to_string()];
        assert_eq!(counts(&cfg, 2, &Method::Full), Counts { trainable: 124_647_170, all: 124_647_170 });
        assert_eq!(counts(&cfg, 2, &Method::BitFit(BitFitScope::All)).trainable, 694_274);
        assert_eq!(counts(&cfg, 2, &Method::BitFit(BitFitScope::BiasOnly)).trainable, 102_914);
        let lora = crate::method::LoraParams { r: 8, target_modules: t.to_vec(), ..Default::default() };
        assert_eq!(counts(&cfg, 2, &Method::Lora(lora)), Counts { trainable: 887_042, all: 125_534_212 });
    }
}
