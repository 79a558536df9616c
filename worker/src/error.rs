//! Errors of model loading and training; each names the file and the field or tensor at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: malformed JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Config(#[from] peftrain_spec::ConfigError),
    #[error("{path}: field `{field}`: {why}")]
    Field {
        path: PathBuf,
        field: String,
        why: String,
    },
    #[error("{path}: {what} not found")]
    Missing { path: PathBuf, what: String },
    #[error("{path}: no model weights (expected model.safetensors or pytorch_model.bin)")]
    NoWeights { path: PathBuf },
    #[error("{path}: tensor `{name}` is missing from the checkpoint")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has shape {found:?}, the model expects {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<i64>,
        found: Vec<i64>,
    },
    #[error("{path}: cannot read checkpoint: {why}")]
    Checkpoint { path: PathBuf, why: String },
    #[error("method: {0}")]
    Method(String),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}
