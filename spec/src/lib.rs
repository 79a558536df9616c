//! peftrain-spec: what the coordinator (no libtorch) and the workers (libtorch) must read the
//! same way — the model's `config.json` with its bounds, parameter counts derived from it alone,
//! the model's identity digest, and the range checks applied to every number from a flag, a
//! file or the wire before it is used or allocated.

pub mod check;
pub mod counts;
pub mod digest;
pub mod model_config;
pub mod padding;
pub mod paths;

pub use model_config::{Activation, ConfigError, ModelConfig, ModelType};
pub use padding::Padding;
