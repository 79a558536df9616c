//! (IA)^3 (Liu et al., 2022) as peft's `IA3Config` describes it: a learned vector scaling
//! each target Linear module's output (or, for a feed-forward module, its input), the head
//! trained as `modules_to_save`.

use peftrain_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use super::{matches_module, module_names, peft_names, MethodRules, HEAD_PREFIX};

/// peft's `IA3Config` fields peftrain reads; `Default` is peft's mapping for RoBERTa and BERT
/// (`TRANSFORMERS_MODELS_TO_IA3_*_MODULES_MAPPING`, the same for both families).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ia3Params {
    /// Modules that get a vector, matched as peft matches `target_modules`.
    pub target_modules: Vec<String>,
    /// Targets whose vector scales the input rather than the output, matched as peft does:
    /// a plain suffix of the module name (so `output.dense` is both the FFN's down projection
    /// and the attention's output projection).
    pub feedforward_modules: Vec<String>,
}

impl Default for Ia3Params {
    fn default() -> Self {
        Ia3Params { target_modules: vec!["key".into(), "value".into(), "output.dense".into()], feedforward_modules: vec!["output.dense".into()] }
    }
}

impl Ia3Params {
    pub fn targets(&self, module: &str) -> bool {
        matches_module(&self.target_modules, module)
    }

    pub fn is_feedforward(&self, module: &str) -> bool {
        self.feedforward_modules.iter().any(|f| module.ends_with(f.as_str()))
    }

    pub fn from_wire(m: &pb::Ia3Method) -> Ia3Params {
        Ia3Params { target_modules: m.target_modules.clone(), feedforward_modules: m.feedforward_modules.clone() }
    }

    pub fn from_peft(v: &serde_json::Value) -> Result<Ia3Params, String> {
        Ok(Ia3Params { target_modules: peft_names(v, "target_modules")?, feedforward_modules: peft_names(v, "feedforward_modules")? })
    }
}

impl MethodRules for Ia3Params {
    /// The head only, as peft's `modules_to_save`.
    fn trains_base(&self, name: &str) -> bool {
        name.starts_with(HEAD_PREFIX)
    }

    /// A vector over the input of a feed-forward module, the output of others.
    fn added_numel(&self, module: &str, in_dim: u128, out_dim: u128) -> Option<u128> {
        self.targets(module).then_some(if self.is_feedforward(module) { in_dim } else { out_dim })
    }

    fn keeps_head_copy(&self) -> bool {
        true
    }

    fn target_modules(&self) -> Option<&[String]> {
        Some(&self.target_modules)
    }

    fn validate(&self) -> Result<(), String> {
        if self.target_modules.iter().all(|t| t.is_empty()) {
            return Err("--ia3-targets: ia3 needs at least one target module".into());
        }
        // peft refuses the same: a feed-forward module that is not a target would do nothing.
        if let Some(f) = self.feedforward_modules.iter().find(|f| !self.target_modules.contains(f)) {
            return Err(format!("--ia3-feedforward {f:?}: not one of --ia3-targets {:?} (peft requires a subset)", self.target_modules));
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("ia3:targets={}:feedforward={}", self.target_modules.join(","), self.feedforward_modules.join(","))
    }

    fn peft_fields(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "peft_type": "IA3",
            "target_modules": self.target_modules,
            "feedforward_modules": self.feedforward_modules,
            "exclude_modules": null,
            "fan_in_fan_out": false,
            "init_ia3_weights": true,
        }))
    }

    fn to_wire(&self) -> pb::method_spec::Method {
        pb::method_spec::Method::Ia3(pb::Ia3Method {
            target_modules: self.target_modules.clone(),
            feedforward_modules: self.feedforward_modules.clone(),
        })
    }
}

/// IA3's flags (`--ia3-targets`, `--ia3-feedforward`) and flat `run_config.json` keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct Ia3Args {
    /// Comma-separated module names IA3 scales (peft's default for RoBERTa and BERT).
    #[arg(long, env = "PEFTRAIN_IA3_TARGETS", value_delimiter = ',', default_values_t = Ia3Params::default().target_modules)]
    #[serde(default = "default_targets")]
    pub ia3_targets: Vec<String>,
    /// The IA3 targets whose input, not output, is scaled (peft's `feedforward_modules`).
    #[arg(long, env = "PEFTRAIN_IA3_FEEDFORWARD", value_delimiter = ',', default_values_t = Ia3Params::default().feedforward_modules)]
    #[serde(default = "default_feedforward")]
    pub ia3_feedforward: Vec<String>,
}

fn default_targets() -> Vec<String> {
    Ia3Params::default().target_modules
}

fn default_feedforward() -> Vec<String> {
    Ia3Params::default().feedforward_modules
}

impl Default for Ia3Args {
    fn default() -> Self {
        Ia3Args::of(&Ia3Params::default())
    }
}

impl Ia3Args {
    pub fn of(p: &Ia3Params) -> Ia3Args {
        Ia3Args { ia3_targets: p.target_modules.clone(), ia3_feedforward: p.feedforward_modules.clone() }
    }

    pub fn params(&self) -> Ia3Params {
        Ia3Params { target_modules: module_names(&self.ia3_targets), feedforward_modules: module_names(&self.ia3_feedforward) }
    }

    pub fn flags(&self) -> Vec<(&'static str, String)> {
        vec![("--ia3-targets", self.ia3_targets.join(",")), ("--ia3-feedforward", self.ia3_feedforward.join(","))]
    }
}
