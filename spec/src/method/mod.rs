//! The fine-tuning method of a run, typed: what `--method` and its flags, `run_config.json`,
//! `trainable_config.json` and the wire's `MethodSpec` all describe. Each method is one file
//! (full.rs, bitfit.rs, lora.rs, ia3.rs) with its parameters, its flags and its
//! `MethodRules`; this file is the list of them. The worker gives each its tensors
//! (`peftrain_worker::peft`).

pub mod bitfit;
pub mod full;
pub mod ia3;
pub mod lora;

use std::fmt;
use std::str::FromStr;

use peftrain_proto::v1 as pb;
use serde::{Deserialize, Serialize};

pub use bitfit::{BitFitArgs, BitFitScope};
pub use full::Full;
pub use ia3::{Ia3Args, Ia3Params};
pub use lora::{LoraArgs, LoraParams, MAX_LORA_R};

/// Module names of the classification head, trained by every method but full's own rule
/// (peft's `modules_to_save` for `SEQ_CLS`). The seed ran LoRA with this head frozen at random
/// init; never again.
pub const HEAD_PREFIX: &str = "classifier.";

/// The method's name alone (`--method`), without its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MethodKind {
    /// Every parameter trains.
    Full,
    /// Bias terms (and the head) train.
    Bitfit,
    /// Low-rank adapters on target Linear modules (and the head) train.
    Lora,
    /// (IA)^3: learned vectors scaling target Linear modules' activations (and the head) train.
    Ia3,
}

impl MethodKind {
    pub const ALL: [MethodKind; 4] = [MethodKind::Full, MethodKind::Bitfit, MethodKind::Lora, MethodKind::Ia3];

    pub fn as_str(self) -> &'static str {
        match self {
            MethodKind::Full => "full",
            MethodKind::Bitfit => "bitfit",
            MethodKind::Lora => "lora",
            MethodKind::Ia3 => "ia3",
        }
    }

    /// Learning rates that suit each method: full fine-tuning wants a small one; adapters and
    /// biases, few parameters that start at or near zero, want larger ones.
    pub fn default_lr(self) -> f64 {
        match self {
            MethodKind::Full => 2e-5,
            MethodKind::Bitfit => 1e-3,
            MethodKind::Lora => 5e-4,
            // The (IA)^3 paper's rate: vectors that start at one and scale, not add.
            MethodKind::Ia3 => 3e-3,
        }
    }

    /// Whether the trained weights are saved as a peft adapter (`adapter_model.safetensors`
    /// with `adapter_config.json`) rather than peftrain's `trainable.safetensors`.
    pub fn saves_peft_adapter(self) -> bool {
        matches!(self, MethodKind::Lora | MethodKind::Ia3)
    }
}

impl fmt::Display for MethodKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MethodKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        MethodKind::ALL.into_iter().find(|m| m.as_str() == s).ok_or_else(|| format!("{s:?}: unknown method (full, bitfit, lora, ia3)"))
    }
}

/// What a method is, as both sides read it, from its parameters alone: the one trait each
/// method's file implements. Names are checkpoint keys and module paths
/// (`roberta.encoder.layer.0.attention.self.query`), so the counts here and the worker's
/// model apply the same rules.
pub trait MethodRules {
    /// Whether the base parameter `name` trains.
    fn trains_base(&self, name: &str) -> bool;
    /// Values the method adds for the Linear module `module` of (in, out) features, if it
    /// adapts it.
    fn added_numel(&self, _module: &str, _in_dim: u128, _out_dim: u128) -> Option<u128> {
        None
    }
    /// peft's `modules_to_save` keeps a frozen original of the head beside the trained copy,
    /// so "all params" counts the head twice.
    fn keeps_head_copy(&self) -> bool {
        false
    }
    /// The module names its adapters target (None: it adds none), for an error when they
    /// matched no module of the model.
    fn target_modules(&self) -> Option<&[String]> {
        None
    }
    /// Range checks, naming the flag.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
    /// A canonical description, part of the replica fingerprint.
    fn describe(&self) -> String;
    /// The method's own fields of peft's `adapter_config.json` (None: it saves no peft adapter).
    fn peft_fields(&self) -> Option<serde_json::Value> {
        None
    }
    fn to_wire(&self) -> pb::method_spec::Method;
}

/// peft's `target_modules` match: the whole name or its last dotted components.
pub fn matches_module(targets: &[String], module: &str) -> bool {
    targets.iter().any(|t| module == t || module.ends_with(&format!(".{t}")))
}

/// A list of module names from peft's `adapter_config.json`, naming the field when it is not.
fn peft_names(v: &serde_json::Value, k: &str) -> Result<Vec<String>, String> {
    match v.get(k) {
        Some(serde_json::Value::Array(a)) => {
            a.iter().map(|x| x.as_str().map(String::from).ok_or_else(|| format!("field `{k}`: expected a list of module names"))).collect()
        }
        // peft also allows a single regex string; peftrain matches names only.
        Some(serde_json::Value::String(s)) => Err(format!("field `{k}`: {s:?} is a regex; peftrain reads a list of module names")),
        _ => Err(format!("field `{k}` missing or not a list")),
    }
}

/// Comma-list flags as module names: trimmed, empty entries dropped.
fn module_names(v: &[String]) -> Vec<String> {
    v.iter().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect()
}

/// A method with its parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    Full,
    BitFit(BitFitScope),
    Lora(LoraParams),
    Ia3(Ia3Params),
}

impl Method {
    /// The method's rules: the one match from the method to its file.
    pub fn rules(&self) -> &dyn MethodRules {
        match self {
            Method::Full => &Full,
            Method::BitFit(s) => s,
            Method::Lora(p) => p,
            Method::Ia3(p) => p,
        }
    }

    pub fn kind(&self) -> MethodKind {
        match self {
            Method::Full => MethodKind::Full,
            Method::BitFit(_) => MethodKind::Bitfit,
            Method::Lora(_) => MethodKind::Lora,
            Method::Ia3(_) => MethodKind::Ia3,
        }
    }

    pub fn name(&self) -> &'static str {
        self.kind().as_str()
    }

    pub fn validate(&self) -> Result<(), String> {
        self.rules().validate()
    }

    pub fn describe(&self) -> String {
        self.rules().describe()
    }

    /// peft's `adapter_config.json` for the adapter this method saves (None: the method saves
    /// no peft adapter). The head trains as `modules_to_save`, peft's `SEQ_CLS` default.
    pub fn peft_adapter_config(&self, base_model: &str) -> Option<serde_json::Value> {
        let mut v = self.rules().peft_fields()?;
        if let Some(o) = v.as_object_mut() {
            o.insert("task_type".into(), "SEQ_CLS".into());
            o.insert("base_model_name_or_path".into(), base_model.into());
            o.insert("modules_to_save".into(), serde_json::json!(["classifier", "score"]));
            o.insert("inference_mode".into(), true.into());
            o.insert("revision".into(), serde_json::Value::Null);
        }
        Some(v)
    }

    /// The method a peft `adapter_config.json` describes (LoRA or IA3); the message names the
    /// field.
    pub fn from_peft_adapter_config(v: &serde_json::Value) -> Result<Method, String> {
        let m = match v.get("peft_type").ok_or("field `peft_type` missing")?.as_str() {
            Some("LORA") => Method::Lora(LoraParams::from_peft(v)?),
            Some("IA3") => Method::Ia3(Ia3Params::from_peft(v)?),
            other => return Err(format!("field `peft_type`: {other:?} is not an adapter peftrain trains (LORA, IA3)")),
        };
        m.validate()?;
        Ok(m)
    }

    pub fn to_proto(&self) -> pb::MethodSpec {
        pb::MethodSpec { method: Some(self.rules().to_wire()) }
    }

    /// The method a wire spec names, its numbers checked as the coordinator checks its flags.
    pub fn from_proto(spec: &pb::MethodSpec) -> Result<Method, String> {
        use pb::method_spec::Method as Oneof;
        let m = match &spec.method {
            None => return Err("run spec: no method".into()),
            Some(Oneof::Full(_)) => Method::Full,
            Some(Oneof::Bitfit(b)) => Method::BitFit(BitFitScope::from_wire(b)),
            Some(Oneof::Lora(l)) => Method::Lora(LoraParams::from_wire(l)),
            Some(Oneof::Ia3(a)) => Method::Ia3(Ia3Params::from_wire(a)),
        };
        m.validate().map_err(|e| format!("run spec: {e}"))?;
        Ok(m)
    }
}

/// The method as flat flags (`--method lora --lora-r 8 ...`) and flat `run_config.json` keys,
/// as run_glue.py users know them (each method's own in its file); `method()` types them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct MethodArgs {
    /// full, bitfit, lora or ia3.
    #[arg(id = "method", long = "method", value_parser = crate::flag::<MethodKind>, default_value_t = MethodKind::Lora, env = "PEFTRAIN_METHOD")]
    #[serde(rename = "method")]
    pub kind: MethodKind,
    #[command(flatten)]
    #[serde(flatten)]
    pub bitfit: BitFitArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub lora: LoraArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub ia3: Ia3Args,
}

impl Default for MethodArgs {
    fn default() -> Self {
        MethodArgs::of(&Method::Lora(LoraParams::default()))
    }
}

impl MethodArgs {
    pub fn method(&self) -> Method {
        match self.kind {
            MethodKind::Full => Method::Full,
            MethodKind::Bitfit => Method::BitFit(self.bitfit.bitfit_scope),
            MethodKind::Lora => Method::Lora(self.lora.params()),
            MethodKind::Ia3 => Method::Ia3(self.ia3.params()),
        }
    }

    /// `m` as flags; the other methods' flags keep their defaults.
    pub fn of(m: &Method) -> MethodArgs {
        let mut a = MethodArgs { kind: m.kind(), bitfit: BitFitArgs::default(), lora: LoraArgs::default(), ia3: Ia3Args::default() };
        match m {
            Method::Full => {}
            Method::BitFit(s) => a.bitfit.bitfit_scope = *s,
            Method::Lora(p) => a.lora = LoraArgs::of(p),
            Method::Ia3(p) => a.ia3 = Ia3Args::of(p),
        }
        a
    }

    /// These flags as a command line (`peftrain merge` hands them to the worker).
    pub fn to_flags(&self) -> Vec<String> {
        [vec![("--method", self.kind.as_str().to_string())], self.bitfit.flags(), self.lora.flags(), self.ia3.flags()]
            .concat()
            .into_iter()
            .flat_map(|(f, v)| [f.to_string(), v])
            .collect()
    }

    /// Switches to `kind`, keeping the other flags (compare trains each method so).
    pub fn with_kind(&self, kind: MethodKind) -> MethodArgs {
        MethodArgs { kind, ..self.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_refused() {
        for m in MethodKind::ALL {
            assert_eq!(m.as_str().parse::<MethodKind>(), Ok(m));
            assert_eq!(serde_json::to_value(m).unwrap(), serde_json::json!(m.as_str()));
        }
        assert!("LoRA".parse::<MethodKind>().is_err());
        for s in [BitFitScope::All, BitFitScope::BiasOnly] {
            assert_eq!(s.as_str().parse::<BitFitScope>(), Ok(s));
            assert_eq!(serde_json::to_value(s).unwrap(), serde_json::json!(s.as_str()));
        }
    }

    #[test]
    fn flags_type_the_method_and_back() {
        let lora = Method::Lora(LoraParams { r: 4, alpha: 8.0, dropout: 0.0, target_modules: vec!["query".into(), "key".into()] });
        let ia3 = Method::Ia3(Ia3Params { target_modules: vec!["value".into(), "dense".into()], feedforward_modules: vec!["dense".into()] });
        for m in [Method::Full, Method::BitFit(BitFitScope::BiasOnly), lora, ia3] {
            assert_eq!(MethodArgs::of(&m).method(), m);
            if let Some(v) = m.peft_adapter_config("base") {
                let mut want = m.clone();
                if let Method::Lora(l) = &mut want {
                    l.target_modules.sort();
                }
                assert_eq!(Method::from_peft_adapter_config(&v), Ok(want));
            }
        }
        let bad = Ia3Params { target_modules: vec!["key".into()], feedforward_modules: vec!["output.dense".into()] };
        assert!(Method::Ia3(bad).validate().unwrap_err().contains("--ia3-feedforward"));
        assert!(Method::from_peft_adapter_config(&serde_json::json!({"peft_type": "PROMPT_TUNING"})).unwrap_err().contains("peft_type"));
        assert_eq!(MethodArgs::default().method(), Method::Lora(LoraParams::default()));
        let mut a = MethodArgs::default();
        a.lora.lora_r = 0;
        assert!(a.method().validate().unwrap_err().contains("--lora-r"));
        a.lora.lora_r = 8;
        a.lora.lora_targets = vec![" ".into()];
        assert!(a.method().validate().unwrap_err().contains("--lora-targets"));
        assert!(a.with_kind(MethodKind::Full).method().validate().is_ok());
    }

    #[test]
    fn peft_matches_target_modules_by_dotted_suffix() {
        let p = LoraParams::default();
        assert!(p.targets("roberta.encoder.layer.0.attention.self.query"));
        assert!(p.targets("value"));
        assert!(!p.targets("roberta.encoder.layer.0.attention.self.queryx"));
        assert!(!p.targets("roberta.encoder.layer.0.attention.self.key"));
        // peft's IA3 feed-forward test is a plain suffix: both output projections qualify.
        let a = Ia3Params::default();
        for m in ["roberta.encoder.layer.0.output.dense", "roberta.encoder.layer.0.attention.output.dense"] {
            assert!(a.targets(m) && a.is_feedforward(m), "{m}");
        }
        assert!(a.targets("bert.encoder.layer.3.attention.self.key") && !a.is_feedforward("bert.encoder.layer.3.attention.self.key"));
        assert!(!a.targets("roberta.encoder.layer.0.intermediate.dense") && !a.targets("classifier.dense"));
    }

    #[test]
    fn every_method_survives_the_wire_and_bad_numbers_do_not() {
        let lora = Method::Lora(LoraParams { r: 4, alpha: 8.0, dropout: 0.1, target_modules: vec!["query".into()] });
        for m in [Method::Full, Method::BitFit(BitFitScope::All), Method::BitFit(BitFitScope::BiasOnly), lora, Method::Ia3(Ia3Params::default())] {
            assert_eq!(Method::from_proto(&m.to_proto()), Ok(m));
        }
        assert!(Method::from_proto(&pb::MethodSpec { method: None }).is_err());
        for (r, alpha, dropout) in [(0, 16.0, 0.1), (8, f64::NAN, 0.1), (8, 16.0, 1.5), (1 << 20, 16.0, 0.0)] {
            let bad = pb::MethodSpec {
                method: Some(pb::method_spec::Method::Lora(pb::LoraMethod { r, alpha, dropout, target_modules: vec!["query".into()] })),
            };
            assert!(Method::from_proto(&bad).is_err(), "r {r} alpha {alpha} dropout {dropout}");
        }
    }
}
