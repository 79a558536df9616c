//! What the coordinator shows while it runs: Prometheus metrics and a JSON status, fed by the
//! training loop and the group, served over HTTP (`--metrics-listen`).

use std::sync::{Arc, Mutex};

use peftrain_net::http::{Exposition, Handler};
use serde::Serialize;

/// The run's phase.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    WaitingForWorkers,
    Training,
    Finished,
    Failed,
}

/// A snapshot of the run, as `/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub run_id: String,
    pub phase: Phase,
    pub task: String,
    pub method: String,
    pub step: u64,
    pub total_steps: u64,
    pub epoch: f64,
    pub samples: u64,
    pub samples_per_second: f64,
    pub loss: Option<f64>,
    pub learning_rate: f64,
    pub eval_loss: Option<f64>,
    /// The last evaluation's metrics by key (`accuracy`, `matthews_correlation`, ...).
    pub eval_metrics: std::collections::BTreeMap<String, f64>,
    /// The keys evaluations report, so their gauges exist before the first one.
    #[serde(skip)]
    pub metric_keys: Vec<String>,
    pub allreduce_bytes: u64,
    pub allreduce_seconds: f64,
    pub workers_alive: usize,
    pub workers_expected: usize,
    pub workers: Vec<String>,
    pub steps_redone: u64,
    pub steps_skipped: u64,
    pub error: Option<String>,
}

/// Shared between the loop (writer) and the HTTP endpoint (reader).
#[derive(Clone)]
pub struct Observer(Arc<Mutex<Status>>);

impl Observer {
    pub fn new(run_id: &str, task: &str, method: &str, workers_expected: usize, metric_keys: Vec<String>) -> Observer {
        Observer(Arc::new(Mutex::new(Status {
            run_id: run_id.to_string(),
            phase: Phase::WaitingForWorkers,
            task: task.to_string(),
            method: method.to_string(),
            step: 0,
            total_steps: 0,
            epoch: 0.0,
            samples: 0,
            samples_per_second: 0.0,
            loss: None,
            learning_rate: 0.0,
            eval_loss: None,
            eval_metrics: Default::default(),
            metric_keys,
            allreduce_bytes: 0,
            allreduce_seconds: 0.0,
            workers_alive: 0,
            workers_expected,
            workers: Vec::new(),
            steps_redone: 0,
            steps_skipped: 0,
            error: None,
        })))
    }

    /// Applies `f` to the status (a poisoned lock still holds a usable snapshot).
    pub fn update(&self, f: impl FnOnce(&mut Status)) {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s);
    }

    pub fn snapshot(&self) -> Status {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Prometheus text for `/metrics`.
    pub fn prometheus(&self) -> String {
        let s = self.snapshot();
        let phase = |p: Phase| if s.phase == p { 1.0 } else { 0.0 };
        let mut e = Exposition::default();
        e.metric("peftrain_steps_total", "counter", "Optimizer steps completed.", s.step as f64)
            .metric("peftrain_total_steps", "gauge", "Optimizer steps the run will take.", s.total_steps as f64)
            .metric("peftrain_samples_total", "counter", "Training examples processed.", s.samples as f64)
            .metric("peftrain_samples_per_second", "gauge", "Training throughput over the last logging window.", s.samples_per_second)
            .metric("peftrain_epoch", "gauge", "Fractional epoch.", s.epoch)
            .metric("peftrain_train_loss", "gauge", "Mean training loss of the last logging window.", s.loss.unwrap_or(f64::NAN))
            .metric("peftrain_learning_rate", "gauge", "Learning rate of the next step.", s.learning_rate)
            .metric("peftrain_eval_loss", "gauge", "Validation loss of the last evaluation.", s.eval_loss.unwrap_or(f64::NAN))
            .metric("peftrain_allreduce_bytes_total", "counter", "Bytes one worker sent in all-reduces.", s.allreduce_bytes as f64)
            .metric("peftrain_allreduce_seconds_total", "counter", "Seconds spent in all-reduces (slowest worker).", s.allreduce_seconds)
            .metric("peftrain_workers_alive", "gauge", "Workers in the group.", s.workers_alive as f64)
            .metric("peftrain_workers_expected", "gauge", "Workers the run asks for (--workers).", s.workers_expected as f64)
            .metric("peftrain_steps_redone_total", "counter", "Steps redone after losing workers.", s.steps_redone as f64)
            .metric("peftrain_steps_skipped_total", "counter", "Updates skipped for a non-finite gradient.", s.steps_skipped as f64)
            .metric("peftrain_phase_training", "gauge", "1 while training.", phase(Phase::Training))
            .metric("peftrain_phase_finished", "gauge", "1 once the run finished.", phase(Phase::Finished))
            .metric("peftrain_phase_failed", "gauge", "1 if the run failed.", phase(Phase::Failed));
        // One gauge per metric of the task (`peftrain_eval_f1`, `peftrain_eval_accuracy_mm`).
        for k in &s.metric_keys {
            let v = s.eval_metrics.get(k).copied().unwrap_or(f64::NAN);
            e.metric(&format!("peftrain_eval_{k}"), "gauge", &format!("Validation {k} of the last evaluation."), v);
        }
        e.finish()
    }

    /// The HTTP handler for `/metrics` and `/status`.
    pub fn handler(&self) -> Handler {
        let o = self.clone();
        Arc::new(move |path: &str| match path {
            "/metrics" => Some(("text/plain; version=0.0.4", o.prometheus())),
            "/status" => Some(("application/json", serde_json::to_string_pretty(&o.snapshot()).unwrap_or_default() + "\n")),
            _ => None,
        })
    }
}
