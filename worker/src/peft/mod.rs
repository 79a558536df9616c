//! Parameter-efficient methods: which base parameters train, which Linear modules get which
//! adapter (`model::adapters` computes it), and how it folds back into the base. The method itself is
//! `peftrain_spec::Method` (plain data, shared with the coordinator); this module gives each
//! one its behaviour. The model asks while it is built, so the trainable set is fixed by
//! construction.

pub mod bitfit;
pub mod full;
pub mod ia3;
pub mod lora;

use std::collections::BTreeMap;

use tch::Tensor;

pub use peftrain_spec::{BitFitScope, Ia3Params, LoraParams as LoraConfig, Method, MethodKind};

/// Module names of the classification head, trained by every method (peft's `modules_to_save`
/// for `SEQ_CLS`). The seed ran LoRA with this head frozen at random init; never again.
pub const HEAD_PREFIX: &str = "classifier.";

/// What a method puts on a Linear module, as plain data (`model::adapters` builds and runs it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AdapterSpec {
    Lora { r: i64, scaling: f64, dropout: f64 },
    Ia3 { feedforward: bool },
}

/// Whether `name` is a parameter a method adds beside the base model (never in a base
/// checkpoint, never in a merged one).
pub fn is_added(name: &str) -> bool {
    lora::is_added(name) || ia3::is_added(name)
}

/// What a method does to the model: the one trait a PEFT method implements, in its own file
/// (full.rs, bitfit.rs, lora.rs, ia3.rs), on its `peftrain_spec` parameters.
pub trait Peft {
    /// Whether the base parameter `name` (a checkpoint key) is trained.
    fn trains_base(&self, name: &str) -> bool;
    /// The adapter this method puts on the Linear module `module` (e.g.
    /// `roberta.encoder.layer.0.attention.self.query`), if any.
    fn adapter_for(&self, _module: &str) -> Option<AdapterSpec> {
        None
    }
    /// Parameters peft counts in "all params" beyond the model's own: `modules_to_save` keeps a
    /// frozen original of the head beside the trained copy.
    fn peft_extra_params(&self, _head_params: i64) -> i64 {
        0
    }
    /// The base parameter `name` with this method's adapter folded in (peft's
    /// `merge_and_unload`), from every parameter of the replica in fp32 on the CPU.
    fn merged(&self, _name: &str, value: Tensor, _all: &BTreeMap<String, Tensor>) -> Tensor {
        value
    }
    /// The module names its adapters target (None: it adds none), for an error when they
    /// matched no module of the model.
    fn target_modules(&self) -> Option<&[String]> {
        None
    }
}

/// The method's behaviour: the one place a new method is registered.
pub fn peft(method: &Method) -> &dyn Peft {
    match method {
        Method::Full => &full::Full,
        Method::BitFit(scope) => scope,
        Method::Lora(params) => params,
        Method::Ia3(params) => params,
    }
}

/// `Peft` called on the method itself (`method.trains_base(name)`).
pub trait MethodExt {
    fn trains_base(&self, name: &str) -> bool;
    fn adapter_for(&self, module: &str) -> Option<AdapterSpec>;
    fn peft_extra_params(&self, head_params: i64) -> i64;
    fn merged(&self, name: &str, value: Tensor, all: &BTreeMap<String, Tensor>) -> Tensor;
}

impl MethodExt for Method {
    fn trains_base(&self, name: &str) -> bool {
        peft(self).trains_base(name)
    }

    fn adapter_for(&self, module: &str) -> Option<AdapterSpec> {
        peft(self).adapter_for(module)
    }

    fn peft_extra_params(&self, head_params: i64) -> i64 {
        peft(self).peft_extra_params(head_params)
    }

    fn merged(&self, name: &str, value: Tensor, all: &BTreeMap<String, Tensor>) -> Tensor {
        peft(self).merged(name, value, all)
    }
}

/// Names of the trainable parameters a method adds, for an error when its targets matched no
/// module of the model.
pub fn targets_of(method: &Method) -> Option<&[String]> {
    peft(method).target_modules()
}
