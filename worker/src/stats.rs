//! What a worker reports on `/metrics` and `/status`, and the process's peak memory.

use peftrain_net::prom::{self, StepTimes};

/// What a worker reports on `/metrics` and `/status`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WorkerStats {
    pub worker_id: String,
    pub run_id: String,
    pub task: String,
    pub method: String,
    pub device: String,
    pub fingerprint: String,
    pub trainable_params: u64,
    pub rank: u32,
    pub world: u32,
    pub generation: u64,
    pub steps: u64,
    pub examples: u64,
    pub compute_seconds: f64,
    pub allreduce_bytes: u64,
    pub allreduce_seconds: f64,
    pub evaluations: u64,
    /// Per-step forward/backward and all-reduce times (shared by clones: a snapshot reads
    /// the live histograms).
    #[serde(skip)]
    pub times: StepTimes,
}

impl WorkerStats {
    /// Records one step's compute (forward/backward) and all-reduce times.
    pub fn step_took(&mut self, examples: u64, compute_seconds: f64, allreduce_bytes: u64, allreduce_seconds: f64) {
        self.steps += 1;
        self.examples += examples;
        self.compute_seconds += compute_seconds;
        self.allreduce_bytes += allreduce_bytes;
        self.allreduce_seconds += allreduce_seconds;
        self.times.observe(compute_seconds, allreduce_seconds);
    }

    /// The worker joined another run: its series start again under the new run label
    /// (a counter keeps counting only within one label set).
    pub fn new_run(&mut self, run_id: &str) {
        let keep = std::mem::take(self);
        *self = WorkerStats {
            worker_id: keep.worker_id,
            run_id: run_id.to_string(),
            task: keep.task,
            method: keep.method,
            device: keep.device,
            fingerprint: keep.fingerprint,
            trainable_params: keep.trainable_params,
            ..Default::default()
        };
    }

    pub fn prometheus(&self) -> String {
        prom::render(self.clone())
    }
}

impl prom::Exposed for WorkerStats {
    fn labels(&self) -> prom::Labels {
        vec![("run", self.run_id.clone()), ("task", self.task.clone()), ("method", self.method.clone()), ("worker", self.worker_id.clone())]
    }

    fn families(&self, e: &mut prom::Scrape) -> std::fmt::Result {
        e.counter("peftrain_worker_steps_total", "Steps this worker took part in.", self.steps as f64)?;
        e.counter("peftrain_worker_examples_total", "Training examples in this worker's shards.", self.examples as f64)?;
        e.histogram("peftrain_worker_step_seconds", "Forward/backward time of each step.", &self.times.step)?;
        e.counter("peftrain_worker_allreduce_bytes_total", "Bytes sent in all-reduces.", self.allreduce_bytes as f64)?;
        e.histogram("peftrain_worker_allreduce_seconds", "All-reduce time of each step.", &self.times.allreduce)?;
        e.counter("peftrain_worker_evaluations_total", "Evaluation shards served.", self.evaluations as f64)?;
        e.gauge("peftrain_worker_rank", "Rank in the current group.", self.rank as f64)?;
        e.gauge("peftrain_worker_world_size", "Workers in the current group.", self.world as f64)?;
        e.gauge("peftrain_worker_trainable_params", "Trainable parameters of the replica.", self.trainable_params as f64)
    }
}

/// This process's peak resident set (VmHWM), 0 where /proc is unavailable.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())))
        .flatten()
        .map_or(0, |kb| kb * 1024)
}
