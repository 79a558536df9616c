//! Parameter-efficient methods: which base parameters train, and which modules get adapters.
//! Each method is a small module; the model asks them while it is built, so the trainable set
//! is fixed by construction.

pub mod bitfit;
pub mod full;
pub mod lora;

pub use bitfit::BitFitScope;
pub use lora::LoraConfig;

/// Module names of the classification head, trained by every method (peft's `modules_to_save`
/// for `SEQ_CLS`). The seed ran LoRA with this head frozen at random init; never again.
pub const HEAD_PREFIX: &str = "classifier.";

/// The fine-tuning method of a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    Full,
    BitFit(BitFitScope),
    Lora(LoraConfig),
}

impl Method {
    /// Whether the base parameter `name` (a checkpoint key) is trained.
    pub fn trains_base(&self, name: &str) -> bool {
        match self {
            Method::Full => full::trains(name),
            Method::BitFit(scope) => bitfit::trains(name, *scope),
            Method::Lora(_) => lora::trains_base(name),
        }
    }

    /// The LoRA adapter for the Linear module at `module` (e.g.
    /// `roberta.encoder.layer.0.attention.self.query`), if the method puts one there.
    pub fn lora_for(&self, module: &str) -> Option<&LoraConfig> {
        match self {
            Method::Lora(cfg) if cfg.targets(module) => Some(cfg),
            _ => None,
        }
    }

    /// Parameters peft counts in "all params" beyond the model's own: `modules_to_save` keeps a
    /// frozen original of the head beside the trained copy.
    pub fn peft_extra_params(&self, head_params: i64) -> i64 {
        match self {
            Method::Lora(_) => head_params,
            _ => 0,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Method::Full => "full",
            Method::BitFit(_) => "bitfit",
            Method::Lora(_) => "lora",
        }
    }

    /// A canonical description, part of the replica fingerprint.
    pub fn describe(&self) -> String {
        match self {
            Method::Full => "full".into(),
            Method::BitFit(s) => format!("bitfit:{}", s.as_str()),
            Method::Lora(c) => format!(
                "lora:r={}:alpha={}:dropout={}:targets={}",
                c.r,
                c.alpha,
                c.dropout,
                c.target_modules.join(",")
            ),
        }
    }
}
