//! The coordinator's handle on its workers: ranks and ring setup, sharding each global batch by
//! token count and fanning it out, and gathering the replies into one outcome per step.

use std::time::Duration;

use peftrain_proto::v1 as pb;
use pb::worker_client::WorkerClient;
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

use crate::registry::Member;
use crate::sampler::shard_by_tokens;
use crate::tokenize::Encoded;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("worker {worker} ({address}): {message} [{code:?}]")]
    Rpc {
        worker: String,
        address: String,
        code: tonic::Code,
        message: String,
    },
    #[error("cannot reach worker {worker} at {address}: {why}")]
    Connect { worker: String, address: String, why: String },
    #[error("workers disagree: {0}")]
    Inconsistent(String),
}

/// One worker as the coordinator sees it.
#[derive(Clone)]
pub struct Conn {
    pub member: Member,
    pub client: WorkerClient<Channel>,
}

/// Aggregate of one training step over all workers.
#[derive(Debug, Clone, Default)]
pub struct StepOutcome {
    pub loss_sum: f64,
    pub examples: u32,
    pub tokens: u64,
    pub grad_norm: f64,
    /// Bytes one worker sent in the all-reduce (the largest over workers).
    pub allreduce_bytes: u64,
    pub allreduce_ms: f64,
    pub compute_ms: f64,
    pub skipped: bool,
}

/// Aggregate of an evaluation batch.
#[derive(Debug, Clone, Default)]
pub struct EvalOutcome {
    pub loss_sum: f64,
    pub correct: u64,
    pub examples: u64,
    /// Row-major [examples, num_labels] in the batch's order, when asked for.
    pub logits: Vec<f32>,
    pub num_labels: usize,
}

pub struct Cluster {
    pub conns: Vec<Conn>,
    pub run_id: String,
    pub generation: u64,
    /// Deadline of every RPC.
    pub rpc_timeout: Duration,
    /// Send segment ids (BERT) or not (RoBERTa ignores them; its type vocabulary has one entry).
    pub send_type_ids: bool,
}

fn rpc_error(c: &Conn, s: tonic::Status) -> ClusterError {
    ClusterError::Rpc {
        worker: c.member.worker_id.clone(),
        address: c.member.address.clone(),
        code: s.code(),
        message: s.message().to_string(),
    }
}

impl Cluster {
    /// Connects to the registered workers; ranks follow the order of `members`.
    pub async fn connect(members: Vec<Member>, run_id: String, rpc_timeout: Duration, send_type_ids: bool) -> Result<Cluster, ClusterError> {
        let mut conns = Vec::new();
        for m in members {
            let ch = Endpoint::from_shared(format!("http://{}", m.address))
                .map_err(|e| ClusterError::Connect {
                    worker: m.worker_id.clone(),
                    address: m.address.clone(),
                    why: e.to_string(),
                })?
                .connect_timeout(Duration::from_secs(10))
                .tcp_nodelay(true)
                .connect()
                .await
                .map_err(|e| ClusterError::Connect {
                    worker: m.worker_id.clone(),
                    address: m.address.clone(),
                    why: e.to_string(),
                })?;
            let client = WorkerClient::new(ch)
                .max_decoding_message_size(256 << 20)
                .max_encoding_message_size(64 << 20);
            conns.push(Conn { member: m, client });
        }
        Ok(Cluster {
            conns,
            run_id,
            generation: 0,
            rpc_timeout,
            send_type_ids,
        })
    }

    pub fn world(&self) -> usize {
        self.conns.len()
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(self.rpc_timeout);
        r
    }

    /// Sends every worker its rank and the ring; bumps the group generation.
    pub async fn setup(&mut self) -> Result<(), ClusterError> {
        self.generation += 1;
        let peers: Vec<String> = self.conns.iter().map(|c| c.member.address.clone()).collect();
        let mut set = JoinSet::new();
        for (rank, c) in self.conns.iter().enumerate() {
            let req = self.request(pb::SetupRequest {
                run_id: self.run_id.clone(),
                rank: rank as u32,
                world_size: peers.len() as u32,
                peers: peers.clone(),
                generation: self.generation,
            });
            let c = c.clone();
            set.spawn(async move {
                let mut client = c.client.clone();
                client.setup(req).await.map_err(|s| rpc_error(&c, s))
            });
        }
        while let Some(r) = set.join_next().await {
            r.map_err(|e| ClusterError::Inconsistent(e.to_string()))??;
        }
        Ok(())
    }

    fn batch(&self, examples: &[&Encoded], positions: &[usize], with_labels: bool) -> pb::Batch {
        let mut b = pb::Batch::default();
        for &p in positions {
            let e = examples[p];
            b.input_ids.extend_from_slice(&e.ids);
            if self.send_type_ids {
                b.token_type_ids.extend_from_slice(&e.type_ids);
            }
            b.lengths.push(e.ids.len() as u32);
            if with_labels {
                if let Some(l) = e.label {
                    b.labels.push(l as i64);
                }
            }
        }
        b
    }

    /// One optimizer step on a global batch: shards by token count, one StepRequest per worker.
    pub async fn step(&self, step: u64, examples: &[&Encoded], lr: f64, seed: u64) -> Result<StepOutcome, ClusterError> {
        let lengths: Vec<usize> = examples.iter().map(|e| e.ids.len()).collect();
        let shards = shard_by_tokens(&lengths, self.world());
        let mut set = JoinSet::new();
        for (rank, (c, positions)) in self.conns.iter().zip(&shards).enumerate() {
            let req = self.request(pb::StepRequest {
                step,
                generation: self.generation,
                shard: Some(self.batch(examples, positions, true)),
                global_batch_size: examples.len() as u32,
                learning_rate: lr,
                dropout_seed: seed
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .wrapping_add(step.wrapping_mul(1_000_003))
                    .wrapping_add(rank as u64),
            });
            let c = c.clone();
            set.spawn(async move {
                let mut client = c.client.clone();
                client.step(req).await.map(|r| r.into_inner()).map_err(|s| rpc_error(&c, s))
            });
        }
        let mut out = StepOutcome::default();
        let mut norms = Vec::new();
        while let Some(r) = set.join_next().await {
            let reply = r.map_err(|e| ClusterError::Inconsistent(e.to_string()))??;
            out.loss_sum += reply.loss_sum;
            out.examples += reply.examples;
            out.tokens += reply.tokens;
            out.allreduce_bytes = out.allreduce_bytes.max(reply.allreduce_bytes);
            out.allreduce_ms = out.allreduce_ms.max(reply.allreduce_ms);
            out.compute_ms = out.compute_ms.max(reply.compute_ms);
            out.skipped |= reply.skipped;
            norms.push(reply.grad_norm);
        }
        // Every worker clipped the same reduced gradient: their norms must agree bit for bit.
        out.grad_norm = norms.first().copied().unwrap_or(0.0);
        if norms.iter().any(|n| n.to_bits() != out.grad_norm.to_bits() && !(n.is_nan() && out.grad_norm.is_nan())) {
            return Err(ClusterError::Inconsistent(format!("replicas diverged: gradient norms {norms:?}")));
        }
        if out.examples as usize != examples.len() {
            return Err(ClusterError::Inconsistent(format!(
                "workers trained on {} examples of a batch of {}",
                out.examples,
                examples.len()
            )));
        }
        Ok(out)
    }

    /// Loss, accuracy and optionally logits of a batch, sharded like training.
    pub async fn evaluate(&self, examples: &[&Encoded], want_logits: bool) -> Result<EvalOutcome, ClusterError> {
        let lengths: Vec<usize> = examples.iter().map(|e| e.ids.len()).collect();
        let shards = shard_by_tokens(&lengths, self.world());
        let mut set = JoinSet::new();
        for (k, (c, positions)) in self.conns.iter().zip(&shards).enumerate() {
            let req = self.request(pb::EvalRequest {
                shard: Some(self.batch(examples, positions, true)),
                return_logits: want_logits,
            });
            let c = c.clone();
            set.spawn(async move {
                let mut client = c.client.clone();
                client.evaluate(req).await.map(|r| (k, r.into_inner())).map_err(|s| rpc_error(&c, s))
            });
        }
        let mut out = EvalOutcome::default();
        let mut parts = Vec::new();
        while let Some(r) = set.join_next().await {
            let (k, reply) = r.map_err(|e| ClusterError::Inconsistent(e.to_string()))??;
            out.loss_sum += reply.loss_sum;
            out.correct += reply.correct as u64;
            out.examples += reply.examples as u64;
            out.num_labels = reply.num_labels as usize;
            parts.push((k, reply.logits));
        }
        if want_logits {
            let nl = out.num_labels;
            let mut logits = vec![0f32; examples.len() * nl];
            for (k, bytes) in parts {
                let vals: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                if vals.len() != shards[k].len() * nl {
                    return Err(ClusterError::Inconsistent(format!("{} logits for a shard of {}", vals.len(), shards[k].len())));
                }
                for (row, &p) in shards[k].iter().enumerate() {
                    logits[p * nl..(p + 1) * nl].copy_from_slice(&vals[row * nl..(row + 1) * nl]);
                }
            }
            out.logits = logits;
        }
        Ok(out)
    }

    /// Asks rank 0 to write the trainable weights under `dir` (on its disk).
    pub async fn save(&self, dir: &str) -> Result<pb::SaveReply, ClusterError> {
        let c = self.conns.first().ok_or_else(|| ClusterError::Inconsistent("no workers".into()))?;
        let mut client = c.client.clone();
        client
            .save(self.request(pb::SaveRequest { directory: dir.to_string() }))
            .await
            .map(|r| r.into_inner())
            .map_err(|s| rpc_error(c, s))
    }

    /// Tells every worker to exit; errors are ignored (a worker may already be gone).
    pub async fn shutdown(&self) {
        for c in &self.conns {
            let mut client = c.client.clone();
            let mut req = tonic::Request::new(pb::ShutdownRequest {});
            req.set_timeout(Duration::from_secs(5));
            let _ = client.shutdown(req).await;
        }
    }
}
