//! When the loop logs, evaluates and saves: TrainingArguments' `IntervalStrategy` (`steps`,
//! `epoch`, `no`) as a pure function of the step, unit-tested without a run.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// `--logging-strategy`, `--eval-strategy`, `--save-strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Every `--*-steps` optimizer steps.
    Steps,
    /// At the end of each epoch.
    Epoch,
    /// Never during training (peftrain still evaluates, logs and checkpoints the last step:
    /// run_glue.py's final evaluation, and the state `--resume` and the outputs come from).
    No,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Steps => "steps",
            Strategy::Epoch => "epoch",
            Strategy::No => "no",
        }
    }

    /// Whether the event is due after optimizer step `global_step` (1-based), `every` the
    /// interval of `steps`, `end_of_epoch` whether that step closed an epoch.
    pub fn due(self, every: u64, global_step: u64, end_of_epoch: bool) -> bool {
        match self {
            Strategy::Steps => every > 0 && global_step.is_multiple_of(every),
            Strategy::Epoch => end_of_epoch,
            Strategy::No => false,
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "steps" => Ok(Strategy::Steps),
            "epoch" => Ok(Strategy::Epoch),
            "no" => Ok(Strategy::No),
            other => Err(format!("{other:?}: expected steps, epoch or no")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_strategy_fires_where_the_trainer_s_does() {
        let fired = |s: Strategy, every| (1..=10u64).filter(|&g| s.due(every, g, g % 4 == 0)).collect::<Vec<_>>();
        assert_eq!(fired(Strategy::Steps, 3), [3, 6, 9]);
        assert_eq!(fired(Strategy::Epoch, 3), [4, 8]);
        assert_eq!(fired(Strategy::No, 3), Vec::<u64>::new());
        for s in [Strategy::Steps, Strategy::Epoch, Strategy::No] {
            assert_eq!(s.as_str().parse::<Strategy>(), Ok(s));
            assert_eq!(serde_json::to_value(s).unwrap(), serde_json::json!(s.as_str()));
        }
        assert!("always".parse::<Strategy>().is_err());
    }
}
