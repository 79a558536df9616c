//! The training loop, top to bottom: data order, global batches, the learning rate of each
//! step, one sharded step on the workers, the logging window, evaluation, checkpoints, and the
//! final TrainOutput. Tensors never appear here; the workers hold them.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use serde_json::{json, Map, Value};

use crate::checkpoint::{self, ReplicaState};
use crate::cluster::{advance_streams, fill_streams, Cluster, ClusterError};
use crate::config::TrainConfig;
use crate::data::Label;
use crate::metrics::{Gold, Scored};
use crate::observe::{Observer, Phase};
use crate::progress::Progress;
use crate::report::{MetricsLog, StepTable, TrainOutput};
pub use crate::run_state::LoopState;
use crate::sampler::{epoch_order, group_by_length};
use crate::signals::StopSignal;
use crate::tokenize::Encoded;
use peftrain_spec::task::Metric;

/// Result of an evaluation pass over the validation set(s).
#[derive(Debug, Clone, PartialEq)]
pub struct EvalResult {
    /// Mean loss of the first (main) set.
    pub loss: f64,
    /// Metrics by key, without `eval_`, in the task's order (`f1`, `accuracy`; MNLI's
    /// mismatched set as `accuracy_mm` and `loss_mm`).
    pub metrics: Vec<(String, f64)>,
    pub runtime: f64,
    pub examples: u64,
}

impl EvalResult {
    pub fn get(&self, key: &str) -> Option<f64> {
        self.metrics.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// `eval_loss`, `eval_<metric>`..., `eval_runtime`, `eval_samples_per_second`, as the
    /// Trainer logs an evaluation.
    pub fn log_entries(&self) -> Map<String, Value> {
        let mut ev = Map::new();
        ev.insert("eval_loss".into(), json!(self.loss));
        for (k, v) in &self.metrics {
            ev.insert(format!("eval_{k}"), json!(v));
        }
        ev.insert("eval_runtime".into(), json!((self.runtime * 1e4).round() / 1e4));
        ev.insert("eval_samples_per_second".into(), json!((self.examples as f64 / self.runtime.max(1e-9) * 1e3).round() / 1e3));
        ev
    }
}

/// Gold answers of labelled examples, in order (None if one is missing or of the other kind).
fn gold(examples: &[Encoded], regression: bool) -> Option<Gold> {
    if regression {
        examples
            .iter()
            .map(|e| match e.label {
                Some(Label::Score(s)) => Some(s as f64),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .map(Gold::Scores)
    } else {
        examples
            .iter()
            .map(|e| match e.label {
                Some(Label::Class(c)) => Some(c),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .map(Gold::Classes)
    }
}

/// Everything a finished run reports.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub output: TrainOutput,
    pub last_eval: Option<EvalResult>,
    /// The best value of the metric that chooses the model (`--metric-for-best-model`).
    pub best_metric: Option<f64>,
    /// The trained state (weights and AdamW moments), as the last checkpoint holds it.
    pub state: ReplicaState,
    /// The run stopped early at a step boundary on this signal (its checkpoint written).
    pub stopped: Option<&'static str>,
}

/// Loss sum and row-major logits of `examples`, in batches of `batch_size`, sharded across
/// the workers.
pub async fn logits(cluster: &mut Cluster, examples: &[Encoded], batch_size: usize, quiet: bool) -> Result<(f64, Vec<f32>, usize), ClusterError> {
    let started = Instant::now();
    let (mut loss_sum, mut n, mut num_labels) = (0.0, 0u64, 1usize);
    let mut all = Vec::new();
    let mut progress = Progress::new("eval", examples.len() as u64, 0, quiet);
    for chunk in examples.chunks(batch_size.max(1)) {
        let refs: Vec<&Encoded> = chunk.iter().collect();
        let out = cluster.evaluate(&refs, true).await?;
        loss_sum += out.loss_sum;
        n += out.examples;
        num_labels = out.num_labels.max(1);
        all.extend(out.logits);
        progress.set(n, n as f64 / started.elapsed().as_secs_f64().max(1e-9));
    }
    progress.finish();
    Ok((loss_sum, all, num_labels))
}

/// Evaluates each set (`(examples, key suffix)`, the first the main one): loss, and `metrics`
/// computed here from the logits as `evaluate`'s `glue` metric computes them.
pub async fn evaluate_sets(
    cluster: &mut Cluster,
    sets: &[(&[Encoded], &str)],
    batch_size: usize,
    metrics: &[Metric],
    regression: bool,
    quiet: bool,
) -> Result<EvalResult, ClusterError> {
    let started = Instant::now();
    let mut result = EvalResult { loss: f64::NAN, metrics: Vec::new(), runtime: 0.0, examples: 0 };
    for (k, (examples, suffix)) in sets.iter().enumerate() {
        let (loss_sum, logits, num_labels) = logits(cluster, examples, batch_size, quiet).await?;
        let loss = loss_sum / examples.len().max(1) as f64;
        let gold =
            gold(examples, regression).ok_or_else(|| ClusterError::Inconsistent("an evaluation set without a label on every example".into()))?;
        let scored = Scored::from_logits(&logits, num_labels, &gold);
        if k == 0 {
            result.loss = loss;
            result.examples = examples.len() as u64;
        } else {
            result.metrics.push((format!("loss{suffix}"), loss));
        }
        for &m in metrics {
            if let Some(v) = scored.metric(m) {
                result.metrics.push((format!("{}{suffix}", m.key()), v));
            }
        }
    }
    // Keys in the order the table shows them: the main set's metrics, then the others'.
    result.metrics.sort_by_key(|(k, _)| k.starts_with("loss"));
    result.runtime = started.elapsed().as_secs_f64();
    Ok(result)
}

/// What each micro-batch's loss sum is divided by before its backward, given the examples of
/// each micro-batch of a step: its mean, divided by the step's micro-batches as the Trainer's
/// `current_gradient_accumulation_steps` (fewer in an epoch's last step). Without accumulation
/// the step's mean; with equal micro-batches the same gradient as one batch of them all.
pub fn micro_divisors(sizes: &[usize]) -> Vec<f64> {
    let a = sizes.len() as f64;
    sizes.iter().map(|&n| n.max(1) as f64 * a).collect()
}

/// Errors of the loop: the cluster's, or the outputs'.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error("{0}")]
    Output(String),
}

/// A kept stream that is not a generator's state: only a hand-edited checkpoint has one.
fn bad_stream(e: String) -> TrainError {
    TrainError::Output(format!("{}: dropout_streams: {e}", crate::run_state::LOOP_STATE_FILE))
}

fn out_err(what: &str) -> impl Fn(std::io::Error) -> TrainError + '_ {
    move |e| TrainError::Output(format!("{what}: {e}"))
}

/// Writes `checkpoint-{step}` from the group's current state and says how big it is.
pub async fn save_checkpoint(cfg: &TrainConfig, cluster: &Cluster, st: &LoopState) -> Result<ReplicaState, TrainError> {
    let state = cluster.get_state().await?;
    let hf = crate::run_state::trainer_state(cfg, st).map_err(TrainError::Output)?;
    let (dir, bytes) = checkpoint::write_checkpoint(
        &cfg.output_dir,
        st.global_step,
        cfg,
        &cluster.layout(),
        &state,
        st,
        &hf,
        checkpoint::Rotation { keep: cfg.save_total_limit, protect: if cfg.load_best_model_at_end { st.best_step } else { None } },
        &st.run_id,
    )?;
    tracing::info!(
        "{} written: {} ({} trainable values with their AdamW moments)",
        dir.display(),
        crate::report::human_bytes(bytes),
        state.values.len() / 3
    );
    Ok(state)
}

/// Trains on `train`, evaluating on `dev`, printing the table to `table_out` and appending
/// events to `metrics`, from `st` (fresh or resumed). `non_embedding_params` feeds total_flos.
// Each argument is a separate resource the loop borrows (config, cluster, data, sinks, state,
// signals); bundling them would only move the list into a struct built for this one call.
#[allow(clippy::too_many_arguments)]
pub async fn train<W: Write>(
    cfg: &TrainConfig,
    cluster: &mut Cluster,
    train: &[Encoded],
    dev: &[(&[Encoded], &str)],
    non_embedding_params: u64,
    table_out: W,
    metrics: &mut MetricsLog,
    st: &mut LoopState,
    obs: &Observer,
    stop: &StopSignal,
) -> Result<RunSummary, TrainError> {
    let n = train.len();
    let batch_size = cfg.global_batch();
    let micro_size = cfg.micro_batch().max(1);
    let steps_per_epoch = cfg.steps_per_epoch(n);
    let total = cfg.total_steps(n);
    let schedule = cfg.schedule(total);
    let (eval_strategy, eval_every) = cfg.eval_every();
    let (save_strategy, save_every) = cfg.save_every();
    st.max_steps = total;
    st.steps_per_epoch = steps_per_epoch;
    let lengths: Vec<usize> = train.iter().map(|e| e.ids.len()).collect();
    let keys = cfg.metric_keys();
    let metrics_of_run = cfg.metrics();
    let regression = cfg.labels().is_regression();
    let best = cfg.best_model_metric();
    let mut table = StepTable::new(table_out, &keys);
    let write = |m: &mut MetricsLog, ev: &Map<String, Value>| m.write(ev).map_err(out_err("metrics.jsonl"));

    let started = Instant::now();
    let mut order: Vec<usize> = Vec::new();
    let mut last_eval = None;
    let mut best_eval: Option<EvalResult> = None;
    let mut window_samples = 0u64;
    let mut progress = Progress::new("train", total, st.global_step, cfg.quiet);
    let mut last_rate = 0.0f64;
    obs.update(|s| {
        s.phase = Phase::Training;
        s.total_steps = total;
    });

    for step in st.global_step..total {
        // SIGTERM/SIGINT, or workers preempted below --min-workers: stop at this step boundary
        // with a checkpoint `--resume` continues from.
        let preempted = cluster.leaving_below_minimum().then_some("SIGTERM of workers (fewer than --min-workers would be left)");
        if let Some(sig) = stop.requested().or(preempted) {
            progress.finish();
            let mut snapshot = st.clone();
            snapshot.runtime_before += started.elapsed().as_secs_f64();
            let state = save_checkpoint(cfg, cluster, &snapshot).await?;
            let runtime = snapshot.runtime_before;
            let epoch_f = st.global_step as f64 / steps_per_epoch.max(1) as f64;
            return Ok(RunSummary {
                output: TrainOutput::new(st.global_step, st.loss_total, runtime, st.samples as f64, st.total_flos, epoch_f),
                last_eval,
                best_metric: st.best_metric,
                state,
                stopped: Some(sig),
            });
        }
        // Data: the epoch's seeded order (recomputed on resume), then the step's global batch.
        let epoch = step / steps_per_epoch;
        let pos = (step % steps_per_epoch) as usize;
        if pos == 0 {
            // The Trainer's new epoch iterator draws its base seed from each rank's stream.
            fill_streams(&mut st.dropout_streams, cluster.world(), cfg.seed);
            advance_streams(&mut st.dropout_streams, 1).map_err(bad_stream)?;
        }
        if pos == 0 || order.is_empty() {
            order = epoch_order(n, cfg.seed, epoch, !cfg.no_shuffle);
            if cfg.group_by_length {
                order = group_by_length(order, &lengths, batch_size);
            }
        }
        let idx = &order[pos * batch_size..((pos + 1) * batch_size).min(n)];
        let batch: Vec<&Encoded> = idx.iter().map(|&i| &train[i]).collect();

        // Between steps: workers asked to stop leave, and replacements or late comers join
        // with a live peer's state.
        cluster.release_leavers().await?;
        cluster.admit_joiners().await?;

        // The step: forward/backward, all-reduce, clip, AdamW, on every worker.
        let lr = schedule.lr(step);
        let micro: Vec<&[&Encoded]> = batch.chunks(micro_size).collect();
        let divisors = micro_divisors(&micro.iter().map(|m| m.len()).collect::<Vec<_>>());
        let step_started = Instant::now();
        let out = cluster.step(step, &micro, &divisors, lr, &mut st.dropout_streams, cfg.seed).await?;
        let step_ms = step_started.elapsed().as_secs_f64() * 1000.0;
        // The loss the step minimised, as the Trainer logs it: each micro-batch's scaled loss.
        let loss: f64 = out.micro_loss_sums.iter().zip(&divisors).map(|(s, d)| s / d).sum();
        if out.skipped {
            st.steps_skipped += 1;
            st.consecutive_skipped += 1;
            tracing::warn!(step = step + 1, "non-finite gradient: update skipped on every worker");
        } else {
            st.consecutive_skipped = 0;
        }
        st.steps_redone += out.redone as u64;

        // Bookkeeping as the Trainer does it.
        // floating_point_ops per micro-batch, each padded to its own longest as the Trainer's collator pads it.
        st.total_flos += micro
            .iter()
            .map(|m| 6.0 * (m.len() * m.iter().map(|e| e.ids.len()).max().unwrap_or(0)) as f64 * non_embedding_params as f64)
            .sum::<f64>();
        st.samples += batch.len() as u64;
        st.tokens_seen += out.tokens;
        st.loss_total += loss;
        st.window_loss += loss;
        st.window_steps += 1;
        st.bytes_window += out.allreduce_bytes;
        st.reduce_ms_window += out.allreduce_ms;
        st.exchange_ms_window += out.exchange_ms;
        st.step_ms_window += step_ms;
        st.global_step = step + 1;
        st.epoch = st.global_step as f64 / steps_per_epoch as f64;
        let global_step = st.global_step;
        window_samples += batch.len() as u64;
        // allreduce_ms comes from the wire: a histogram takes only a finite, non-negative time.
        let reduce_s = if out.allreduce_ms.is_finite() { out.allreduce_ms.max(0.0) / 1000.0 } else { 0.0 };
        obs.step_took(step_ms / 1000.0, reduce_s);
        obs.update(|s| {
            s.step = global_step;
            s.epoch = st.epoch;
            s.samples = st.samples;
            s.learning_rate = schedule.lr(global_step);
            s.allreduce_bytes += out.allreduce_bytes;
            s.allreduce_seconds += out.allreduce_ms / 1000.0;
            s.workers_alive = cluster.world();
            s.workers = cluster.conns.iter().map(|c| c.member.worker_id.clone()).collect();
            s.steps_redone = st.steps_redone;
            s.steps_skipped = st.steps_skipped;
        });

        let end_of_epoch = pos as u64 + 1 == steps_per_epoch;
        let log_now = cfg.logging_strategy.due(cfg.logging_steps, global_step, end_of_epoch);
        let eval_now = global_step == total || eval_strategy.due(eval_every, global_step, end_of_epoch);
        let mut row_loss = None;
        if log_now {
            let mean = st.window_loss / st.window_steps as f64;
            let mut ev = Map::new();
            ev.insert("loss".into(), json!(mean));
            ev.insert("grad_norm".into(), json!(out.grad_norm));
            // The Trainer logs the scheduler's rate after its step: the rate of the next step.
            ev.insert("learning_rate".into(), json!(schedule.lr(global_step)));
            ev.insert("epoch".into(), json!(st.epoch));
            ev.insert("step".into(), json!(global_step));
            ev.insert("allreduce_bytes".into(), json!(out.allreduce_bytes));
            ev.insert("allreduce_ms".into(), json!(out.allreduce_ms));
            ev.insert("allreduce_bytes_window".into(), json!(st.bytes_window));
            ev.insert("allreduce_ms_window".into(), json!(st.reduce_ms_window));
            ev.insert("allreduce_exchange_ms_window".into(), json!(st.exchange_ms_window));
            // Wall time of the window's steps as the coordinator saw them: the all-reduce share
            // of step time is allreduce_ms_window / step_ms_window.
            ev.insert("step_ms_window".into(), json!(st.step_ms_window));
            ev.insert("compute_ms".into(), json!(out.compute_ms));
            ev.insert("tokens".into(), json!(out.tokens));
            ev.insert("workers".into(), json!(cluster.world()));
            if let Some(a) = cluster.algorithm.filter(|_| cluster.world() > 1) {
                ev.insert("all_reduce".into(), json!(a.as_str()));
            }
            ev.insert("worker_peak_rss_bytes".into(), json!(out.peak_rss_bytes));
            if out.skipped {
                ev.insert("skipped".into(), json!(true));
            }
            write(metrics, &ev)?;
            row_loss = Some(mean);
            st.last_logged_loss = Some(mean);
            let rate = window_samples as f64 / (st.step_ms_window / 1000.0).max(1e-9);
            last_rate = rate;
            obs.update(|s| {
                s.loss = Some(mean);
                s.samples_per_second = rate;
            });
            window_samples = 0;
            st.window_loss = 0.0;
            st.window_steps = 0;
            st.bytes_window = 0;
            st.reduce_ms_window = 0.0;
            st.exchange_ms_window = 0.0;
            st.step_ms_window = 0.0;
        } else if out.skipped {
            write(metrics, &Map::from_iter([("step".into(), json!(global_step)), ("skipped".into(), json!(true))]))?;
        }
        if st.consecutive_skipped >= cfg.max_skipped_steps {
            let first = (global_step + 1).saturating_sub(st.consecutive_skipped);
            return Err(TrainError::Output(format!(
                "{} consecutive steps ({first} to {global_step}) had non-finite gradients and were skipped (--max-skipped-steps {}): \
                 the weights or the loss are NaN/Inf (check the checkpoint, config.json and the learning rate)",
                st.consecutive_skipped, cfg.max_skipped_steps
            )));
        }
        progress.set(global_step, if last_rate > 0.0 { last_rate } else { batch.len() as f64 / (step_ms / 1000.0).max(1e-9) });
        let mut row_eval = None;
        if eval_now && dev.first().is_some_and(|(d, _)| !d.is_empty()) {
            // Evaluation progress only when the training display is plain lines or off: two
            // bars at once would fight over the terminal.
            let r = evaluate_sets(cluster, dev, cfg.eval_batch(), &metrics_of_run, regression, true).await?;
            // Each evaluation's iterator draws a base seed too, one per data set.
            advance_streams(&mut st.dropout_streams, dev.len() as u64).map_err(bad_stream)?;
            let mut ev = r.log_entries();
            ev.insert("epoch".into(), json!(st.epoch));
            ev.insert("step".into(), json!(global_step));
            write(metrics, &ev)?;
            let value = best.value(r.loss, &r.metrics);
            // Early stopping compares with the best before this evaluation, as the Trainer's
            // callback does, with its threshold.
            if best.improves_by(value, st.best_metric, cfg.early_stopping_threshold) {
                st.evals_without_improvement = 0;
            } else {
                st.evals_without_improvement += 1;
            }
            if best.improves(value, st.best_metric) {
                st.best_metric = Some(value);
                st.best_step = Some(global_step);
                if cfg.load_best_model_at_end && global_step < total {
                    // The best model is a checkpoint, kept through rotation.
                    let mut snapshot = st.clone();
                    snapshot.runtime_before += started.elapsed().as_secs_f64();
                    save_checkpoint(cfg, cluster, &snapshot).await?;
                }
                best_eval = Some(r.clone());
            }
            obs.update(|s| {
                s.eval_loss = Some(r.loss);
                s.eval_metrics = r.metrics.iter().cloned().collect();
            });
            last_eval = Some(r.clone());
            row_eval = Some(r);
        }
        if log_now || row_eval.is_some() {
            // An evaluation between logging steps shows the last logged loss, as the notebook
            // table does, or "No log" before the first one.
            let shown = row_loss.or(if row_eval.is_some() { st.last_logged_loss } else { None });
            let cells: Vec<Option<f64>> = keys.iter().map(|k| row_eval.as_ref().and_then(|r| r.get(k))).collect();
            progress.above(|| table.row(global_step, shown, row_eval.as_ref().map(|r| r.loss), &cells)).map_err(out_err("stdout"))?;
        }
        if save_strategy.due(save_every, global_step, end_of_epoch) && global_step < total {
            let mut snapshot = st.clone();
            snapshot.runtime_before += started.elapsed().as_secs_f64();
            save_checkpoint(cfg, cluster, &snapshot).await?;
        }
        if cfg.early_stopping_patience.is_some_and(|p| st.evals_without_improvement >= p) && global_step < total {
            tracing::info!(
                "early stopping at step {global_step}: {} evaluations without improving {} (best {:.6} at step {})",
                st.evals_without_improvement,
                best.key,
                st.best_metric.unwrap_or(f64::NAN),
                st.best_step.unwrap_or(0)
            );
            break;
        }
    }

    progress.finish();
    let last_step = st.global_step;
    let runtime = st.runtime_before + started.elapsed().as_secs_f64();
    let epoch_f = last_step as f64 / steps_per_epoch.max(1) as f64;
    let output = TrainOutput::new(last_step, st.loss_total, runtime, st.samples as f64, st.total_flos, epoch_f);
    let mut ev = output.metrics_map();
    ev.insert("step".into(), Value::from(last_step));
    ev.insert("steps_redone".into(), json!(st.steps_redone));
    ev.insert("steps_skipped".into(), json!(st.steps_skipped));
    write(metrics, &ev)?;
    st.runtime_before = runtime;
    // The last checkpoint: the final state, resumable and usable as an adapter.
    let mut state = save_checkpoint(cfg, cluster, st).await?;
    if let (true, Some(step)) = (cfg.load_best_model_at_end, st.best_step) {
        // The output directory gets the best evaluation's weights, from its checkpoint.
        if step != last_step {
            let dir = cfg.output_dir.join(format!("checkpoint-{step}"));
            state = checkpoint::read_checkpoint::<LoopState>(&dir, &cluster.layout())?.0;
            tracing::info!("loading the best model: {} = {:.6} at step {step} ({})", best.key, st.best_metric.unwrap_or(f64::NAN), dir.display());
        }
        last_eval = best_eval.or(last_eval);
    }
    Ok(RunSummary { output, last_eval, best_metric: st.best_metric, state, stopped: None })
}

/// Keeps only the events of `metrics.jsonl` up to `step` (a resumed run re-logs the rest).
pub fn truncate_metrics(path: &Path, step: u64) -> Result<(), TrainError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(out_err("metrics.jsonl")(e)),
    };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<Value>(l).ok().and_then(|v| v.get("step").and_then(|s| s.as_u64())).is_some_and(|s| s <= step)
                && !l.contains("\"train_runtime\"")
        })
        .collect();
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    std::fs::write(path, out).map_err(out_err("metrics.jsonl"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_batches_are_scaled_as_the_trainer_scales_them() {
        // Without accumulation: the batch mean.
        assert_eq!(micro_divisors(&[16]), [16.0]);
        // Two of 4: each micro-batch's mean over the two, the mean of all eight.
        assert_eq!(micro_divisors(&[4, 4]), [8.0, 8.0]);
        // An epoch's short last micro-batch keeps its own mean.
        assert_eq!(micro_divisors(&[4, 2]), [8.0, 4.0]);
    }
}
