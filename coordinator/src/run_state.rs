//! A run's state beside its weights, in two files: peftrain's own loop state
//! (`peftrain_state.json`, what `--resume` needs to log exactly what an uninterrupted run
//! would) and transformers' `TrainerState` (`trainer_state.json`, in the Trainer's own format,
//! so `TrainerState.load_from_json` and the tools built on `log_history` read it).

use std::path::Path;

use peftrain_spec::torch_rng::StreamState;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::config::TrainConfig;

/// peftrain's own loop state file in a checkpoint.
pub const LOOP_STATE_FILE: &str = "peftrain_state.json";
/// transformers' TrainerState file, in each checkpoint and the output directory.
pub const TRAINER_STATE_FILE: &str = "trainer_state.json";

/// The loop's position and accumulators: all a checkpoint needs besides the workers' state
/// for a resumed run to log exactly what an uninterrupted one would. The data order is a pure
/// function of (seed, epoch), so the step number places it; the dropout streams are kept.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoopState {
    pub global_step: u64,
    pub epoch: f64,
    /// The run's optimizer steps and steps per epoch, as the loop computed them.
    #[serde(default)]
    pub max_steps: u64,
    #[serde(default)]
    pub steps_per_epoch: u64,
    pub loss_total: f64,
    pub window_loss: f64,
    pub window_steps: u64,
    pub last_logged_loss: Option<f64>,
    pub total_flos: f64,
    pub samples: u64,
    /// Real (unpadded) tokens trained on so far (TrainerState's `num_input_tokens_seen`).
    #[serde(default)]
    pub tokens_seen: u64,
    /// The best value so far of the metric that chooses the model, and its step.
    #[serde(default, alias = "best_accuracy")]
    pub best_metric: Option<f64>,
    #[serde(default)]
    pub best_step: Option<u64>,
    /// Evaluations in a row that did not improve the metric (early stopping's count).
    #[serde(default)]
    pub evals_without_improvement: u64,
    pub bytes_window: u64,
    pub reduce_ms_window: f64,
    /// The exchange's own part of reduce_ms_window: each step's all-reduce on the worker that
    /// came to it last, which waited for nobody's backward.
    #[serde(default)]
    pub exchange_ms_window: f64,
    pub step_ms_window: f64,
    /// Seconds of training before this process (earlier runs of a resumed job).
    pub runtime_before: f64,
    pub steps_redone: u64,
    pub steps_skipped: u64,
    /// Each rank's dropout stream (torch's generator state, as the Trainer keeps
    /// `rng_state_{rank}.pth`), as the last step left it.
    #[serde(default)]
    pub dropout_streams: Vec<StreamState>,
    /// The replicas' fingerprint, checked on resume.
    pub fingerprint: String,
    /// The run these checkpoints belong to (kept on resume): rotation deletes only its own.
    #[serde(default)]
    pub run_id: String,
    /// Steps skipped as non-finite in a row, up to the last one.
    #[serde(default)]
    pub consecutive_skipped: u64,
}

/// transformers' `TrainerState` (trainer_callback.py), field for field and nothing else:
/// `load_from_json` passes every key to the dataclass, so one extra key is a TypeError.
/// The fields are in alphabetical order, as `save_to_json`'s `sort_keys=True` writes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    pub best_global_step: Option<u64>,
    pub best_metric: Option<f64>,
    pub best_model_checkpoint: Option<String>,
    pub epoch: f64,
    pub eval_steps: u64,
    pub global_step: u64,
    pub is_hyper_param_search: bool,
    pub is_local_process_zero: bool,
    pub is_world_process_zero: bool,
    /// Every logged event, as metrics.jsonl holds them (the Trainer's `log_history`).
    pub log_history: Vec<Value>,
    pub logging_steps: u64,
    pub max_steps: u64,
    pub num_input_tokens_seen: u64,
    pub num_train_epochs: u64,
    pub save_steps: u64,
    /// The Trainer's callbacks' states: `TrainerControl`, and `EarlyStoppingCallback` with its
    /// patience counter when early stopping is on.
    pub stateful_callbacks: Map<String, Value>,
    pub total_flos: f64,
    pub train_batch_size: Option<u64>,
    pub trial_name: Option<String>,
    pub trial_params: Option<Map<String, Value>>,
}

impl TrainerState {
    /// The Trainer's state of a run at `st`, its `log_history` the events logged so far.
    pub fn of_run(cfg: &TrainConfig, st: &LoopState, log_history: Vec<Value>) -> TrainerState {
        let early_stopped = cfg.early_stopping_patience.is_some_and(|p| st.evals_without_improvement >= p);
        let mut callbacks = Map::new();
        callbacks.insert(
            "TrainerControl".into(),
            json!({
                "args": {
                    "should_epoch_stop": false,
                    "should_evaluate": false,
                    "should_log": false,
                    "should_save": true,
                    "should_training_stop": early_stopped || (st.max_steps > 0 && st.global_step >= st.max_steps),
                },
                "attributes": {},
            }),
        );
        if let Some(patience) = cfg.early_stopping_patience {
            callbacks.insert(
                "EarlyStoppingCallback".into(),
                json!({
                    "args": {"early_stopping_patience": patience, "early_stopping_threshold": cfg.early_stopping_threshold},
                    "attributes": {"early_stopping_patience_counter": st.evals_without_improvement},
                }),
            );
        }
        // The Trainer names the best model's checkpoint once one is saved at that step (this
        // one, when the state is written into it).
        let best_model_checkpoint = st
            .best_step
            .map(|s| (s, cfg.output_dir.join(format!("checkpoint-{s}"))))
            .filter(|(s, p)| *s == st.global_step || p.is_dir())
            .map(|(_, p)| p.display().to_string());
        let per_epoch = st.steps_per_epoch.max(1);
        TrainerState {
            best_global_step: st.best_step,
            best_metric: st.best_metric,
            best_model_checkpoint,
            epoch: st.epoch,
            eval_steps: cfg.eval_every().1,
            global_step: st.global_step,
            is_hyper_param_search: false,
            is_local_process_zero: true,
            is_world_process_zero: true,
            log_history,
            logging_steps: cfg.logging_steps,
            max_steps: st.max_steps,
            num_input_tokens_seen: st.tokens_seen,
            // As the Trainer derives it from max_steps: whole epochs, a partial one counted.
            num_train_epochs: st.max_steps.div_ceil(per_epoch),
            save_steps: cfg.save_steps.unwrap_or(0),
            stateful_callbacks: callbacks,
            total_flos: st.total_flos,
            // The Trainer's is per process: the global batch over the workers.
            train_batch_size: Some(cfg.per_worker_batch() as u64),
            trial_name: None,
            trial_params: None,
        }
    }
}

/// The events of a metrics.jsonl, in order (the log history of the run so far).
pub fn log_history(metrics_jsonl: &Path) -> Result<Vec<Value>, String> {
    let text = match std::fs::read_to_string(metrics_jsonl) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", metrics_jsonl.display())),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("{} line {}: {e}", metrics_jsonl.display(), i + 1)))
        .collect()
}

/// The Trainer's state of the run at `st`, its log history read from the output directory's
/// metrics.jsonl.
pub fn trainer_state(cfg: &TrainConfig, st: &LoopState) -> Result<TrainerState, String> {
    Ok(TrainerState::of_run(cfg, st, log_history(&cfg.output_dir.join("metrics.jsonl"))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_has_the_trainer_s_fields_and_nothing_else() {
        let cfg = TrainConfig::for_model("m".into()).unwrap();
        let st = LoopState { global_step: 7, max_steps: 10, steps_per_epoch: 4, epoch: 1.75, ..Default::default() };
        let v = serde_json::to_value(TrainerState::of_run(&cfg, &st, vec![json!({"loss": 1.0, "step": 5})])).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 20, "TrainerState has 20 fields in transformers 5.24: {keys:?}");
        assert_eq!(v["num_train_epochs"], 3);
        assert_eq!(v["stateful_callbacks"]["TrainerControl"]["args"]["should_training_stop"], false);
    }
}
