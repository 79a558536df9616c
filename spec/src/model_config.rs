//! The model's `config.json`, mirrored as plain serde data (transformers' `BertConfig` /
//! `RobertaConfig`, with their defaults), checked and bounded when read: every size is
//! limited before anything is allocated from it, so a hostile or mistyped config is one clear
//! line naming the file and the field, never a 200 TB allocation or a segfault.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::check::Interval;

pub mod counts;

/// Model families peftrain ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelType {
    Roberta,
    Bert,
}

impl ModelType {
    /// Prefix of the encoder's keys in a `*ForSequenceClassification` checkpoint.
    pub fn prefix(self) -> &'static str {
        match self {
            ModelType::Roberta => "roberta",
            ModelType::Bert => "bert",
        }
    }
}

/// Activation named by `hidden_act`, as in transformers' `ACT2FN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Activation {
    /// Exact erf GELU (`nn.GELU()`).
    #[serde(rename = "gelu")]
    Gelu,
    /// tanh approximation (`NewGELUActivation`, `gelu_pytorch_tanh`).
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh")]
    GeluTanh,
    #[serde(rename = "relu")]
    Relu,
    #[serde(rename = "silu", alias = "swish")]
    Silu,
}

/// What is wrong with a config.json; always names the file (and the field).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: malformed JSON: {why}")]
    Json { path: PathBuf, why: String },
    #[error("{path}: field `{field}`: {why}")]
    Field { path: PathBuf, field: String, why: String },
}

/// Fields of a BERT/RoBERTa `config.json`. Defaults are transformers' own, so a minimal
/// config loads as it would in Python.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelConfig {
    pub model_type: String,
    pub vocab_size: i64,
    #[serde(default = "d_hidden")]
    pub hidden_size: i64,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "d_heads")]
    pub num_attention_heads: i64,
    #[serde(default = "d_intermediate")]
    pub intermediate_size: i64,
    #[serde(default = "d_act")]
    pub hidden_act: Activation,
    #[serde(default = "d_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "d_dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "d_positions")]
    pub max_position_embeddings: i64,
    #[serde(default = "d_type_vocab")]
    pub type_vocab_size: i64,
    #[serde(default = "d_init_range")]
    pub initializer_range: f64,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    pub pad_token_id: Option<i64>,
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
    #[serde(default)]
    pub num_labels: Option<i64>,
    #[serde(default)]
    pub id2label: Option<BTreeMap<String, String>>,
    #[serde(default = "d_pos_type")]
    pub position_embedding_type: String,
    #[serde(default)]
    pub is_decoder: bool,
}

fn d_hidden() -> i64 {
    768
}
fn d_layers() -> i64 {
    12
}
fn d_heads() -> i64 {
    12
}
fn d_intermediate() -> i64 {
    3072
}
fn d_act() -> Activation {
    Activation::Gelu
}
fn d_dropout() -> f64 {
    0.1
}
fn d_positions() -> i64 {
    512
}
fn d_type_vocab() -> i64 {
    2
}
fn d_init_range() -> f64 {
    0.02
}
fn d_eps() -> f64 {
    1e-12
}
fn d_pos_type() -> String {
    "absolute".to_string()
}

/// Upper bounds on every size, far above any BERT-family checkpoint (roberta-large: 1024
/// hidden, 24 layers, 50k vocabulary) and far below what would exhaust a machine.
pub const MAX_VOCAB: i64 = 1 << 22;
pub const MAX_HIDDEN: i64 = 1 << 15;
pub const MAX_LAYERS: i64 = 256;
pub const MAX_INTERMEDIATE: i64 = 1 << 17;
pub const MAX_POSITIONS: i64 = 1 << 17;
pub const MAX_TYPE_VOCAB: i64 = 1 << 10;
pub const MAX_LABELS: i64 = 1 << 16;
/// At most this many parameters in all (about 4x the largest BERT-family model).
pub const MAX_PARAMS: u128 = 1 << 36;

impl ModelConfig {
    /// Reads and checks `config.json`; every error names the file and the field.
    pub fn from_file(path: &Path) -> Result<ModelConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io { path: path.to_path_buf(), source: e })?;
        Self::from_json(&text, path)
    }

    pub fn from_json(text: &str, path: &Path) -> Result<ModelConfig, ConfigError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let cfg: ModelConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_data() && field != "." {
                ConfigError::Field { path: path.to_path_buf(), field, why: inner.to_string() }
            } else {
                ConfigError::Json { path: path.to_path_buf(), why: inner.to_string() }
            }
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |field: &str, why: String| ConfigError::Field { path: path.to_path_buf(), field: field.to_string(), why };
        self.model_type_enum().map_err(|why| bad("model_type", why))?;
        for (field, v, max) in [
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("hidden_size", self.hidden_size, MAX_HIDDEN),
            ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
            ("num_attention_heads", self.num_attention_heads, MAX_HIDDEN),
            ("intermediate_size", self.intermediate_size, MAX_INTERMEDIATE),
            ("max_position_embeddings", self.max_position_embeddings, MAX_POSITIONS),
            ("type_vocab_size", self.type_vocab_size, MAX_TYPE_VOCAB),
        ] {
            if v <= 0 {
                return Err(bad(field, format!("must be positive, got {v}")));
            }
            if v > max {
                return Err(bad(field, format!("{v} exceeds the supported maximum {max}")));
            }
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(bad(
                "num_attention_heads",
                format!("hidden_size {} is not a multiple of num_attention_heads {}", self.hidden_size, self.num_attention_heads),
            ));
        }
        if let Some(n) = self.num_labels {
            if !(1..=MAX_LABELS).contains(&n) {
                return Err(bad("num_labels", format!("{n} is outside 1..={MAX_LABELS}")));
            }
        }
        if self.position_embedding_type != "absolute" {
            return Err(bad("position_embedding_type", format!("only \"absolute\" is supported, got {:?}", self.position_embedding_type)));
        }
        if self.is_decoder {
            return Err(bad("is_decoder", "decoder configurations are not supported".into()));
        }
        let probability = Interval::below(0.0, 1.0);
        for (field, p) in [
            ("hidden_dropout_prob", Some(self.hidden_dropout_prob)),
            ("attention_probs_dropout_prob", Some(self.attention_probs_dropout_prob)),
            ("classifier_dropout", self.classifier_dropout),
        ] {
            if let Some(p) = p {
                if !probability.contains(p) {
                    return Err(bad(field, format!("must be in [0, 1), got {p}")));
                }
            }
        }
        // LayerNorm divides by sqrt(var + eps): eps <= 0 turns a constant row into NaN.
        if !Interval::open(0.0, 1.0).contains(self.layer_norm_eps) {
            return Err(bad("layer_norm_eps", format!("must be a finite number in (0, 1), got {}", self.layer_norm_eps)));
        }
        if !Interval::closed(0.0, 10.0).contains(self.initializer_range) {
            return Err(bad("initializer_range", format!("must be a finite number in [0, 10], got {}", self.initializer_range)));
        }
        if self.pad_id() < 0 || self.pad_id() >= self.vocab_size {
            return Err(bad("pad_token_id", format!("{} is outside the vocabulary (vocab_size {})", self.pad_id(), self.vocab_size)));
        }
        if self.family() == ModelType::Roberta && self.pad_id() + 1 >= self.max_position_embeddings {
            return Err(bad(
                "pad_token_id",
                format!(
                    "{}: RoBERTa's positions start after the pad id, leaving none of the {} max_position_embeddings",
                    self.pad_id(),
                    self.max_position_embeddings
                ),
            ));
        }
        let total = counts::base_params(self, self.labels().max(2));
        if total > MAX_PARAMS {
            return Err(bad("hidden_size", format!("the model would have {total} parameters, more than the supported {MAX_PARAMS}")));
        }
        Ok(())
    }

    pub fn model_type_enum(&self) -> Result<ModelType, String> {
        match self.model_type.as_str() {
            "roberta" => Ok(ModelType::Roberta),
            "bert" => Ok(ModelType::Bert),
            other => Err(format!("unsupported model type {other:?} (supported: \"roberta\", \"bert\")")),
        }
    }

    /// The family; valid after `from_file`, which rejected anything else.
    pub fn family(&self) -> ModelType {
        if self.model_type == "bert" {
            ModelType::Bert
        } else {
            ModelType::Roberta
        }
    }

    /// `pad_token_id` with transformers' per-family default (RoBERTa 1, BERT 0).
    pub fn pad_id(&self) -> i64 {
        self.pad_token_id.unwrap_or(match self.model_type.as_str() {
            "roberta" => 1,
            _ => 0,
        })
    }

    /// Number of labels as transformers derives it: `num_labels`, else `id2label`'s size, else 2.
    pub fn labels(&self) -> i64 {
        self.num_labels.or_else(|| self.id2label.as_ref().map(|m| m.len() as i64)).unwrap_or(2)
    }

    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }

    /// Dropout in the classification head: `classifier_dropout`, else `hidden_dropout_prob`.
    pub fn head_dropout(&self) -> f64 {
        self.classifier_dropout.unwrap_or(self.hidden_dropout_prob)
    }

    /// Longest input the position table allows (RoBERTa's positions start after the pad id).
    pub fn max_tokens(&self) -> usize {
        match self.family() {
            ModelType::Roberta => (self.max_position_embeddings - self.pad_id() - 1).max(0) as usize,
            ModelType::Bert => self.max_position_embeddings as usize,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_with(field: &str, value: serde_json::Value) -> Result<ModelConfig, String> {
        let mut m: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
            r#"{"model_type": "bert", "vocab_size": 100, "hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64, "num_hidden_layers": 2}"#,
        )
        .unwrap();
        m.insert(field.into(), value);
        let json = serde_json::to_string(&m).unwrap();
        ModelConfig::from_json(&json, Path::new("m/config.json")).map_err(|e| e.to_string())
    }

    #[test]
    fn every_size_is_bounded_and_named() {
        use serde_json::json;
        assert!(read_with("num_labels", json!(3)).is_ok());
        for (field, value) in [
            ("hidden_size", json!(1_000_000_000i64)),
            ("num_hidden_layers", json!(1_000_000)),
            ("vocab_size", json!(100_000_000)),
            ("max_position_embeddings", json!(100_000_000)),
            ("intermediate_size", json!(-3)),
            ("num_attention_heads", json!(0)),
            ("layer_norm_eps", json!(0)),
            ("layer_norm_eps", json!(-1e-5)),
            ("pad_token_id", json!(1_000_000)),
            ("hidden_dropout_prob", json!(1.5)),
            ("num_labels", json!(0)),
            ("hidden_size", json!("big")),
            ("pad_token_id", json!(1e6)),
        ] {
            let e = read_with(field, value.clone()).unwrap_err();
            assert!(e.starts_with(&format!("m/config.json: field `{field}`")), "{field}={value}: {e}");
        }
    }
}
