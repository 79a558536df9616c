//! Parameter-efficient methods: which base parameters train, and which modules get adapters.
//! The method itself is `peftrain_spec::Method` (plain data, shared with the coordinator);
//! this module gives each one its behaviour. The model asks while it is built, so the
//! trainable set is fixed by construction.

pub mod bitfit;
pub mod full;
pub mod lora;

pub use peftrain_spec::{BitFitScope, LoraParams as LoraConfig, Method, MethodKind};

/// Module names of the classification head, trained by every method (peft's `modules_to_save`
/// for `SEQ_CLS`). The seed ran LoRA with this head frozen at random init; never again.
pub const HEAD_PREFIX: &str = "classifier.";

/// What a method does to the model.
pub trait MethodExt {
    /// Whether the base parameter `name` (a checkpoint key) is trained.
    fn trains_base(&self, name: &str) -> bool;
    /// The LoRA adapter for the Linear module at `module` (e.g.
    /// `roberta.encoder.layer.0.attention.self.query`), if the method puts one there.
    fn lora_for(&self, module: &str) -> Option<&LoraConfig>;
    /// Parameters peft counts in "all params" beyond the model's own: `modules_to_save` keeps a
    /// frozen original of the head beside the trained copy.
    fn peft_extra_params(&self, head_params: i64) -> i64;
}

impl MethodExt for Method {
    fn trains_base(&self, name: &str) -> bool {
        match self {
            Method::Full => full::trains(name),
            Method::BitFit(scope) => bitfit::trains(name, *scope),
            Method::Lora(_) => lora::trains_base(name),
        }
    }

    fn lora_for(&self, module: &str) -> Option<&LoraConfig> {
        match self {
            Method::Lora(cfg) if cfg.targets(module) => Some(cfg),
            _ => None,
        }
    }

    fn peft_extra_params(&self, head_params: i64) -> i64 {
        match self {
            Method::Lora(_) => head_params,
            _ => 0,
        }
    }
}
