//! The worker's error types: model loading and training (each names the file and the field or
//! tensor at fault), and what a Worker RPC can fail with, mapped to a gRPC status in one place.

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
    Field { path: PathBuf, field: String, why: String },
    #[error("{path}: {what} not found")]
    Missing { path: PathBuf, what: String },
    #[error("{path}: no model weights (expected model.safetensors or pytorch_model.bin)")]
    NoWeights { path: PathBuf },
    #[error("{path}: tensor `{name}` is missing from the checkpoint")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has shape {found:?}, the model expects {expected:?}")]
    ShapeMismatch { path: PathBuf, name: String, expected: Vec<i64>, found: Vec<i64> },
    #[error("{path}: cannot read checkpoint: {why}")]
    Checkpoint { path: PathBuf, why: String },
    #[error("method: {0}")]
    Method(String),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Everything a Worker RPC can fail with; mapped to a gRPC status in one place.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("worker is not set up in a group yet")]
    NotSetUp,
    #[error("stale request: generation {got}, the group is at {current}")]
    StaleGeneration { got: u64, current: u64 },
    #[error("bad shard: {0}")]
    BadShard(String),
    #[error("bad group setup: {0}")]
    BadSetup(String),
    #[error("gradient chunk refused: {0}")]
    BadChunk(String),
    #[error("no step {0} is held for commit")]
    NothingHeld(u64),
    #[error("state refused: {0}")]
    BadState(String),
    #[error("all-reduce failed: {0}")]
    Collective(#[from] crate::collective::CollectiveError),
    #[error("{0}")]
    Model(#[from] ModelError),
    #[error("internal: {0}")]
    Internal(String),
}

impl From<WorkerError> for tonic::Status {
    fn from(e: WorkerError) -> tonic::Status {
        let msg = e.to_string();
        match e {
            WorkerError::NotSetUp => tonic::Status::failed_precondition(msg),
            WorkerError::StaleGeneration { .. } => tonic::Status::aborted(msg),
            WorkerError::BadShard(_) | WorkerError::BadSetup(_) | WorkerError::BadChunk(_) | WorkerError::BadState(_) => {
                tonic::Status::invalid_argument(msg)
            }
            WorkerError::NothingHeld(_) => tonic::Status::failed_precondition(msg),
            // A failed all-reduce is a peer's doing, not this worker's: ABORTED tells the
            // coordinator to look for the lost peer rather than drop this worker.
            WorkerError::Collective(_) => tonic::Status::aborted(msg),
            WorkerError::Model(_) => tonic::Status::failed_precondition(msg),
            WorkerError::Internal(_) => tonic::Status::internal(msg),
        }
    }
}
