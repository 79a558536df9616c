//! The worker's gRPC services, thin adapters over `engine::Engine`: each request is converted
//! to the engine's plain types at this edge, each outcome back, each error mapped to a
//! `Status` in one place (`error.rs`).

use std::sync::Arc;

use pb::collective_server::Collective;
use pb::worker_server::Worker;
use peftrain_proto::v1 as pb;
use peftrain_spec::torch_rng::StreamState;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};

use crate::collective::{Algorithm, Comm};
use crate::engine::{Committed, Engine, EvalOutcome, Group, StepOrder, StepOutcome};
use crate::error::WorkerError;
use crate::replica::{Micro, Shard};
use crate::state::{receive_state, to_chunks};

/// Whether a gradient chunk fits a buffer of `len` values (else INVALID_ARGUMENT), and
/// whether it belongs to the current group (`generation` or newer) rather than an older one.
/// A refused chunk never touches the gradients.
pub fn check_chunk(c: &pb::GradChunk, len: u64, generation: u64) -> Result<bool, WorkerError> {
    if c.total != len {
        return Err(WorkerError::BadChunk(format!("gradient buffer of {} values, this group's is {len}", c.total)));
    }
    if !c.data.len().is_multiple_of(4) || c.offset.saturating_add(c.data.len() as u64 / 4) > len {
        return Err(WorkerError::BadChunk(format!("{} bytes at offset {} do not fit the buffer of {len} values", c.data.len(), c.offset)));
    }
    Ok(c.generation >= generation)
}

pub fn shard_from(b: pb::Batch) -> Shard {
    Shard { ids: b.input_ids, type_ids: b.token_type_ids, lengths: b.lengths, labels: b.labels, scores: b.scores }
}

impl TryFrom<pb::SetupRequest> for Group {
    type Error = WorkerError;
    fn try_from(r: pb::SetupRequest) -> Result<Group, WorkerError> {
        let algorithm = match pb::AllReduceAlgorithm::try_from(r.all_reduce) {
            Ok(pb::AllReduceAlgorithm::Ring) => Algorithm::Ring,
            Ok(pb::AllReduceAlgorithm::HalvingDoubling) => Algorithm::HalvingDoubling,
            _ => return Err(WorkerError::BadSetup(format!("all-reduce algorithm {} is not one this worker knows", r.all_reduce))),
        };
        Ok(Group { rank: r.rank, world: r.world_size, generation: r.generation, peers: r.peers, algorithm })
    }
}

impl TryFrom<pb::StepRequest> for StepOrder {
    type Error = WorkerError;
    fn try_from(r: pb::StepRequest) -> Result<StepOrder, WorkerError> {
        let shard = shard_from(r.shard.unwrap_or_default());
        let micro = if r.micro_batch_examples.is_empty() && r.micro_batch_divisors.is_empty() {
            // No accumulation: the shard is one micro-batch, a share of the global mean.
            vec![Micro { examples: shard.len(), divisor: r.global_batch_size as f64 }]
        } else if r.micro_batch_examples.len() != r.micro_batch_divisors.len() {
            return Err(WorkerError::BadShard(format!(
                "{} micro-batch sizes with {} divisors",
                r.micro_batch_examples.len(),
                r.micro_batch_divisors.len()
            )));
        } else {
            r.micro_batch_examples.iter().zip(&r.micro_batch_divisors).map(|(&n, &d)| Micro { examples: n as usize, divisor: d }).collect()
        };
        let stream = r.dropout_stream.ok_or_else(|| WorkerError::BadShard("a step without its dropout stream".into()))?;
        let dropout_stream = StreamState::generator_from_proto(&stream).map_err(WorkerError::BadShard)?;
        Ok(StepOrder { generation: r.generation, step: r.step, shard, micro, learning_rate: r.learning_rate, dropout_stream })
    }
}

impl From<StepOutcome> for pb::StepReply {
    fn from(o: StepOutcome) -> pb::StepReply {
        pb::StepReply {
            step: o.step,
            loss_sum: o.loss_sum,
            examples: o.examples,
            tokens: o.tokens,
            grad_norm: o.grad_norm,
            allreduce_bytes: o.allreduce_bytes,
            allreduce_ms: o.allreduce_ms,
            compute_ms: o.compute_ms,
            optimizer_ms: o.optimizer_ms,
            nonfinite: o.nonfinite,
            peak_rss_bytes: o.peak_rss_bytes,
            micro_loss_sums: o.micro_loss_sums,
            dropout_stream: Some(o.dropout_stream.to_proto()),
        }
    }
}

impl From<Committed> for pb::CommitReply {
    fn from(c: Committed) -> pb::CommitReply {
        pb::CommitReply { applied: c.applied, optimizer_step: c.optimizer_step }
    }
}

impl From<EvalOutcome> for pb::EvalReply {
    fn from(o: EvalOutcome) -> pb::EvalReply {
        pb::EvalReply {
            loss_sum: o.loss_sum,
            correct: o.correct,
            examples: o.examples,
            logits: peftrain_net::wire::f32_to_le_bytes(&o.logits),
            num_labels: o.num_labels,
        }
    }
}

/// The Worker service: coordinator -> worker.
pub struct WorkerService(pub Arc<Engine>);

#[tonic::async_trait]
impl Worker for WorkerService {
    async fn setup(&self, req: Request<pb::SetupRequest>) -> Result<Response<pb::SetupReply>, Status> {
        self.0.setup(Group::try_from(req.into_inner())?).await?;
        Ok(Response::new(pb::SetupReply {}))
    }
    async fn step(&self, req: Request<pb::StepRequest>) -> Result<Response<pb::StepReply>, Status> {
        Ok(Response::new(self.0.step(StepOrder::try_from(req.into_inner())?).await?.into()))
    }
    async fn evaluate(&self, req: Request<pb::EvalRequest>) -> Result<Response<pb::EvalReply>, Status> {
        let r = req.into_inner();
        Ok(Response::new(self.0.evaluate(shard_from(r.shard.unwrap_or_default()), r.return_logits).await?.into()))
    }
    async fn commit(&self, req: Request<pb::CommitRequest>) -> Result<Response<pb::CommitReply>, Status> {
        let r = req.into_inner();
        Ok(Response::new(self.0.commit(r.generation, r.step).await?.into()))
    }
    type GetStateStream = tokio_stream::Iter<std::vec::IntoIter<Result<pb::StateChunk, Status>>>;
    async fn get_state(&self, _req: Request<pb::GetStateRequest>) -> Result<Response<Self::GetStateStream>, Status> {
        let chunks = to_chunks(self.0.state().await?, self.0.comm.chunk_elems);
        Ok(Response::new(tokio_stream::iter(chunks.into_iter().map(Ok).collect::<Vec<_>>())))
    }
    async fn set_state(&self, req: Request<Streaming<pb::StateChunk>>) -> Result<Response<pb::SetStateReply>, Status> {
        let mut stream = req.into_inner();
        let state = receive_state(&mut stream, self.0.state_len).await?;
        self.0.load_state(state.into_state()).await?;
        Ok(Response::new(pb::SetStateReply {}))
    }
    async fn sync_from(&self, req: Request<pb::SyncFromRequest>) -> Result<Response<pb::SyncFromReply>, Status> {
        let r = req.into_inner();
        let optimizer_step = self.0.sync_from(r.generation, &r.peer).await?;
        Ok(Response::new(pb::SyncFromReply { optimizer_step }))
    }
    async fn shutdown(&self, _req: Request<pb::ShutdownRequest>) -> Result<Response<pb::ShutdownReply>, Status> {
        self.0.shutdown.notify_one();
        Ok(Response::new(pb::ShutdownReply {}))
    }
}

/// Largest gradient chunk a worker accepts from a peer (chunks are `spec::state::CHUNK_ELEMS`
/// values, 1 MiB).
pub const COLLECTIVE_MESSAGE_LIMIT: usize = 4 << 20;

/// The Collective service as every server of a worker mounts it: the token checked, chunks
/// bounded.
pub fn collective_service(
    comm: Arc<Comm>,
    auth: peftrain_net::ServerAuth,
) -> InterceptedService<pb::collective_server::CollectiveServer<CollectiveService>, peftrain_net::ServerAuth> {
    InterceptedService::new(
        pb::collective_server::CollectiveServer::new(CollectiveService(comm)).max_decoding_message_size(COLLECTIVE_MESSAGE_LIMIT),
        auth,
    )
}

/// The Collective service: peers -> this worker. Chunks that fit this group's buffer go to
/// the inbox the running all-reduce reads; traffic of an older group is dropped.
pub struct CollectiveService(pub Arc<Comm>);

#[tonic::async_trait]
impl Collective for CollectiveService {
    async fn push(&self, req: Request<Streaming<pb::GradChunk>>) -> Result<Response<pb::PushReply>, Status> {
        let mut stream = req.into_inner();
        loop {
            let chunk = tokio::select! {
                c = stream.message() => c?,
                // The worker is stopping: end the peer's stream so the server can drain.
                _ = self.0.closing() => None,
            };
            let Some(chunk) = chunk else { break };
            if check_chunk(&chunk, self.0.buffer_len(), self.0.generation())? {
                self.0.inbox.deliver(chunk);
            }
        }
        Ok(Response::new(pb::PushReply {}))
    }
}
