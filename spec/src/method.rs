//! The fine-tuning method of a run, typed: what `--method` and its flags, `run_config.json`,
//! `trainable_config.json` and the wire's `MethodSpec` all describe. The worker gives each
//! method its behaviour (`peftrain_worker::peft`); this crate only says what it is.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

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
        MethodKind::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("{s:?}: unknown method (full, bitfit, lora, ia3)"))
    }
}

/// Which parameters BitFit trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BitFitScope {
    /// The paper's setting: every bias (LayerNorm's included) and the whole task head.
    #[default]
    All,
    /// The seed notebook's variant: only parameters named `bias` (the head's weights stay frozen).
    BiasOnly,
}

impl BitFitScope {
    pub fn as_str(self) -> &'static str {
        match self {
            BitFitScope::All => "all",
            BitFitScope::BiasOnly => "bias-only",
        }
    }
}

impl fmt::Display for BitFitScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BitFitScope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(BitFitScope::All),
            "bias-only" => Ok(BitFitScope::BiasOnly),
            other => Err(format!("{other:?}: unknown bitfit scope (all, bias-only)")),
        }
    }
}

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
        LoraParams {
            r: 8,
            alpha: 16.0,
            dropout: 0.1,
            target_modules: vec!["query".into(), "value".into()],
        }
    }
}

impl LoraParams {
    /// peft's scaling without rsLoRA.
    pub fn scaling(&self) -> f64 {
        self.alpha / self.r as f64
    }

    pub fn targets(&self, module: &str) -> bool {
        self.target_modules
            .iter()
            .any(|t| module == t || module.ends_with(&format!(".{t}")))
    }

    /// Range checks, naming the flag.
    pub fn validate(&self) -> Result<(), String> {
        use crate::check::{float, int, Interval};
        int("--lora-r", self.r, 1..=MAX_LORA_R)?;
        float("--lora-alpha", self.alpha, Interval::above(0.0, 1e6))?;
        float("--lora-dropout", self.dropout, Interval::below(0.0, 1.0))?;
        if self.target_modules.iter().all(|t| t.is_empty()) {
            return Err("--lora-targets: lora needs at least one target module".into());
        }
        Ok(())
    }
}

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
        Ia3Params {
            target_modules: vec!["key".into(), "value".into(), "output.dense".into()],
            feedforward_modules: vec!["output.dense".into()],
        }
    }
}

impl Ia3Params {
    pub fn targets(&self, module: &str) -> bool {
        self.target_modules.iter().any(|t| module == t || module.ends_with(&format!(".{t}")))
    }

    pub fn is_feedforward(&self, module: &str) -> bool {
        self.feedforward_modules.iter().any(|f| module.ends_with(f.as_str()))
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.target_modules.iter().all(|t| t.is_empty()) {
            return Err("--ia3-targets: ia3 needs at least one target module".into());
        }
        // peft refuses the same: a feed-forward module that is not a target would do nothing.
        if let Some(f) = self.feedforward_modules.iter().find(|f| !self.target_modules.contains(f)) {
            return Err(format!("--ia3-feedforward {f:?}: not one of --ia3-targets {:?} (peft requires a subset)", self.target_modules));
        }
        Ok(())
    }
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
        match self {
            Method::Lora(p) => p.validate(),
            Method::Ia3(p) => p.validate(),
            Method::Full | Method::BitFit(_) => Ok(()),
        }
    }

    /// A canonical description, part of the replica fingerprint.
    pub fn describe(&self) -> String {
        match self {
            Method::Full => "full".into(),
            Method::BitFit(s) => format!("bitfit:{}", s.as_str()),
            Method::Lora(c) => format!(
                "lora:r={}:alpha={}:dropout={}:targets={}",
                c.r,
                c.alpha,
                c.dropout,
                c.target_modules.join(",")
            ),
            Method::Ia3(c) => format!("ia3:targets={}:feedforward={}", c.target_modules.join(","), c.feedforward_modules.join(",")),
        }
    }

    /// peft's `adapter_config.json` for the adapter this method saves (None: the method saves
    /// no peft adapter). The head trains as `modules_to_save`, peft's `SEQ_CLS` default.
    pub fn peft_adapter_config(&self, base_model: &str) -> Option<serde_json::Value> {
        let mut v = match self {
            Method::Lora(l) => serde_json::json!({
                "peft_type": "LORA",
                "r": l.r,
                "lora_alpha": l.alpha,
                "lora_dropout": l.dropout,
                "target_modules": l.target_modules,
                "bias": "none",
                "fan_in_fan_out": false,
                "init_lora_weights": true,
                "use_rslora": false,
                "use_dora": false,
                "layers_to_transform": null,
                "layers_pattern": null,
                "rank_pattern": {},
                "alpha_pattern": {},
            }),
            Method::Ia3(a) => serde_json::json!({
                "peft_type": "IA3",
                "target_modules": a.target_modules,
                "feedforward_modules": a.feedforward_modules,
                "exclude_modules": null,
                "fan_in_fan_out": false,
                "init_ia3_weights": true,
            }),
            Method::Full | Method::BitFit(_) => return None,
        };
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
    /// field. `lora_dropout` defaults to `lora`'s when absent (it does not change the weights).
    pub fn from_peft_adapter_config(v: &serde_json::Value) -> Result<Method, String> {
        let field = |k: &str| v.get(k).ok_or_else(|| format!("field `{k}` missing"));
        let names = |k: &str| -> Result<Vec<String>, String> {
            match v.get(k) {
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .map(|x| x.as_str().map(String::from).ok_or_else(|| format!("field `{k}`: expected a list of module names")))
                    .collect(),
                // peft also allows a single regex string; peftrain matches names only.
                Some(serde_json::Value::String(s)) => Err(format!("field `{k}`: {s:?} is a regex; peftrain reads a list of module names")),
                _ => Err(format!("field `{k}` missing or not a list")),
            }
        };
        let m = match field("peft_type")?.as_str() {
            Some("LORA") => {
                let mut target_modules = names("target_modules")?;
                target_modules.sort();
                Method::Lora(LoraParams {
                    r: field("r")?.as_u64().and_then(|r| u32::try_from(r).ok()).ok_or("field `r` is not an integer")?,
                    alpha: field("lora_alpha")?.as_f64().ok_or("field `lora_alpha` is not a number")?,
                    dropout: v.get("lora_dropout").and_then(|d| d.as_f64()).unwrap_or(LoraParams::default().dropout),
                    target_modules,
                })
            }
            Some("IA3") => Method::Ia3(Ia3Params {
                target_modules: names("target_modules")?,
                feedforward_modules: names("feedforward_modules")?,
            }),
            other => return Err(format!("field `peft_type`: {other:?} is not an adapter peftrain trains (LORA, IA3)")),
        };
        m.validate()?;
        Ok(m)
    }
}

/// The method as flat flags (`--method lora --lora-r 8 ...`) and flat `run_config.json` keys,
/// as run_glue.py users know them; `method()` types them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct MethodArgs {
    /// full, bitfit or lora.
    #[arg(id = "method", long = "method", value_parser = crate::flag::<MethodKind>, default_value_t = MethodKind::Lora, env = "PEFTRAIN_METHOD")]
    #[serde(rename = "method")]
    pub kind: MethodKind,
    /// BitFit: `all` (all biases + head, the paper) or `bias-only` (parameters named bias).
    #[arg(long, value_parser = crate::flag::<BitFitScope>, default_value_t = BitFitScope::All, env = "PEFTRAIN_BITFIT_SCOPE")]
    #[serde(default)]
    pub bitfit_scope: BitFitScope,
    #[arg(long, env = "PEFTRAIN_LORA_R", default_value_t = LoraParams::default().r)]
    pub lora_r: u32,
    #[arg(long, env = "PEFTRAIN_LORA_ALPHA", default_value_t = LoraParams::default().alpha)]
    pub lora_alpha: f64,
    #[arg(long, env = "PEFTRAIN_LORA_DROPOUT", default_value_t = LoraParams::default().dropout)]
    pub lora_dropout: f64,
    /// Comma-separated module names LoRA adapts.
    #[arg(long, env = "PEFTRAIN_LORA_TARGETS", value_delimiter = ',', default_values_t = LoraParams::default().target_modules)]
    pub lora_targets: Vec<String>,
    /// Comma-separated module names IA3 scales (peft's default for RoBERTa and BERT).
    #[arg(long, env = "PEFTRAIN_IA3_TARGETS", value_delimiter = ',', default_values_t = Ia3Params::default().target_modules)]
    #[serde(default = "default_ia3_targets")]
    pub ia3_targets: Vec<String>,
    /// The IA3 targets whose input, not output, is scaled (peft's `feedforward_modules`).
    #[arg(long, env = "PEFTRAIN_IA3_FEEDFORWARD", value_delimiter = ',', default_values_t = Ia3Params::default().feedforward_modules)]
    #[serde(default = "default_ia3_feedforward")]
    pub ia3_feedforward: Vec<String>,
}

fn default_ia3_targets() -> Vec<String> {
    Ia3Params::default().target_modules
}

fn default_ia3_feedforward() -> Vec<String> {
    Ia3Params::default().feedforward_modules
}

/// Comma-list flags as module names: trimmed, empty entries dropped.
fn module_names(v: &[String]) -> Vec<String> {
    v.iter().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect()
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
            MethodKind::Bitfit => Method::BitFit(self.bitfit_scope),
            MethodKind::Lora => Method::Lora(LoraParams {
                r: self.lora_r,
                alpha: self.lora_alpha,
                dropout: self.lora_dropout,
                target_modules: module_names(&self.lora_targets),
            }),
            MethodKind::Ia3 => Method::Ia3(Ia3Params {
                target_modules: module_names(&self.ia3_targets),
                feedforward_modules: module_names(&self.ia3_feedforward),
            }),
        }
    }

    /// `m` as flags; the other methods' flags keep their defaults.
    pub fn of(m: &Method) -> MethodArgs {
        let lora = match m {
            Method::Lora(p) => p.clone(),
            _ => LoraParams::default(),
        };
        let ia3 = match m {
            Method::Ia3(p) => p.clone(),
            _ => Ia3Params::default(),
        };
        MethodArgs {
            kind: m.kind(),
            bitfit_scope: match m {
                Method::BitFit(s) => *s,
                _ => BitFitScope::All,
            },
            lora_r: lora.r,
            lora_alpha: lora.alpha,
            lora_dropout: lora.dropout,
            lora_targets: lora.target_modules,
            ia3_targets: ia3.target_modules,
            ia3_feedforward: ia3.feedforward_modules,
        }
    }

    /// These flags as a command line (`peftrain merge` hands them to the worker).
    pub fn to_flags(&self) -> Vec<String> {
        let list = |v: &[String]| v.join(",");
        [
            ("--method", self.kind.as_str().to_string()),
            ("--bitfit-scope", self.bitfit_scope.as_str().to_string()),
            ("--lora-r", self.lora_r.to_string()),
            ("--lora-alpha", self.lora_alpha.to_string()),
            ("--lora-dropout", self.lora_dropout.to_string()),
            ("--lora-targets", list(&self.lora_targets)),
            ("--ia3-targets", list(&self.ia3_targets)),
            ("--ia3-feedforward", list(&self.ia3_feedforward)),
        ]
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
        a.lora_r = 0;
        assert!(a.method().validate().unwrap_err().contains("--lora-r"));
        a.lora_r = 8;
        a.lora_targets = vec![" ".into()];
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
}
