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
}

impl MethodKind {
    pub const ALL: [MethodKind; 3] = [MethodKind::Full, MethodKind::Bitfit, MethodKind::Lora];

    pub fn as_str(self) -> &'static str {
        match self {
            MethodKind::Full => "full",
            MethodKind::Bitfit => "bitfit",
            MethodKind::Lora => "lora",
        }
    }

    /// Learning rates that suit each method: full fine-tuning wants a small one; adapters and
    /// biases, few parameters that start at or near zero, want larger ones.
    pub fn default_lr(self) -> f64 {
        match self {
            MethodKind::Full => 2e-5,
            MethodKind::Bitfit => 1e-3,
            MethodKind::Lora => 5e-4,
        }
    }

    /// Whether the trained weights are saved as a peft adapter (`adapter_model.safetensors`
    /// with `adapter_config.json`) rather than peftrain's `trainable.safetensors`.
    pub fn saves_peft_adapter(self) -> bool {
        matches!(self, MethodKind::Lora)
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
            .ok_or_else(|| format!("{s:?}: unknown method (full, bitfit, lora)"))
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

/// A method with its parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    Full,
    BitFit(BitFitScope),
    Lora(LoraParams),
}

impl Method {
    pub fn kind(&self) -> MethodKind {
        match self {
            Method::Full => MethodKind::Full,
            Method::BitFit(_) => MethodKind::Bitfit,
            Method::Lora(_) => MethodKind::Lora,
        }
    }

    pub fn name(&self) -> &'static str {
        self.kind().as_str()
    }

    pub fn validate(&self) -> Result<(), String> {
        match self {
            Method::Lora(p) => p.validate(),
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
        }
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
                target_modules: self.lora_targets.iter().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect(),
            }),
        }
    }

    /// `m` as flags; the other methods' flags keep their defaults.
    pub fn of(m: &Method) -> MethodArgs {
        let lora = match m {
            Method::Lora(p) => p.clone(),
            _ => LoraParams::default(),
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
        }
    }

    /// The LoRA parameters these flags give (the defaults' where they name another method).
    pub fn method_lora_or_default(&self) -> LoraParams {
        match self.with_kind(MethodKind::Lora).method() {
            Method::Lora(p) => p,
            _ => LoraParams::default(),
        }
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
        for m in [Method::Full, Method::BitFit(BitFitScope::BiasOnly), lora] {
            assert_eq!(MethodArgs::of(&m).method(), m);
        }
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
    }
}
