//! The worker's gRPC services, thin adapters over `Engine` (the replica plus its ring): tensors
//! are computed on a blocking thread, the all-reduce runs on the async runtime between them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use peftrain_proto::v1 as pb;
use pb::collective_server::Collective;
use pb::worker_server::Worker;
use tokio::sync::Notify;
use tonic::{Request, Response, Status, Streaming};

use crate::collective::{CollectiveError, Inbox, Ring};
use crate::replica::{Replica, Shard};

/// Everything a Worker RPC can fail with; mapped to a gRPC status in one place.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("worker is not set up in a group yet")]
    NotSetUp,
    #[error("stale request: generation {got}, the group is at {current}")]
    StaleGeneration { got: u64, current: u64 },
    #[error("bad shard: {0}")]
    BadShard(String),
    #[error("all-reduce failed: {0}")]
    Collective(#[from] CollectiveError),
    #[error("{0}")]
    Model(#[from] crate::error::ModelError),
    #[error("internal: {0}")]
    Internal(String),
}

impl From<WorkerError> for Status {
    fn from(e: WorkerError) -> Status {
        let msg = e.to_string();
        match e {
            WorkerError::NotSetUp => Status::failed_precondition(msg),
            WorkerError::StaleGeneration { .. } => Status::aborted(msg),
            WorkerError::BadShard(_) => Status::invalid_argument(msg),
            WorkerError::Collective(CollectiveError::Timeout { .. }) => Status::deadline_exceeded(msg),
            WorkerError::Collective(_) => Status::unavailable(msg),
            WorkerError::Model(_) => Status::failed_precondition(msg),
            WorkerError::Internal(_) => Status::internal(msg),
        }
    }
}

/// The replica, its place in the ring and the chunks waiting for it.
pub struct Engine {
    pub replica: Arc<Mutex<Replica>>,
    pub ring: tokio::sync::RwLock<Option<Ring>>,
    pub inbox: Inbox,
    pub shutdown: Notify,
    pub collective_timeout: Duration,
    pub chunk_elems: usize,
}

fn lock(r: &Mutex<Replica>) -> Result<std::sync::MutexGuard<'_, Replica>, WorkerError> {
    r.lock().map_err(|_| WorkerError::Internal("replica lock poisoned by an earlier failure".into()))
}

impl Engine {
    pub fn new(replica: Replica, collective_timeout: Duration, chunk_elems: usize) -> Engine {
        Engine {
            replica: Arc::new(Mutex::new(replica)),
            ring: tokio::sync::RwLock::new(None),
            inbox: Inbox::default(),
            shutdown: Notify::new(),
            collective_timeout,
            chunk_elems,
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Replica) -> Result<T, WorkerError> + Send + 'static,
    ) -> Result<T, WorkerError> {
        let r = self.replica.clone();
        tokio::task::spawn_blocking(move || {
            let mut g = lock(&r)?;
            f(&mut g)
        })
        .await
        .map_err(|e| WorkerError::Internal(e.to_string()))?
    }

    pub async fn setup(&self, req: pb::SetupRequest) -> Result<(), WorkerError> {
        let next = if req.world_size > 1 {
            let addr = req
                .peers
                .get(((req.rank + 1) % req.world_size) as usize)
                .ok_or_else(|| WorkerError::BadShard(format!("{} peers for world size {}", req.peers.len(), req.world_size)))?;
            let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| WorkerError::Internal(e.to_string()))?
                .connect_timeout(self.collective_timeout)
                .tcp_nodelay(true)
                .connect_lazy();
            Some(
                pb::collective_client::CollectiveClient::new(ch)
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
        let (stats, mut buf) = self
            .blocking(move |r| {
                shard
                    .validate(r.spec.num_labels, r.loaded.config.vocab_size, r.max_tokens())
                    .map_err(WorkerError::BadShard)?;
                if shard.labels.len() != shard.len() {
                    return Err(WorkerError::BadShard("training shards need a label per example".into()));
                }
                let stats = r.forward_backward(&shard, global, seed);
                Ok((stats, r.flat_grads()))
            })
            .await?;
        let compute_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let reduce = ring.all_reduce(&self.inbox, &mut buf, req.step).await?;
        let t1 = Instant::now();
        let lr = req.learning_rate;
        let (norm, skipped) = self
            .blocking(move |r| {
                r.set_flat_grads(&buf);
                Ok(r.apply(lr))
            })
            .await?;
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
            skipped,
        })
    }

    pub async fn evaluate(&self, req: pb::EvalRequest) -> Result<pb::EvalReply, WorkerError> {
        let shard = shard_from(req.shard.unwrap_or_default());
        let want = req.return_logits;
        self.blocking(move |r| {
            shard
                .validate(r.spec.num_labels, r.loaded.config.vocab_size, r.max_tokens())
                .map_err(WorkerError::BadShard)?;
            let s = r.evaluate(&shard, want);
            let mut logits = Vec::with_capacity(s.logits.len() * 4);
            for x in &s.logits {
                logits.extend_from_slice(&x.to_le_bytes());
            }
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

    pub async fn save(&self, req: pb::SaveRequest) -> Result<pb::SaveReply, WorkerError> {
        self.blocking(move |r| {
            let files = r.save(std::path::Path::new(&req.directory))?;
            let bytes = files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
            Ok(pb::SaveReply {
                files: files.iter().map(|f| f.display().to_string()).collect(),
                bytes,
            })
        })
        .await
    }
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
    async fn save(&self, req: Request<pb::SaveRequest>) -> Result<Response<pb::SaveReply>, Status> {
        Ok(Response::new(self.0.save(req.into_inner()).await?))
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
            self.0.inbox.deliver(chunk);
        }
        Ok(Response::new(pb::PushReply {}))
    }
}
