//! Where a model directory keeps its files; the `config.json` it holds is read through
//! `peftrain-spec` (sizes, eps, pad id, activation: every field the encoder reads).

use std::path::{Path, PathBuf};

use crate::error::ModelError;

/// The config.json mirror lives in `peftrain-spec`, where the coordinator reads (and bounds) the
/// same fields without libtorch.
pub use peftrain_spec::model_config::{Activation, ModelType};
pub type Config = peftrain_spec::ModelConfig;

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
            return Err(ModelError::Missing { path: dir.to_path_buf(), what: "model directory".into() });
        }
        let config = dir.join("config.json");
        if !config.is_file() {
            return Err(ModelError::Missing { path: config, what: "config.json".into() });
        }
        let weights = ["model.safetensors", "pytorch_model.bin"].iter().map(|f| dir.join(f)).find(|p| p.is_file());
        Ok(ModelFiles { dir: dir.to_path_buf(), config, weights })
    }
}
