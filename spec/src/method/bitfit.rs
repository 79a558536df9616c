//! BitFit (Ben Zaken et al., 2022): only bias terms train, plus (by default) the head.

use std::fmt;
use std::str::FromStr;

use peftrain_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use super::{MethodRules, HEAD_PREFIX};

/// Which parameters BitFit trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BitFitScope {
    /// The paper's setting: every bias (LayerNorm's included) and the whole task head.
    #[default]
    All,
    /// The seed notebook's variant: only parameters named `bias` (the head's weights stay frozen).
    BiasOnly,
}

impl BitFitScope {
    pub fn as_str(self) -> &'static str {
        match self {
            BitFitScope::All => "all",
            BitFitScope::BiasOnly => "bias-only",
        }
    }

    pub fn from_wire(m: &pb::BitFitMethod) -> BitFitScope {
        if m.bias_only {
            BitFitScope::BiasOnly
        } else {
            BitFitScope::All
        }
    }
}

impl fmt::Display for BitFitScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BitFitScope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(BitFitScope::All),
            "bias-only" => Ok(BitFitScope::BiasOnly),
            other => Err(format!("{other:?}: unknown bitfit scope (all, bias-only)")),
        }
    }
}

impl MethodRules for BitFitScope {
    fn trains_base(&self, name: &str) -> bool {
        let is_bias = name.ends_with(".bias") || name == "bias";
        match self {
            BitFitScope::All => is_bias || name.starts_with(HEAD_PREFIX),
            BitFitScope::BiasOnly => is_bias,
        }
    }

    fn describe(&self) -> String {
        format!("bitfit:{}", self.as_str())
    }

    fn to_wire(&self) -> pb::method_spec::Method {
        pb::method_spec::Method::Bitfit(pb::BitFitMethod { bias_only: *self == BitFitScope::BiasOnly })
    }
}

/// BitFit's flag (`--bitfit-scope`) and `run_config.json` key.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, clap::Args)]
pub struct BitFitArgs {
    /// BitFit: `all` (all biases + head, the paper) or `bias-only` (parameters named bias).
    #[arg(long, value_parser = crate::flag::<BitFitScope>, default_value_t = BitFitScope::All, env = "PEFTRAIN_BITFIT_SCOPE")]
    #[serde(default)]
    pub bitfit_scope: BitFitScope,
}

impl BitFitArgs {
    pub fn flags(&self) -> Vec<(&'static str, String)> {
        vec![("--bitfit-scope", self.bitfit_scope.as_str().to_string())]
    }
}
