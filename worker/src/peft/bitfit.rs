//! BitFit (Ben Zaken et al., 2022): only bias terms train, plus the classification head.

use super::HEAD_PREFIX;

/// Which parameters BitFit trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BitFitScope {
    /// The paper's setting: every bias (LayerNorm's included) and the whole task head.
    All,
    /// The seed notebook's variant: only parameters named `bias` (the head's weights stay frozen).
    BiasOnly,
}

impl BitFitScope {
    pub fn parse(s: &str) -> Option<BitFitScope> {
        match s {
            "all" | "" => Some(BitFitScope::All),
            "bias-only" => Some(BitFitScope::BiasOnly),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            BitFitScope::All => "all",
            BitFitScope::BiasOnly => "bias-only",
        }
    }
}

pub fn trains(name: &str, scope: BitFitScope) -> bool {
    let is_bias = name.ends_with(".bias") || name == "bias";
    match scope {
        BitFitScope::All => is_bias || name.starts_with(HEAD_PREFIX),
        BitFitScope::BiasOnly => is_bias,
    }
}
