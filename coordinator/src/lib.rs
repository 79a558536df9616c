//! peftrain's coordinator library (no libtorch): GLUE data, tokenization, data order and
//! sharding, the learning-rate schedule, the step table and metrics, the gRPC coordinator and
//! the training loop that drives workers.

pub mod app;
pub mod checkpoint;
pub mod cli;
pub mod cluster;
pub mod compare;
pub mod config;
pub mod data;
pub mod hf_args;
pub mod hub;
pub mod local;
pub mod metrics;
pub mod model_card;
pub mod observe;
pub mod outdir;
pub mod plot;
pub mod progress;
pub mod push;
pub mod registry;
pub mod report;
pub mod run_state;
pub mod sampler;
pub mod schedule;
pub mod service;
pub use peftrain_net::signals;
pub mod strategy;
pub mod table;
pub mod tensorboard;
pub mod tokenize;
pub mod trainer;
