//! Full fine-tuning: every base parameter trains (`peftrain_spec::method::full`); no tensor is
//! added, nothing to merge.

use super::Peft;

pub use peftrain_spec::method::Full;

impl Peft for Full {}
