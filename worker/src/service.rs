//! The worker's gRPC services, thin adapters over `Engine` (the replica plus its ring): tensors
//! are computed on a blocking thread, the all-reduce runs on the async runtime between them.

use std::sync::Arc;
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

/// The replica lives on one dedicated thread: libtorch's OpenMP team belongs to the thread
/// that runs the ops, so hopping between pool threads would start new teams (and ignore the
/// configured thread count). Jobs are closures sent to it; results come back on a oneshot.
pub struct ComputeThread {
    tx: std::sync::mpsc::Sender<Box<dyn FnOnce(&mut Replica) + Send>>,
}

impl ComputeThread {
    /// Builds the replica on a new thread with `threads` intra-op threads.
    pub fn start(
        threads: Option<usize>,
        build: impl FnOnce() -> Result<Replica, crate::error::ModelError> + Send + 'static,
    ) -> Result<(ComputeThread, ReplicaInfo), WorkerError> {
        let (tx, rx) = std::sync::mpsc::channel::<Box<dyn FnOnce(&mut Replica) + Send>>();
        let (built_tx, built_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("peftrain-compute".into())
            .spawn(move || {
                if let Some(t) = threads {
                    tch::set_num_threads(t as i32);
                }
                let mut replica = match build() {
                    Ok(r) => {
                        let _ = built_tx.send(Ok(ReplicaInfo::of(&r)));
                        r
                    }
                    Err(e) => {
                        let _ = built_tx.send(Err(e));
                        return;
                    }
                };
                for job in rx {
                    job(&mut replica);
                }
            })
            .map_err(|e| WorkerError::Internal(format!("cannot start the compute thread: {e}")))?;
        let info = built_rx
            .recv()
            .map_err(|_| WorkerError::Internal("the compute thread died while building the replica".into()))??;
        Ok((ComputeThread { tx }, info))
    }

    /// Runs `f` on the replica's thread. A panic inside libtorch becomes an error, not a crash.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce(&mut Replica) -> Result<T, WorkerError> + Send + 'static) -> Result<T, WorkerError> {
        let (otx, orx) = tokio::sync::oneshot::channel();
        let job = Box::new(move |r: &mut Replica| {
            let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(r)))
                .unwrap_or_else(|p| Err(WorkerError::Internal(panic_message(&p))));
            let _ = otx.send(res);
        });
        self.tx.send(job).map_err(|_| WorkerError::Internal("the compute thread is gone".into()))?;
        orx.await.map_err(|_| WorkerError::Internal("the compute thread dropped a job".into()))?
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    let msg = p
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into());
    format!("computation failed: {}", msg.lines().next().unwrap_or(""))
}

/// What the rest of the worker needs to know about the replica, copied out of its thread.
#[derive(Debug, Clone)]
pub struct ReplicaInfo {
    pub fingerprint: crate::replica::Fingerprint,
    pub newly_initialized: Vec<String>,
    pub model_class: String,
    pub non_embedding_params: u64,
    pub peft_all_params: u64,
}

impl ReplicaInfo {
    fn of(r: &Replica) -> Self {
        let extra = r.spec.method.peft_extra_params(r.loaded.head_params);
        ReplicaInfo {
            fingerprint: r.fingerprint.clone(),
            newly_initialized: r.loaded.newly_initialized.clone(),
            model_class: r.loaded.class_name().to_string(),
            // total_flos counts what HF + peft count: peft's frozen copy of the head included.
            non_embedding_params: (r.loaded.non_embedding_params() + extra) as u64,
            peft_all_params: (r.fingerprint.total_params as i64 + extra) as u64,
        }
    }
}

/// The replica's thread, its place in the ring and the chunks waiting for it.
pub struct Engine {
    pub compute: ComputeThread,
    pub ring: tokio::sync::RwLock<Option<Ring>>,
    pub inbox: Inbox,
    pub shutdown: Notify,
    pub collective_timeout: Duration,
    pub chunk_elems: usize,
}

impl Engine {
    pub fn new(compute: ComputeThread, collective_timeout: Duration, chunk_elems: usize) -> Engine {
        Engine {
            compute,
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
        self.compute.run(f).await
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
