//! Full fine-tuning: every base parameter trains.

use super::Peft;

/// Full fine-tuning has no parameters.
pub struct Full;

impl Peft for Full {
    fn trains_base(&self, _name: &str) -> bool {
        true
    }
}
