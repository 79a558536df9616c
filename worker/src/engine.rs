//! The worker's domain engine, in plain Rust types (no protobuf): a group to join, a step to
//! take, a commit, an evaluation, a state to give or load. Tensors are computed on the
//! replica's thread (`compute.rs`); the all-reduce runs on the async runtime between them.
//! `service.rs` adapts the gRPC services to it.

use std::time::{Duration, Instant};

use peftrain_spec::state::State;
use peftrain_spec::torch_rng::{Mt19937, StreamState};
use tokio::sync::Notify;

use std::sync::Arc;

pub use crate::collective::Group;
use crate::collective::{AllReduce, Alone, Comm};
use crate::compute::{ComputeThread, ReplicaInfo};
use crate::error::WorkerError;
use crate::replica::{Micro, Replica, Shard};
use crate::stats::{peak_rss_bytes, WorkerStats};

/// One training step's order: this worker's shard of the global batch, as consecutive
/// micro-batches (one without gradient accumulation) whose gradients add up before the one
/// all-reduce.
#[derive(Debug, Clone)]
pub struct StepOrder {
    pub generation: u64,
    pub step: u64,
    pub shard: Shard,
    pub micro: Vec<Micro>,
    pub learning_rate: f64,
    /// This rank's dropout stream as the last committed step left it.
    pub dropout_stream: Mt19937,
}

/// What a step did here: the shard's loss, the reduced gradient's norm, where the time went.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutcome {
    pub step: u64,
    pub loss_sum: f64,
    pub examples: u32,
    pub tokens: u64,
    pub grad_norm: f64,
    pub allreduce_bytes: u64,
    pub allreduce_ms: f64,
    pub compute_ms: f64,
    pub optimizer_ms: f64,
    pub nonfinite: bool,
    pub peak_rss_bytes: u64,
    pub micro_loss_sums: Vec<f64>,
    /// The stream after this step's draws.
    pub dropout_stream: StreamState,
}

/// Most micro-batches one step may hold (`--gradient-accumulation-steps` is bounded alike).
pub const MAX_MICRO_BATCHES: usize = 1 << 16;

/// Whether `micro` tiles a shard of `n` examples: counts summing to `n`, each divisor a finite
/// number at least its micro-batch's examples (a mean, never a blow-up).
pub fn check_micro(micro: &[Micro], n: usize) -> Result<(), String> {
    if micro.is_empty() || micro.len() > MAX_MICRO_BATCHES {
        return Err(format!("{} micro-batches (1 to {MAX_MICRO_BATCHES})", micro.len()));
    }
    let total = micro.iter().try_fold(0usize, |acc, m| acc.checked_add(m.examples));
    if total != Some(n) {
        return Err(format!("micro-batches of {:?} examples for a shard of {n}", micro.iter().map(|m| m.examples).collect::<Vec<_>>()));
    }
    if let Some(m) = micro.iter().find(|m| !(m.divisor.is_finite() && m.divisor >= 1.0 && m.divisor >= m.examples as f64)) {
        return Err(format!("shard of {} examples divided by {}", m.examples, m.divisor));
    }
    Ok(())
}

/// Whether a held step was applied, and the optimizer's step count after it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Committed {
    pub applied: bool,
    pub optimizer_step: u64,
}

/// One evaluation shard's sums (and logits when asked).
#[derive(Debug, Clone, PartialEq)]
pub struct EvalOutcome {
    pub loss_sum: f64,
    pub correct: u32,
    pub examples: u32,
    pub logits: Vec<f32>,
    pub num_labels: u32,
}

/// The replica's thread and its collective side (group, schedule, chunks waiting).
pub struct Engine {
    pub compute: ComputeThread,
    /// Values in a state transfer (3 x trainable parameters).
    pub state_len: usize,
    /// The group, its schedule and the chunks peers pushed (shared with the Collective
    /// service); its token, TLS and timeout serve state transfers from peers too.
    pub comm: Arc<Comm>,
    pub shutdown: Notify,
    /// Test failpoint (`PEFTRAIN_FAILPOINT_NAN_STEP`): poison this step's gradient with a NaN,
    /// to exercise the non-finite skip end to end.
    pub nan_at_step: Option<u64>,
    pub stats: std::sync::Mutex<WorkerStats>,
}

impl Engine {
    pub fn new(compute: ComputeThread, info: &ReplicaInfo, security: peftrain_net::Security, collective_timeout: Duration) -> Engine {
        Engine {
            compute,
            state_len: 3 * info.fingerprint.trainable_params as usize,
            comm: Arc::new(Comm::new(security, collective_timeout, info.fingerprint.trainable_params)),
            shutdown: Notify::new(),
            nan_at_step: std::env::var("PEFTRAIN_FAILPOINT_NAN_STEP").ok().and_then(|v| v.parse().ok()),
            stats: std::sync::Mutex::new(WorkerStats {
                fingerprint: info.fingerprint.digest.clone(),
                trainable_params: info.fingerprint.trainable_params,
                ..Default::default()
            }),
        }
    }

    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&mut Replica) -> Result<T, WorkerError> + Send + 'static) -> Result<T, WorkerError> {
        self.compute.run(f).await
    }

    pub async fn setup(&self, group: Group) -> Result<(), WorkerError> {
        self.stat(|s| {
            s.rank = group.rank;
            s.world = group.world;
            s.generation = group.generation;
        });
        self.comm.setup(&group).await.map_err(|e| WorkerError::BadSetup(e.to_string()))
    }

    pub async fn step(&self, order: StepOrder) -> Result<StepOutcome, WorkerError> {
        let guard = self.comm.group.read().await;
        let exchange = guard.as_ref().ok_or(WorkerError::NotSetUp)?;
        if order.generation != exchange.generation {
            return Err(WorkerError::StaleGeneration { got: order.generation, current: exchange.generation });
        }
        let StepOrder { step, shard, micro, learning_rate: lr, dropout_stream, .. } = order;
        check_micro(&micro, shard.len()).map_err(WorkerError::BadShard)?;
        let t0 = Instant::now();
        // The group's collective: its schedule over the peers, or the group of one.
        let group: &dyn AllReduce = if exchange.world > 1 { exchange } else { &Alone };
        let host = group.wants_host();
        let poison = self.nan_at_step == Some(step);
        let ((stats, dropout_stream), mut grad) = self
            .blocking(move |r| {
                shard
                    .validate(r.spec.num_labels, r.loaded.config.vocab_size, r.loaded.config.type_vocab_size, r.max_tokens())
                    .map_err(WorkerError::BadShard)?;
                if !r.has_targets(&shard) {
                    let what = if r.spec.regression { "a regression target" } else { "a label" };
                    return Err(WorkerError::BadShard(format!("training shards need {what} per example")));
                }
                let (stats, stream) = r.forward_backward(&shard, &micro, dropout_stream);
                let mut grad = r.gradient(host);
                if poison {
                    r.poison(&mut grad);
                }
                Ok(((stats, stream.to_state()), grad))
            })
            .await?;
        let compute_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let mut abort = self.comm.abort.subscribe();
        let reduce = group.all_reduce(&self.comm.inbox, &mut grad, step, &mut abort).await?;
        let t1 = Instant::now();
        let norm = self.blocking(move |r| Ok(r.hold_gradient(step, grad, lr))).await?;
        self.stat(|s| s.step_took(stats.examples as u64, compute_ms / 1000.0, reduce.bytes_sent, reduce.millis / 1000.0));
        Ok(StepOutcome {
            step,
            loss_sum: stats.loss_sum,
            examples: stats.examples,
            tokens: stats.tokens,
            grad_norm: norm,
            allreduce_bytes: reduce.bytes_sent,
            allreduce_ms: reduce.millis,
            compute_ms,
            optimizer_ms: t1.elapsed().as_secs_f64() * 1000.0,
            nonfinite: !norm.is_finite(),
            peak_rss_bytes: peak_rss_bytes(),
            micro_loss_sums: stats.micro_loss_sums,
            dropout_stream,
        })
    }

    pub async fn commit(&self, generation: u64, step: u64) -> Result<Committed, WorkerError> {
        self.check_generation(generation).await?;
        self.blocking(move |r| {
            let applied = r.commit(step).ok_or(WorkerError::NothingHeld(step))?;
            Ok(Committed { applied, optimizer_step: r.optimizer.step })
        })
        .await
    }

    async fn check_generation(&self, generation: u64) -> Result<(), WorkerError> {
        let group = self.comm.group.read().await;
        let current = group.as_ref().ok_or(WorkerError::NotSetUp)?.generation;
        if generation != current {
            return Err(WorkerError::StaleGeneration { got: generation, current });
        }
        Ok(())
    }

    /// The replica's whole state.
    pub async fn state(&self) -> Result<State, WorkerError> {
        self.blocking(|r| {
            let (values, optimizer_step) = r.state();
            Ok(State { fingerprint: r.fingerprint.digest.clone(), optimizer_step, values })
        })
        .await
    }

    /// Pulls the group's state from a live peer.
    pub async fn sync_from(&self, generation: u64, peer: &str) -> Result<u64, WorkerError> {
        self.check_generation(generation).await?;
        let state = crate::state::fetch(&self.comm.security, peer, self.comm.timeout, self.state_len).await?;
        self.load_state(state).await
    }

    /// Loads a state into the replica; returns its optimizer step.
    pub async fn load_state(&self, state: State) -> Result<u64, WorkerError> {
        let step = state.optimizer_step;
        self.blocking(move |r| {
            if state.fingerprint != r.fingerprint.digest {
                return Err(WorkerError::BadState(format!(
                    "state from a replica with fingerprint {} (this one is {})",
                    short(&state.fingerprint),
                    short(&r.fingerprint.digest)
                )));
            }
            r.set_state(&state.values, state.optimizer_step).map_err(WorkerError::BadState)?;
            Ok(step)
        })
        .await
    }

    pub fn stat(&self, f: impl FnOnce(&mut WorkerStats)) {
        f(&mut self.stats.lock().unwrap_or_else(|p| p.into_inner()));
    }

    pub fn stats(&self) -> WorkerStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub async fn evaluate(&self, shard: Shard, return_logits: bool) -> Result<EvalOutcome, WorkerError> {
        self.stat(|s| s.evaluations += 1);
        self.blocking(move |r| {
            shard
                .validate(r.spec.num_labels, r.loaded.config.vocab_size, r.loaded.config.type_vocab_size, r.max_tokens())
                .map_err(WorkerError::BadShard)?;
            let s = r.evaluate(&shard, return_logits);
            Ok(EvalOutcome { loss_sum: s.loss_sum, correct: s.correct, examples: s.examples, logits: s.logits, num_labels: r.spec.num_labels as u32 })
        })
        .await
    }
}

fn short(d: &str) -> String {
    d.chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(examples: usize, divisor: f64) -> Micro {
        Micro { examples, divisor }
    }

    #[test]
    fn micro_batches_must_tile_the_shard_with_sane_divisors() {
        assert!(check_micro(&[m(3, 8.0), m(0, 8.0), m(2, 4.0)], 5).is_ok());
        assert!(check_micro(&[m(3, 8.0)], 4).unwrap_err().contains("shard of 4"));
        assert!(check_micro(&[], 0).is_err());
        for bad in [0.0, 0.5, f64::NAN, f64::INFINITY, 2.0] {
            assert!(check_micro(&[m(3, bad)], 3).is_err(), "divisor {bad}");
        }
        assert!(check_micro(&[m(usize::MAX, 1e300), m(2, 4.0)], 1).is_err(), "counts that overflow");
    }

    #[test]
    fn a_micro_batch_is_its_examples_of_the_shard() {
        let s = Shard { ids: vec![1, 2, 3, 4, 5, 6], type_ids: vec![], lengths: vec![2, 1, 3], labels: vec![0, 1, 0], scores: vec![] };
        let part = s.slice(1..3);
        assert_eq!((part.ids, part.lengths, part.labels), (vec![3, 4, 5, 6], vec![1, 3], vec![1, 0]));
        assert!(s.slice(0..0).is_empty());
    }
}
