//! BitFit (Ben Zaken et al., 2022): only bias terms train, plus the classification head.

use super::{BitFitScope, HEAD_PREFIX};

pub fn trains(name: &str, scope: BitFitScope) -> bool {
    let is_bias = name.ends_with(".bias") || name == "bias";
    match scope {
        BitFitScope::All => is_bias || name.starts_with(HEAD_PREFIX),
        BitFitScope::BiasOnly => is_bias,
    }
}
