//! The learning-rate schedules, pure functions of the step (transformers' `get_scheduler`:
//! `LambdaLR` multiplies the peak rate by each schedule's factor), and the run's warm-up
//! arithmetic.

use std::f64::consts::PI;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// `--lr-scheduler-type`, TrainingArguments' `lr_scheduler_type` with its names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerType {
    /// Warm-up, then linear decay to zero at the last step (the Trainer's default).
    #[default]
    Linear,
    /// Warm-up, then half a cosine down to zero (`num_cycles` 0.5).
    Cosine,
    /// Warm-up, then one cosine decay to zero restarted `num_cycles` (1) times: hard restarts.
    CosineWithRestarts,
    /// Warm-up, then `(peak - lr_end) * remaining^power + lr_end` (lr_end 1e-7, power 1).
    Polynomial,
    /// The peak rate at every step, no warm-up.
    Constant,
    /// Warm-up, then the peak rate.
    ConstantWithWarmup,
}

/// `get_polynomial_decay_schedule_with_warmup`'s defaults, as `get_scheduler` passes them.
pub const POLYNOMIAL_LR_END: f64 = 1e-7;
pub const POLYNOMIAL_POWER: f64 = 1.0;

impl SchedulerType {
    pub const ALL: [SchedulerType; 6] = [
        SchedulerType::Linear,
        SchedulerType::Cosine,
        SchedulerType::CosineWithRestarts,
        SchedulerType::Polynomial,
        SchedulerType::Constant,
        SchedulerType::ConstantWithWarmup,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SchedulerType::Linear => "linear",
            SchedulerType::Cosine => "cosine",
            SchedulerType::CosineWithRestarts => "cosine_with_restarts",
            SchedulerType::Polynomial => "polynomial",
            SchedulerType::Constant => "constant",
            SchedulerType::ConstantWithWarmup => "constant_with_warmup",
        }
    }
}

impl fmt::Display for SchedulerType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SchedulerType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        SchedulerType::ALL.into_iter().find(|t| t.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = SchedulerType::ALL.iter().map(|t| t.as_str()).collect();
            format!("{s:?}: expected {}", names.join(", "))
        })
    }
}

/// A run's schedule: its type, the peak rate, warm-up and total optimizer steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub kind: SchedulerType,
    pub peak: f64,
    pub warmup: u64,
    pub total: u64,
}

impl Schedule {
    /// The learning rate of optimizer step `step` (0-based; the rate logged after a step is
    /// the next one's): `peak * factor(step)`, in the order LambdaLR computes it, so the rate
    /// is transformers' to the last bit.
    pub fn lr(&self, step: u64) -> f64 {
        self.peak * self.factor(step)
    }

    /// The schedule's multiplier of the peak rate, written as transformers' lr lambdas are.
    fn factor(&self, step: u64) -> f64 {
        let (s, w, t) = (step as f64, self.warmup, self.total);
        if self.kind == SchedulerType::Constant {
            return 1.0;
        }
        if step < w {
            return s / (w.max(1) as f64);
        }
        let progress = (step - w) as f64 / (t.saturating_sub(w).max(1) as f64);
        match self.kind {
            SchedulerType::Constant | SchedulerType::ConstantWithWarmup => 1.0,
            SchedulerType::Linear => ((t as f64 - s) / (t.saturating_sub(w).max(1) as f64)).max(0.0),
            SchedulerType::Cosine => (0.5 * (1.0 + (PI * 0.5 * 2.0 * progress).cos())).max(0.0),
            SchedulerType::CosineWithRestarts => {
                if progress >= 1.0 {
                    0.0
                } else {
                    (0.5 * (1.0 + (PI * ((1.0 * progress) % 1.0)).cos())).max(0.0)
                }
            }
            SchedulerType::Polynomial => {
                let lr_init = self.peak;
                if step > t || t == w {
                    POLYNOMIAL_LR_END / lr_init
                } else {
                    let pct_remaining = 1.0 - (s - w as f64) / ((t - w) as f64);
                    ((lr_init - POLYNOMIAL_LR_END) * pct_remaining.powf(POLYNOMIAL_POWER) + POLYNOMIAL_LR_END) / lr_init
                }
            }
        }
    }

    /// What the schedule cannot do with these numbers (transformers raises the same).
    pub fn check(&self) -> Result<(), String> {
        if self.kind == SchedulerType::Polynomial && self.peak < POLYNOMIAL_LR_END {
            return Err(format!(
                "--lr-scheduler-type polynomial: the learning rate {:e} is below the schedule's end rate {POLYNOMIAL_LR_END:e}",
                self.peak
            ));
        }
        Ok(())
    }
}

/// Warmup steps as the Trainer derives them: `--warmup-steps` if given, else
/// ceil(total * warmup_ratio).
pub fn warmup_steps(total: u64, warmup_steps: Option<u64>, warmup_ratio: f64) -> u64 {
    warmup_steps.unwrap_or_else(|| (total as f64 * warmup_ratio).ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linear(peak: f64, step: u64, warmup: u64, total: u64) -> f64 {
        Schedule { kind: SchedulerType::Linear, peak, warmup, total }.lr(step)
    }

    #[test]
    fn warmup_then_linear_decay() {
        assert_eq!(linear(1.0, 0, 10, 110), 0.0);
        assert_eq!(linear(1.0, 5, 10, 110), 0.5);
        assert_eq!(linear(1.0, 10, 10, 110), 1.0);
        assert_eq!(linear(1.0, 60, 10, 110), 0.5);
        assert_eq!(linear(1.0, 110, 10, 110), 0.0);
        assert_eq!(linear(2.0, 0, 0, 4), 2.0);
        assert_eq!(warmup_steps(101, None, 0.06), 7);
        assert_eq!(warmup_steps(101, Some(3), 0.5), 3);
    }

    #[test]
    fn names_are_the_trainer_s() {
        for t in SchedulerType::ALL {
            assert_eq!(t.as_str().parse::<SchedulerType>(), Ok(t));
            assert_eq!(serde_json::to_value(t).unwrap(), serde_json::json!(t.as_str()));
        }
        assert!("cosine_annealing".parse::<SchedulerType>().unwrap_err().contains("constant_with_warmup"));
    }
}
