//! Full fine-tuning: every base parameter trains.

pub fn trains(_name: &str) -> bool {
    true
}
