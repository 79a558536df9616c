//! peftrain's worker library: the RoBERTa/BERT encoders in libtorch, the PEFT methods, AdamW,
//! the ring all-reduce and the gRPC services a worker process serves.

pub mod adapter_io;
pub mod bench;
pub mod collective;
pub mod compute;
pub mod config;
pub mod cuda;
pub mod engine;
pub mod error;
pub mod fingerprint;
pub mod model;
pub mod ops;
pub mod optim;
pub mod params;
pub mod peft;
pub mod replica;
pub mod run;
pub mod service;
pub mod state;
pub mod stats;
