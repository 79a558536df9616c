//! The learning-rate schedule, a pure function of the step (transformers'
//! `get_linear_schedule_with_warmup`), and the run's step arithmetic.

/// Learning rate for optimizer step `step` (0-based): linear warmup over `warmup` steps, then
/// linear decay to zero at `total`.
pub fn linear_lr(base_lr: f64, step: u64, warmup: u64, total: u64) -> f64 {
    let s = step as f64;
    if step < warmup {
        return base_lr * s / (warmup.max(1) as f64);
    }
    let remaining = total.saturating_sub(step) as f64;
    base_lr * (remaining / (total.saturating_sub(warmup).max(1) as f64)).max(0.0)
}

/// Warmup steps as the Trainer derives them: `--warmup-steps` if given, else
/// ceil(total * warmup_ratio).
pub fn warmup_steps(total: u64, warmup_steps: Option<u64>, warmup_ratio: f64) -> u64 {
    warmup_steps.unwrap_or_else(|| (total as f64 * warmup_ratio).ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_linear_decay() {
        assert_eq!(linear_lr(1.0, 0, 10, 110), 0.0);
        assert_eq!(linear_lr(1.0, 5, 10, 110), 0.5);
        assert_eq!(linear_lr(1.0, 10, 10, 110), 1.0);
        assert_eq!(linear_lr(1.0, 60, 10, 110), 0.5);
        assert_eq!(linear_lr(1.0, 110, 10, 110), 0.0);
        assert_eq!(linear_lr(2.0, 0, 0, 4), 2.0);
        assert_eq!(warmup_steps(101, None, 0.06), 7);
        assert_eq!(warmup_steps(101, Some(3), 0.5), 3);
    }
}
