//! LoRA (Hu et al., 2021) as peft implements it: `y = W x + b + B(A(dropout(x))) * alpha / r`
//! on the target Linear modules, A Kaiming-uniform and B zero at the start, the head trained as
//! peft's `modules_to_save`.

use super::HEAD_PREFIX;

#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub r: i64,
    pub alpha: f64,
    pub dropout: f64,
    /// Module names matched as peft matches `target_modules`: the whole name or its last
    /// dotted components.
    pub target_modules: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            r: 8,
            alpha: 16.0,
            dropout: 0.1,
            target_modules: vec!["query".into(), "value".into()],
        }
    }
}

impl LoraConfig {
    /// peft's scaling without rsLoRA.
    pub fn scaling(&self) -> f64 {
        self.alpha / self.r as f64
    }

    pub fn targets(&self, module: &str) -> bool {
        self.target_modules
            .iter()
            .any(|t| module == t || module.ends_with(&format!(".{t}")))
    }
}

/// Base parameters LoRA trains: the head only.
pub fn trains_base(name: &str) -> bool {
    name.starts_with(HEAD_PREFIX)
}
