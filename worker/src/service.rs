//! The worker's gRPC services, thin adapters over `Engine` (the replica plus its ring): tensors
//! are computed on a blocking thread, the all-reduce runs on the async runtime between them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use peftrain_proto::v1 as pb;
use pb::collective_server::Collective;
use pb::worker_server::Worker;
use tokio::sync::Notify;
use tonic::{Request, Response, Status, Streaming};

use crate::collective::{Alone, AllReduce, Inbox, Ring};
pub use crate::compute::{ComputeThread, ReplicaInfo};
pub use crate::error::WorkerError;
pub use crate::state::{receive_state, AssembledState};
use crate::replica::{Replica, Shard};

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

/// The replica's thread, its place in the ring and the chunks waiting for it.
pub struct Engine {
    pub compute: ComputeThread,
    /// Values in a state transfer (3 x trainable parameters).
    pub state_len: usize,
    pub ring: tokio::sync::RwLock<Option<Ring>>,
    pub inbox: Inbox,
    pub shutdown: Notify,
    pub collective_timeout: Duration,
    pub chunk_elems: usize,
    /// The newest group generation announced; moving it aborts a running all-reduce.
    pub abort: tokio::sync::watch::Sender<u64>,
    /// Token and TLS for calls to peers.
    pub security: peftrain_net::Security,
    /// Test failpoint (`PEFTRAIN_FAILPOINT_NAN_STEP`): poison this step's gradient with a NaN,
    /// to exercise the non-finite skip end to end.
    pub nan_at_step: Option<u64>,
    pub stats: std::sync::Mutex<WorkerStats>,
}

impl Engine {
    pub fn new(
        compute: ComputeThread,
        info: &ReplicaInfo,
        security: peftrain_net::Security,
        collective_timeout: Duration,
        chunk_elems: usize,
    ) -> Engine {
        Engine {
            compute,
            state_len: 3 * info.fingerprint.trainable_params as usize,
            ring: tokio::sync::RwLock::new(None),
            inbox: Inbox::default(),
            shutdown: Notify::new(),
            collective_timeout,
            chunk_elems,
            abort: tokio::sync::watch::channel(0).0,
            security,
            nan_at_step: std::env::var("PEFTRAIN_FAILPOINT_NAN_STEP").ok().and_then(|v| v.parse().ok()),
            stats: std::sync::Mutex::new(WorkerStats {
                fingerprint: info.fingerprint.digest.clone(),
                trainable_params: info.fingerprint.trainable_params,
                ..Default::default()
            }),
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Replica) -> Result<T, WorkerError> + Send + 'static,
    ) -> Result<T, WorkerError> {
        self.compute.run(f).await
    }

    pub async fn setup(&self, req: pb::SetupRequest) -> Result<(), WorkerError> {
        // Abandon a step of the old group still waiting on a lost peer, then take the ring.
        self.abort.send_replace(req.generation);
        self.stat(|s| {
            s.rank = req.rank;
            s.world = req.world_size;
            s.generation = req.generation;
        });
        let next = if req.world_size > 1 {
            let addr = req
                .peers
                .get(((req.rank + 1) % req.world_size) as usize)
                .ok_or_else(|| WorkerError::BadSetup(format!("{} peers for world size {}", req.peers.len(), req.world_size)))?;
            let ch = self
                .security
                .endpoint(addr, self.collective_timeout)
                .map_err(|e| WorkerError::BadSetup(e.to_string()))?
                .connect_lazy();
            Some(
                pb::collective_client::CollectiveClient::with_interceptor(ch, self.security.client_auth())
                    .max_decoding_message_size(64 << 20)
                    .max_encoding_message_size(64 << 20),
            )
        } else {
            None
        };
        *self.ring.write().await = Some(Ring {
            rank: req.rank,
            world: req.world_size,
            generation: req.generation,
            next,
            chunk_elems: self.chunk_elems,
            timeout: self.collective_timeout,
        });
        Ok(())
    }

    pub async fn step(&self, req: pb::StepRequest) -> Result<pb::StepReply, WorkerError> {
        let ring_guard = self.ring.read().await;
        let ring = ring_guard.as_ref().ok_or(WorkerError::NotSetUp)?;
        if req.generation != ring.generation {
            return Err(WorkerError::StaleGeneration {
                got: req.generation,
                current: ring.generation,
            });
        }
        let shard = shard_from(req.shard.unwrap_or_default());
        let global = req.global_batch_size as usize;
        if global == 0 || shard.len() > global {
            return Err(WorkerError::BadShard(format!(
                "shard of {} examples in a global batch of {global}",
                shard.len()
            )));
        }
        let t0 = Instant::now();
        let seed = req.dropout_seed;
        // The group's collective: the ring, or the group of one (the factory's two arms).
        let group: &dyn AllReduce = if ring.world > 1 { ring } else { &Alone };
        let host = group.wants_host();
        let poison = self.nan_at_step == Some(req.step);
        let (stats, mut grad) = self
            .blocking(move |r| {
                shard
                    .validate(r.spec.num_labels, r.loaded.config.vocab_size, r.loaded.config.type_vocab_size, r.max_tokens())
                    .map_err(WorkerError::BadShard)?;
                if shard.labels.len() != shard.len() {
                    return Err(WorkerError::BadShard("training shards need a label per example".into()));
                }
                let stats = r.forward_backward(&shard, global, seed);
                let mut grad = r.gradient(host);
                if poison {
                    r.poison(&mut grad);
                }
                Ok((stats, grad))
            })
            .await?;
        let compute_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let (lr, step) = (req.learning_rate, req.step);
        let mut abort = self.abort.subscribe();
        let reduce = group.all_reduce(&self.inbox, &mut grad, step, &mut abort).await?;
        let t1 = Instant::now();
        let norm = self.blocking(move |r| Ok(r.hold_gradient(step, grad, lr))).await?;
        self.stat(|s| {
            s.steps += 1;
            s.examples += stats.examples as u64;
            s.compute_seconds += compute_ms / 1000.0;
            s.allreduce_bytes += reduce.bytes_sent;
            s.allreduce_seconds += reduce.millis / 1000.0;
        });
        Ok(pb::StepReply {
            step: req.step,
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
        })
    }

    pub async fn commit(&self, req: pb::CommitRequest) -> Result<pb::CommitReply, WorkerError> {
        self.check_generation(req.generation).await?;
        let step = req.step;
        self.blocking(move |r| {
            let applied = r.commit(step).ok_or(WorkerError::NothingHeld(step))?;
            Ok(pb::CommitReply {
                applied,
                optimizer_step: r.optimizer.step,
            })
        })
        .await
    }

    async fn check_generation(&self, generation: u64) -> Result<(), WorkerError> {
        let ring = self.ring.read().await;
        let current = ring.as_ref().ok_or(WorkerError::NotSetUp)?.generation;
        if generation != current {
            return Err(WorkerError::StaleGeneration { got: generation, current });
        }
        Ok(())
    }

    /// The replica's state as chunks of at most `chunk_elems` values.
    pub async fn get_state(&self) -> Result<Vec<pb::StateChunk>, WorkerError> {
        let (values, optimizer_step, digest) = self
            .blocking(|r| {
                let (v, s) = r.state();
                Ok((v, s, r.fingerprint.digest.clone()))
            })
            .await?;
        let total = values.len() as u64;
        let mut chunks = Vec::new();
        for (k, part) in values.chunks(self.chunk_elems.max(1)).enumerate() {
            chunks.push(pb::StateChunk {
                fingerprint: digest.clone(),
                optimizer_step,
                total,
                offset: (k * self.chunk_elems) as u64,
                data: crate::collective::to_le_bytes(part),
            });
        }
        if chunks.is_empty() {
            chunks.push(pb::StateChunk { fingerprint: digest, optimizer_step, total, offset: 0, data: Default::default() });
        }
        Ok(chunks)
    }

    /// Checks a peer's gradient chunk before it reaches the all-reduce: a buffer of another
    /// length, a ragged byte count or an out-of-range offset is refused (INVALID_ARGUMENT) and
    /// never touches the gradients; traffic of an older group is dropped.
    pub fn admit_chunk(&self, c: &pb::GradChunk) -> Result<bool, WorkerError> {
        check_chunk(c, (self.state_len / 3) as u64, *self.abort.borrow())
    }



    /// Pulls the group's state from a live peer.
    pub async fn sync_from(&self, req: pb::SyncFromRequest) -> Result<pb::SyncFromReply, WorkerError> {
        self.check_generation(req.generation).await?;
        let ch = self
            .security
            .endpoint(&req.peer, self.collective_timeout)
            .map_err(|e| WorkerError::BadState(format!("peer {}: {e}", req.peer)))?
            .timeout(self.collective_timeout * 4)
            .connect()
            .await
            .map_err(|e| WorkerError::BadState(format!("peer {}: {e}", req.peer)))?;
        let mut peer = pb::worker_client::WorkerClient::with_interceptor(ch, self.security.client_auth()).max_decoding_message_size(64 << 20);
        let mut stream = peer
            .get_state(pb::GetStateRequest {})
            .await
            .map_err(|s| WorkerError::BadState(format!("peer {}: {}", req.peer, s.message())))?
            .into_inner();
        let state = receive_state(&mut stream, self.state_len).await?;
        let optimizer_step = self.load_state(state).await?;
        Ok(pb::SyncFromReply { optimizer_step })
    }

    /// Loads an assembled state into the replica.
    pub async fn load_state(&self, state: AssembledState) -> Result<u64, WorkerError> {
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

    pub async fn evaluate(&self, req: pb::EvalRequest) -> Result<pb::EvalReply, WorkerError> {
        self.stat(|s| s.evaluations += 1);
        let shard = shard_from(req.shard.unwrap_or_default());
        let want = req.return_logits;
        self.blocking(move |r| {
            shard
                .validate(r.spec.num_labels, r.loaded.config.vocab_size, r.loaded.config.type_vocab_size, r.max_tokens())
                .map_err(WorkerError::BadShard)?;
            let s = r.evaluate(&shard, want);
            let logits = peftrain_net::wire::f32_to_le_bytes(&s.logits);
            Ok(pb::EvalReply {
                loss_sum: s.loss_sum,
                correct: s.correct,
                examples: s.examples,
                logits,
                num_labels: r.spec.num_labels as u32,
            })
        })
        .await
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

fn short(d: &str) -> String {
    d.chars().take(12).collect()
}

/// Whether a gradient chunk fits a buffer of `len` values (else INVALID_ARGUMENT), and
/// whether it belongs to the current group (`generation` or newer) rather than an older one.
pub fn check_chunk(c: &pb::GradChunk, len: u64, generation: u64) -> Result<bool, WorkerError> {
    if c.total != len {
        return Err(WorkerError::BadChunk(format!("gradient buffer of {} values, this group's is {len}", c.total)));
    }
    if c.data.len() % 4 != 0 || c.offset.saturating_add(c.data.len() as u64 / 4) > len {
        return Err(WorkerError::BadChunk(format!(
            "{} bytes at offset {} do not fit the buffer of {len} values",
            c.data.len(),
            c.offset
        )));
    }
    Ok(c.generation >= generation)
}

pub fn shard_from(b: pb::Batch) -> Shard {
    Shard {
        ids: b.input_ids,
        type_ids: b.token_type_ids,
        lengths: b.lengths,
        labels: b.labels,
    }
}

/// The Worker service: coordinator -> worker.
pub struct WorkerService(pub Arc<Engine>);

#[tonic::async_trait]
impl Worker for WorkerService {
    async fn setup(&self, req: Request<pb::SetupRequest>) -> Result<Response<pb::SetupReply>, Status> {
        self.0.setup(req.into_inner()).await?;
        Ok(Response::new(pb::SetupReply {}))
    }
    async fn step(&self, req: Request<pb::StepRequest>) -> Result<Response<pb::StepReply>, Status> {
        Ok(Response::new(self.0.step(req.into_inner()).await?))
    }
    async fn evaluate(&self, req: Request<pb::EvalRequest>) -> Result<Response<pb::EvalReply>, Status> {
        Ok(Response::new(self.0.evaluate(req.into_inner()).await?))
    }
    async fn commit(&self, req: Request<pb::CommitRequest>) -> Result<Response<pb::CommitReply>, Status> {
        Ok(Response::new(self.0.commit(req.into_inner()).await?))
    }
    type GetStateStream = tokio_stream::Iter<std::vec::IntoIter<Result<pb::StateChunk, Status>>>;
    async fn get_state(&self, _req: Request<pb::GetStateRequest>) -> Result<Response<Self::GetStateStream>, Status> {
        let chunks = self.0.get_state().await?;
        Ok(Response::new(tokio_stream::iter(chunks.into_iter().map(Ok).collect::<Vec<_>>())))
    }
    async fn set_state(&self, req: Request<Streaming<pb::StateChunk>>) -> Result<Response<pb::SetStateReply>, Status> {
        let mut stream = req.into_inner();
        let state = receive_state(&mut stream, self.0.state_len).await?;
        self.0.load_state(state).await?;
        Ok(Response::new(pb::SetStateReply {}))
    }
    async fn sync_from(&self, req: Request<pb::SyncFromRequest>) -> Result<Response<pb::SyncFromReply>, Status> {
        Ok(Response::new(self.0.sync_from(req.into_inner()).await?))
    }
    async fn shutdown(&self, _req: Request<pb::ShutdownRequest>) -> Result<Response<pb::ShutdownReply>, Status> {
        self.0.shutdown.notify_one();
        Ok(Response::new(pb::ShutdownReply {}))
    }
}

/// The Collective service: ring predecessor -> this worker.
pub struct CollectiveService(pub Arc<Engine>);

#[tonic::async_trait]
impl Collective for CollectiveService {
    async fn push(&self, req: Request<Streaming<pb::GradChunk>>) -> Result<Response<pb::PushReply>, Status> {
        let mut stream = req.into_inner();
        while let Some(chunk) = stream.message().await? {
            if self.0.admit_chunk(&chunk)? {
                self.0.inbox.deliver(chunk);
            }
        }
        Ok(Response::new(pb::PushReply {}))
    }
}
