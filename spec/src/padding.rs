//! How a worker lays a batch out (`--padding`), which also decides how the coordinator splits
//! a global batch: the step waits for the slowest shard, and what "slow" means is the layout's.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// `--padding auto|free|padded`, and the wire's `RunSpec.padding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Padding {
    /// The worker picks for its device: free on a CPU, padded on a GPU (as measured,
    /// docs/performance.md: a CPU's step costs its matmuls' work, a GPU's its kernel launches).
    #[default]
    Auto,
    /// Real tokens only, padded per length group around attention.
    Free,
    /// The padded [batch, seq] layout transformers computes.
    Padded,
}

impl Padding {
    pub fn as_str(self) -> &'static str {
        match self {
            Padding::Auto => "auto",
            Padding::Free => "free",
            Padding::Padded => "padded",
        }
    }

    /// Whether a worker on a CPU (`on_cpu`) or on an accelerator computes padding-free.
    pub fn is_free_on(self, on_cpu: bool) -> bool {
        match self {
            Padding::Auto => on_cpu,
            Padding::Free => true,
            Padding::Padded => false,
        }
    }
}

impl fmt::Display for Padding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Padding {
    type Err = String;

    /// The empty string is the wire's default, `auto`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" | "auto" => Ok(Padding::Auto),
            "free" => Ok(Padding::Free),
            "padded" => Ok(Padding::Padded),
            other => Err(format!("{other:?}: expected auto, free or padded")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_it_prints_and_resolves_by_device() {
        for p in [Padding::Auto, Padding::Free, Padding::Padded] {
            assert_eq!(p.as_str().parse::<Padding>(), Ok(p));
        }
        assert_eq!("".parse::<Padding>(), Ok(Padding::Auto));
        assert!("Free".parse::<Padding>().is_err());
        assert!(Padding::Auto.is_free_on(true) && !Padding::Auto.is_free_on(false));
        assert!(Padding::Free.is_free_on(false) && !Padding::Padded.is_free_on(true));
    }
}
