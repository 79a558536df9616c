//! The training loop, top to bottom: data order, global batches, the learning rate of each
//! step, one sharded step on the workers, the logging window, evaluation, and the final
//! TrainOutput. Tensors never appear here; the workers hold them.

use std::io::Write;
use std::time::Instant;

use serde_json::{json, Map, Value};

use crate::cluster::{Cluster, ClusterError};
use crate::config::TrainConfig;
use crate::report::{MetricsLog, StepTable, TrainOutput};
use crate::sampler::{epoch_order, group_by_length};
use crate::schedule::{linear_lr, warmup_steps};
use crate::tokenize::Encoded;

/// Result of an evaluation pass over the dev set.
#[derive(Debug, Clone, Copy)]
pub struct EvalResult {
    pub loss: f64,
    pub accuracy: f64,
    pub runtime: f64,
    pub examples: u64,
}

/// Everything a finished run reports.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub output: TrainOutput,
    pub last_eval: Option<EvalResult>,
    pub best_accuracy: Option<f64>,
}

/// Evaluates `examples` in batches of `batch_size`, sharded across the workers.
pub async fn evaluate(cluster: &Cluster, examples: &[Encoded], batch_size: usize) -> Result<EvalResult, ClusterError> {
    let started = Instant::now();
    let (mut loss_sum, mut correct, mut n) = (0.0, 0u64, 0u64);
    for chunk in examples.chunks(batch_size.max(1)) {
        let refs: Vec<&Encoded> = chunk.iter().collect();
        let out = cluster.evaluate(&refs, false).await?;
        loss_sum += out.loss_sum;
        correct += out.correct;
        n += out.examples;
    }
    let n_f = n.max(1) as f64;
    Ok(EvalResult {
        loss: loss_sum / n_f,
        accuracy: correct as f64 / n_f,
        runtime: started.elapsed().as_secs_f64(),
        examples: n,
    })
}

/// Trains on `train`, evaluating on `dev`, printing the table to `table_out` and appending
/// events to `metrics`. `non_embedding_params` feeds total_flos.
pub async fn train<W: Write>(
    cfg: &TrainConfig,
    cluster: &Cluster,
    train: &[Encoded],
    dev: &[Encoded],
    non_embedding_params: u64,
    table_out: W,
    metrics: &mut MetricsLog,
) -> Result<RunSummary, ClusterError> {
    let n = train.len();
    let batch_size = cfg.batch_size;
    let steps_per_epoch = cfg.steps_per_epoch(n);
    let total = cfg.total_steps(n);
    let warmup = warmup_steps(total, cfg.warmup_steps, cfg.warmup_ratio);
    let base_lr = cfg.lr();
    let lengths: Vec<usize> = train.iter().map(|e| e.ids.len()).collect();
    let mut table = StepTable::new(table_out);

    let started = Instant::now();
    let mut order: Vec<usize> = Vec::new();
    let (mut window_loss, mut window_steps) = (0.0f64, 0u64);
    let mut last_logged_loss: Option<f64> = None;
    let mut loss_total = 0.0f64;
    let mut total_flos = 0.0f64;
    let mut samples = 0u64;
    let mut last_eval = None;
    let mut best_accuracy: Option<f64> = None;
    let (mut bytes_window, mut reduce_ms_window, mut step_ms_window) = (0u64, 0f64, 0f64);

    for step in 0..total {
        // Data: a fresh seeded order at each epoch boundary, then the step's global batch.
        let epoch = step / steps_per_epoch;
        let pos = (step % steps_per_epoch) as usize;
        if pos == 0 {
            order = epoch_order(n, cfg.seed, epoch, cfg.shuffle);
            if cfg.group_by_length {
                order = group_by_length(order, &lengths, batch_size);
            }
        }
        let idx = &order[pos * batch_size..((pos + 1) * batch_size).min(n)];
        let batch: Vec<&Encoded> = idx.iter().map(|&i| &train[i]).collect();

        // The step itself: forward/backward, all-reduce, clip, AdamW, on every worker.
        let lr = linear_lr(base_lr, step, warmup, total);
        let step_started = Instant::now();
        let out = cluster.step(step, &batch, lr, cfg.seed).await?;
        let step_ms = step_started.elapsed().as_secs_f64() * 1000.0;
        let loss = out.loss_sum / batch.len() as f64;
        if out.skipped {
            tracing::warn!(step = step + 1, "non-finite gradient: update skipped");
        }

        // Bookkeeping as the Trainer does it.
        let longest = batch.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        total_flos += 6.0 * (batch.len() * longest) as f64 * non_embedding_params as f64;
        samples += batch.len() as u64;
        loss_total += loss;
        window_loss += loss;
        window_steps += 1;
        bytes_window += out.allreduce_bytes;
        reduce_ms_window += out.allreduce_ms;
        step_ms_window += step_ms;
        let global_step = step + 1;
        let epoch_f = global_step as f64 / steps_per_epoch as f64;

        let log_now = global_step % cfg.logging_steps == 0;
        let end_of_epoch = pos as u64 + 1 == steps_per_epoch;
        let eval_now = global_step == total || cfg.eval_steps.map_or(end_of_epoch, |e| global_step % e == 0);
        let mut row_loss = None;
        if log_now {
            let mean = window_loss / window_steps as f64;
            let mut ev = Map::new();
            ev.insert("loss".into(), json!(mean));
            ev.insert("grad_norm".into(), json!(out.grad_norm));
            // The Trainer logs the scheduler's rate after its step: the rate of the next step.
            ev.insert("learning_rate".into(), json!(linear_lr(base_lr, global_step, warmup, total)));
            ev.insert("epoch".into(), json!(epoch_f));
            ev.insert("step".into(), json!(global_step));
            ev.insert("allreduce_bytes".into(), json!(out.allreduce_bytes));
            ev.insert("allreduce_ms".into(), json!(out.allreduce_ms));
            ev.insert("allreduce_bytes_window".into(), json!(bytes_window));
            ev.insert("allreduce_ms_window".into(), json!(reduce_ms_window));
            // Wall time of the window's steps as the coordinator saw them: the all-reduce share
            // of step time is allreduce_ms_window / step_ms_window.
            ev.insert("step_ms_window".into(), json!(step_ms_window));
            ev.insert("compute_ms".into(), json!(out.compute_ms));
            ev.insert("tokens".into(), json!(out.tokens));
            metrics.write(&ev).map_err(|e| ClusterError::Inconsistent(format!("metrics.jsonl: {e}")))?;
            row_loss = Some(mean);
            last_logged_loss = Some(mean);
            window_loss = 0.0;
            window_steps = 0;
            bytes_window = 0;
            reduce_ms_window = 0.0;
            step_ms_window = 0.0;
        }
        let mut row_eval = None;
        if eval_now && !dev.is_empty() {
            let r = evaluate(cluster, dev, cfg.eval_batch_size).await?;
            let mut ev = Map::new();
            ev.insert("eval_loss".into(), json!(r.loss));
            ev.insert("eval_accuracy".into(), json!(r.accuracy));
            ev.insert("eval_runtime".into(), json!((r.runtime * 1e4).round() / 1e4));
            ev.insert("eval_samples_per_second".into(), json!((r.examples as f64 / r.runtime.max(1e-9) * 1e3).round() / 1e3));
            ev.insert("epoch".into(), json!(epoch_f));
            ev.insert("step".into(), json!(global_step));
            metrics.write(&ev).map_err(|e| ClusterError::Inconsistent(format!("metrics.jsonl: {e}")))?;
            best_accuracy = Some(best_accuracy.map_or(r.accuracy, |b: f64| b.max(r.accuracy)));
            last_eval = Some(r);
            row_eval = Some(r);
        }
        if log_now || row_eval.is_some() {
            // An evaluation between logging steps shows the last logged loss, as the notebook
            // table does, or "No log" before the first one.
            let shown = row_loss.or(if row_eval.is_some() { last_logged_loss } else { None });
            table
                .row(global_step, shown, row_eval.map(|r| r.loss), row_eval.map(|r| r.accuracy))
                .map_err(|e| ClusterError::Inconsistent(format!("stdout: {e}")))?;
        }
    }

    let runtime = started.elapsed().as_secs_f64();
    let epoch_f = total as f64 / steps_per_epoch.max(1) as f64;
    let output = TrainOutput::new(total, loss_total, runtime, samples as f64, total_flos, epoch_f);
    let mut ev = output.metrics_map();
    ev.insert("step".into(), Value::from(total));
    metrics.write(&ev).map_err(|e| ClusterError::Inconsistent(format!("metrics.jsonl: {e}")))?;
    Ok(RunSummary {
        output,
        last_eval,
        best_accuracy,
    })
}
