//! LoRA (Hu et al., 2021) as peft's `LoraConfig` describes it: low-rank adapters beside the
//! target Linear modules, the head trained as `modules_to_save`.

use peftrain_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use super::{matches_module, module_names, peft_names, MethodRules, HEAD_PREFIX};

/// peft's `LoraConfig` fields peftrain reads; `Default` is the one place of LoRA's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraParams {
    pub r: u32,
    pub alpha: f64,
    pub dropout: f64,
    /// Module names matched as peft matches `target_modules`: the whole name or its last
    /// dotted components.
    pub target_modules: Vec<String>,
}

/// Bounds of a LoRA rank: a rank allocates r x (in + out) per target module.
pub const MAX_LORA_R: u32 = 4096;

impl Default for LoraParams {
    fn default() -> Self {
        LoraParams { r: 8, alpha: 16.0, dropout: 0.1, target_modules: vec!["query".into(), "value".into()] }
    }
}

impl LoraParams {
    /// peft's scaling without rsLoRA.
    pub fn scaling(&self) -> f64 {
        self.alpha / self.r as f64
    }

    pub fn targets(&self, module: &str) -> bool {
        matches_module(&self.target_modules, module)
    }

    pub fn from_wire(m: &pb::LoraMethod) -> LoraParams {
        LoraParams { r: m.r, alpha: m.alpha, dropout: m.dropout, target_modules: m.target_modules.clone() }
    }

    /// From peft's `adapter_config.json`; `lora_dropout` defaults to ours when absent (it does
    /// not change the weights). Target names are sorted, as peft stores a set.
    pub fn from_peft(v: &serde_json::Value) -> Result<LoraParams, String> {
        let field = |k: &str| v.get(k).ok_or_else(|| format!("field `{k}` missing"));
        let mut target_modules = peft_names(v, "target_modules")?;
        target_modules.sort();
        Ok(LoraParams {
            r: field("r")?.as_u64().and_then(|r| u32::try_from(r).ok()).ok_or("field `r` is not an integer")?,
            alpha: field("lora_alpha")?.as_f64().ok_or("field `lora_alpha` is not a number")?,
            dropout: v.get("lora_dropout").and_then(|d| d.as_f64()).unwrap_or(LoraParams::default().dropout),
            target_modules,
        })
    }
}

impl MethodRules for LoraParams {
    /// The head only, as peft's `modules_to_save`.
    fn trains_base(&self, name: &str) -> bool {
        name.starts_with(HEAD_PREFIX)
    }

    /// A [r, in] and B [out, r].
    fn added_numel(&self, module: &str, in_dim: u128, out_dim: u128) -> Option<u128> {
        self.targets(module).then_some(self.r as u128 * (in_dim + out_dim))
    }

    fn keeps_head_copy(&self) -> bool {
        true
    }

    fn target_modules(&self) -> Option<&[String]> {
        Some(&self.target_modules)
    }

    fn validate(&self) -> Result<(), String> {
        use crate::check::{float, int, Interval};
        int("--lora-r", self.r, 1..=MAX_LORA_R)?;
        float("--lora-alpha", self.alpha, Interval::above(0.0, 1e6))?;
        float("--lora-dropout", self.dropout, Interval::below(0.0, 1.0))?;
        if self.target_modules.iter().all(|t| t.is_empty()) {
            return Err("--lora-targets: lora needs at least one target module".into());
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("lora:r={}:alpha={}:dropout={}:targets={}", self.r, self.alpha, self.dropout, self.target_modules.join(","))
    }

    fn peft_fields(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "peft_type": "LORA",
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": self.target_modules,
            "bias": "none",
            "fan_in_fan_out": false,
            "init_lora_weights": true,
            "use_rslora": false,
            "use_dora": false,
            "layers_to_transform": null,
            "layers_pattern": null,
            "rank_pattern": {},
            "alpha_pattern": {},
        }))
    }

    fn to_wire(&self) -> pb::method_spec::Method {
        pb::method_spec::Method::Lora(pb::LoraMethod {
            r: self.r,
            alpha: self.alpha,
            dropout: self.dropout,
            target_modules: self.target_modules.clone(),
        })
    }
}

/// LoRA's flags (`--lora-r ...`) and flat `run_config.json` keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct LoraArgs {
    #[arg(long, env = "PEFTRAIN_LORA_R", default_value_t = LoraParams::default().r)]
    pub lora_r: u32,
    #[arg(long, env = "PEFTRAIN_LORA_ALPHA", default_value_t = LoraParams::default().alpha)]
    pub lora_alpha: f64,
    #[arg(long, env = "PEFTRAIN_LORA_DROPOUT", default_value_t = LoraParams::default().dropout)]
    pub lora_dropout: f64,
    /// Comma-separated module names LoRA adapts.
    #[arg(long, env = "PEFTRAIN_LORA_TARGETS", value_delimiter = ',', default_values_t = LoraParams::default().target_modules)]
    pub lora_targets: Vec<String>,
}

impl Default for LoraArgs {
    fn default() -> Self {
        LoraArgs::of(&LoraParams::default())
    }
}

impl LoraArgs {
    pub fn of(p: &LoraParams) -> LoraArgs {
        LoraArgs { lora_r: p.r, lora_alpha: p.alpha, lora_dropout: p.dropout, lora_targets: p.target_modules.clone() }
    }

    pub fn params(&self) -> LoraParams {
        LoraParams { r: self.lora_r, alpha: self.lora_alpha, dropout: self.lora_dropout, target_modules: module_names(&self.lora_targets) }
    }

    pub fn flags(&self) -> Vec<(&'static str, String)> {
        vec![
            ("--lora-r", self.lora_r.to_string()),
            ("--lora-alpha", self.lora_alpha.to_string()),
            ("--lora-dropout", self.lora_dropout.to_string()),
            ("--lora-targets", self.lora_targets.join(",")),
        ]
    }
}
