//! What a worker reports on `/metrics` and `/status`, and the process's peak memory.

/// What a worker reports on `/metrics` and `/status`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WorkerStats {
    pub worker_id: String,
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
}

impl WorkerStats {
    pub fn prometheus(&self) -> String {
        let mut e = peftrain_net::http::Exposition::default();
        e.metric("peftrain_worker_steps_total", "counter", "Steps this worker took part in.", self.steps as f64)
            .metric("peftrain_worker_examples_total", "counter", "Training examples in this worker's shards.", self.examples as f64)
            .metric("peftrain_worker_compute_seconds_total", "counter", "Forward/backward seconds.", self.compute_seconds)
            .metric("peftrain_worker_allreduce_bytes_total", "counter", "Bytes sent in all-reduces.", self.allreduce_bytes as f64)
            .metric("peftrain_worker_allreduce_seconds_total", "counter", "Seconds in all-reduces.", self.allreduce_seconds)
            .metric("peftrain_worker_evaluations_total", "counter", "Evaluation shards served.", self.evaluations as f64)
            .metric("peftrain_worker_rank", "gauge", "Rank in the current group.", self.rank as f64)
            .metric("peftrain_worker_world_size", "gauge", "Workers in the current group.", self.world as f64)
            .metric("peftrain_worker_trainable_params", "gauge", "Trainable parameters of the replica.", self.trainable_params as f64);
        e.finish()
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
