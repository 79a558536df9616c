//! Parameter-efficient methods in libtorch: the tensors a method adds to a Linear module, how
//! they run, and how they fold back into the base. What a method *is* (its parameters, which
//! base parameters train, its flags and wire form) is `peftrain_spec::method`; each method's
//! tensors are one implementation of `Peft` in its own file here (full.rs, bitfit.rs, lora.rs,
//! ia3.rs). The model asks while it is built, so the trainable set is fixed by construction.

pub mod bitfit;
pub mod full;
pub mod ia3;
pub mod lora;

use std::collections::BTreeMap;

use tch::Tensor;

use crate::error::ModelError;
use crate::params::Builder;

pub use peftrain_spec::method::HEAD_PREFIX;
pub use peftrain_spec::{BitFitScope, Ia3Params, LoraParams as LoraConfig, Method, MethodKind, MethodRules};

/// What a method does to the model's tensors: the one trait a PEFT method implements.
pub trait Peft {
    /// The adapter this method puts on the Linear module `module` (e.g.
    /// `roberta.encoder.layer.0.attention.self.query`) of `in_dim` -> `out_dim` features, its
    /// parameters declared through `b` (`Builder::added`) under peft's names; None leaves the
    /// module alone.
    fn adapter(&self, _b: &mut Builder, _module: &str, _in_dim: i64, _out_dim: i64) -> Result<Option<Box<dyn LinearAdapter>>, ModelError> {
        Ok(None)
    }
    /// The base parameter `name` with this method's adapter folded in (peft's
    /// `merge_and_unload`), from every parameter of the replica in fp32 on the CPU.
    fn merged(&self, _name: &str, value: Tensor, _all: &BTreeMap<String, Tensor>) -> Tensor {
        value
    }
}

/// An adapter on one Linear module: its output given the module's base Linear `base`.
pub trait LinearAdapter: Send {
    fn forward(&self, x: &Tensor, base: &dyn Fn(&Tensor) -> Tensor, train: bool) -> Tensor;
}

/// The method's tensors: the one place a new method is registered in the worker.
pub fn peft(method: &Method) -> &dyn Peft {
    match method {
        Method::Full => &full::Full,
        Method::BitFit(scope) => scope,
        Method::Lora(params) => params,
        Method::Ia3(params) => params,
    }
}
