//! `--base-dtype`: the dtype the frozen base weights are kept and computed in.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseDtype {
    /// The worker picks for its CPU class or device (bf16 only where it was measured faster).
    #[default]
    Auto,
    /// fp32: Hugging Face's numbers to the digit.
    Fp32,
    /// bf16 frozen weights and base matmuls; trainable weights, gradients and AdamW state fp32.
    Bf16,
}

impl BaseDtype {
    pub fn as_str(self) -> &'static str {
        match self {
            BaseDtype::Auto => "auto",
            BaseDtype::Fp32 => "fp32",
            BaseDtype::Bf16 => "bf16",
        }
    }
}

impl BaseDtype {
    /// The wire's `RunSpec.base_dtype`: unset (proto3's empty string) is fp32, the exact one.
    pub fn from_wire(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            Ok(BaseDtype::Fp32)
        } else {
            s.parse()
        }
    }
}

impl fmt::Display for BaseDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BaseDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(BaseDtype::Auto),
            "fp32" => Ok(BaseDtype::Fp32),
            "bf16" => Ok(BaseDtype::Bf16),
            other => Err(format!("{other:?}: expected auto, fp32 or bf16")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_it_prints() {
        for d in [BaseDtype::Auto, BaseDtype::Fp32, BaseDtype::Bf16] {
            assert_eq!(d.as_str().parse::<BaseDtype>(), Ok(d));
            assert_eq!(serde_json::to_value(d).unwrap(), serde_json::json!(d.as_str()));
        }
        assert_eq!(BaseDtype::from_wire(""), Ok(BaseDtype::Fp32));
        assert_eq!(BaseDtype::from_wire("auto"), Ok(BaseDtype::Auto));
        assert!("".parse::<BaseDtype>().is_err());
        assert!("float32".parse::<BaseDtype>().is_err());
    }
}
