//! What the coordinator shows while it runs: Prometheus metrics and a JSON status, fed by the
//! training loop and the group, served over HTTP (`--metrics-listen`).

use std::sync::{Arc, Mutex};

use peftrain_net::http;
use peftrain_net::prom::{self, StepTimes};
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
pub struct Observer(Arc<Shared>);

struct Shared {
    status: Mutex<Status>,
    times: StepTimes,
}

impl Observer {
    pub fn new(run_id: &str, task: &str, method: &str, workers_expected: usize, metric_keys: Vec<String>) -> Observer {
        let status = Status {
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
        };
        Observer(Arc::new(Shared { status: Mutex::new(status), times: StepTimes::default() }))
    }

    /// Applies `f` to the status (a poisoned lock still holds a usable snapshot).
    pub fn update(&self, f: impl FnOnce(&mut Status)) {
        let mut s = self.0.status.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s);
    }

    /// Records one optimizer step's wall time and its all-reduce's (the slowest worker's).
    pub fn step_took(&self, step_seconds: f64, allreduce_seconds: f64) {
        self.0.times.observe(step_seconds, allreduce_seconds);
    }

    pub fn snapshot(&self) -> Status {
        self.0.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// OpenMetrics text for `/metrics`.
    pub fn prometheus(&self) -> String {
        prom::render(Exposition { status: self.snapshot(), times: self.0.times.clone() })
    }

    /// The HTTP routes for `/metrics` and `/status`.
    pub fn router(&self) -> http::Router {
        let (m, s) = (self.clone(), self.clone());
        http::router(Arc::new(move || m.prometheus()), Arc::new(move || serde_json::to_string_pretty(&s.snapshot()).unwrap_or_default() + "\n"))
    }
}

/// One scrape of the coordinator: every series labelled with the run, task and method;
/// the group's members as `peftrain_worker_up{worker=...}`.
struct Exposition {
    status: Status,
    times: StepTimes,
}

impl prom::Exposed for Exposition {
    fn labels(&self) -> prom::Labels {
        let s = &self.status;
        vec![("run", s.run_id.clone()), ("task", s.task.clone()), ("method", s.method.clone())]
    }

    fn families(&self, e: &mut prom::Scrape) -> std::fmt::Result {
        let s = &self.status;
        let phase = |p: Phase| if s.phase == p { 1.0 } else { 0.0 };
        e.counter("peftrain_steps_total", "Optimizer steps completed.", s.step as f64)?;
        e.gauge("peftrain_total_steps", "Optimizer steps the run will take.", s.total_steps as f64)?;
        e.counter("peftrain_samples_total", "Training examples processed.", s.samples as f64)?;
        e.gauge("peftrain_samples_per_second", "Training throughput over the last logging window.", s.samples_per_second)?;
        e.gauge("peftrain_epoch", "Fractional epoch.", s.epoch)?;
        e.gauge("peftrain_train_loss", "Mean training loss of the last logging window.", s.loss.unwrap_or(f64::NAN))?;
        e.gauge("peftrain_learning_rate", "Learning rate of the next step.", s.learning_rate)?;
        e.gauge("peftrain_eval_loss", "Validation loss of the last evaluation.", s.eval_loss.unwrap_or(f64::NAN))?;
        // One gauge per metric of the task (`peftrain_eval_f1`, `peftrain_eval_accuracy_mm`).
        for k in &s.metric_keys {
            let v = s.eval_metrics.get(k).copied().unwrap_or(f64::NAN);
            e.gauge(&format!("peftrain_eval_{k}"), &format!("Validation {k} of the last evaluation."), v)?;
        }
        e.counter("peftrain_allreduce_bytes_total", "Bytes one worker sent in all-reduces.", s.allreduce_bytes as f64)?;
        e.histogram("peftrain_step_seconds", "Wall time of each optimizer step, all-reduce included.", &self.times.step)?;
        e.histogram("peftrain_allreduce_seconds", "All-reduce time of each step (slowest worker).", &self.times.allreduce)?;
        e.gauge("peftrain_workers_alive", "Workers in the group.", s.workers_alive as f64)?;
        e.gauge("peftrain_workers_expected", "Workers the run asks for (--workers).", s.workers_expected as f64)?;
        e.gauges("peftrain_worker_up", "1 for each worker in the group.", s.workers.iter().map(|w| (vec![("worker", w.clone())], 1.0)))?;
        e.counter("peftrain_steps_redone_total", "Steps redone after losing workers.", s.steps_redone as f64)?;
        e.counter("peftrain_steps_skipped_total", "Updates skipped for a non-finite gradient.", s.steps_skipped as f64)?;
        e.gauge("peftrain_phase_training", "1 while training.", phase(Phase::Training))?;
        e.gauge("peftrain_phase_finished", "1 once the run finished.", phase(Phase::Finished))?;
        e.gauge("peftrain_phase_failed", "1 if the run failed.", phase(Phase::Failed))
    }
}
