//! BitFit (Ben Zaken et al., 2022): only bias terms train, plus the classification head.

use super::{BitFitScope, Peft, HEAD_PREFIX};

impl Peft for BitFitScope {
    fn trains_base(&self, name: &str) -> bool {
        let is_bias = name.ends_with(".bias") || name == "bias";
        match self {
            BitFitScope::All => is_bias || name.starts_with(HEAD_PREFIX),
            BitFitScope::BiasOnly => is_bias,
        }
    }
}
