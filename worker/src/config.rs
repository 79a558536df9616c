//! The model's `config.json`, mirrored as plain serde data: every field the encoder reads comes
//! from here (sizes, eps, pad id, activation), never from a constant in the model code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::ModelError;

/// Model families this crate ports.
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

/// Fields of a BERT/RoBERTa `config.json` (transformers' `BertConfig` / `RobertaConfig`).
/// Defaults are transformers' own, so a minimal config loads as it would in Python.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
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

impl Config {
    /// Reads and validates `config.json`; every error names the file and the field.
    pub fn from_file(path: &Path) -> Result<Config, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        Self::from_json(&text, path)
    }

    pub fn from_json(text: &str, path: &Path) -> Result<Config, ModelError> {
        let cfg: Config = serde_json::from_str(text).map_err(|e| ModelError::Json {
            path: path.to_path_buf(),
            source: e,
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<(), ModelError> {
        let bad = |field: &str, why: String| ModelError::Field {
            path: path.to_path_buf(),
            field: field.to_string(),
            why,
        };
        self.model_type_enum(path)?;
        if self.hidden_size <= 0 || self.num_attention_heads <= 0 {
            return Err(bad("hidden_size", "must be positive".into()));
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(bad(
                "num_attention_heads",
                format!(
                    "hidden_size {} is not a multiple of num_attention_heads {}",
                    self.hidden_size, self.num_attention_heads
                ),
            ));
        }
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ] {
            if v <= 0 {
                return Err(bad(field, format!("must be positive, got {v}")));
            }
        }
        if self.position_embedding_type != "absolute" {
            return Err(bad(
                "position_embedding_type",
                format!("only \"absolute\" is supported, got {:?}", self.position_embedding_type),
            ));
        }
        if self.is_decoder {
            return Err(bad("is_decoder", "decoder configurations are not supported".into()));
        }
        for (field, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            ("attention_probs_dropout_prob", self.attention_probs_dropout_prob),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(bad(field, format!("must be in [0, 1), got {p}")));
            }
        }
        if self.pad_id() < 0 || self.pad_id() >= self.vocab_size {
            return Err(bad("pad_token_id", format!("{} is outside the vocabulary", self.pad_id())));
        }
        Ok(())
    }

    pub fn model_type_enum(&self, path: &Path) -> Result<ModelType, ModelError> {
        match self.model_type.as_str() {
            "roberta" => Ok(ModelType::Roberta),
            "bert" => Ok(ModelType::Bert),
            other => Err(ModelError::Field {
                path: path.to_path_buf(),
                field: "model_type".into(),
                why: format!("unsupported model type {other:?} (supported: \"roberta\", \"bert\")"),
            }),
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
        self.num_labels
            .or_else(|| self.id2label.as_ref().map(|m| m.len() as i64))
            .unwrap_or(2)
    }

    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }

    /// Dropout in the classification head: `classifier_dropout`, else `hidden_dropout_prob`.
    pub fn head_dropout(&self) -> f64 {
        self.classifier_dropout.unwrap_or(self.hidden_dropout_prob)
    }
}

/// Where a model directory keeps its files.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub dir: PathBuf,
    pub config: PathBuf,
    /// `model.safetensors` or `pytorch_model.bin`, if present.
    pub weights: Option<PathBuf>,
}

impl ModelFiles {
    /// Locates config and weights in `dir`. A `config.json` alone is enough for shape-only uses
    /// (`peftrain params`).
    pub fn locate(dir: &Path) -> Result<ModelFiles, ModelError> {
        if !dir.is_dir() {
            return Err(ModelError::Missing {
                path: dir.to_path_buf(),
                what: "model directory".into(),
            });
        }
        let config = dir.join("config.json");
        if !config.is_file() {
            return Err(ModelError::Missing {
                path: config,
                what: "config.json".into(),
            });
        }
        let weights = ["model.safetensors", "pytorch_model.bin"]
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file());
        Ok(ModelFiles {
            dir: dir.to_path_buf(),
            config,
            weights,
        })
    }
}
