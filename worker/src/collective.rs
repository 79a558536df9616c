//! Ring all-reduce of the fused fp32 gradient buffer over worker-to-worker gRPC streams:
//! reduce-scatter then all-gather, 2(N-1) rounds, each worker sending 2(N-1)/N of the buffer.
//! Segments stream in chunks so that full fine-tuning's 500 MB never sits in one message.

use std::time::{Duration, Instant};

use bytes::Bytes;
use peftrain_net::AuthChannel;
use peftrain_proto::v1::collective_client::CollectiveClient;
use peftrain_proto::v1::GradChunk;
use prost::Message;
use tokio::sync::{mpsc, Mutex};

/// gRPC's length-prefixed message framing: 1 flag byte + 4 length bytes.
pub const GRPC_FRAME_BYTES: u64 = 5;

#[derive(Debug, thiserror::Error)]
pub enum CollectiveError {
    #[error("no gradient data from rank {from} within {secs:.0} s (step {step}, round {round})")]
    Timeout { from: u32, step: u64, round: u32, secs: f64 },
    #[error("the stream from rank {from} ended mid all-reduce (step {step})")]
    Closed { from: u32, step: u64 },
    #[error("gradient chunk from rank {from} rejected: {why}")]
    BadChunk { from: u32, why: String },
    #[error("sending to rank {to} failed: {why}")]
    Send { to: u32, why: String },
    #[error("abandoned: the group moved on to generation {0}")]
    Abandoned(u64),
}

/// Where chunks pushed by the predecessor wait until the all-reduce consumes them.
pub struct Inbox {
    tx: mpsc::UnboundedSender<GradChunk>,
    rx: Mutex<mpsc::UnboundedReceiver<GradChunk>>,
}

impl Default for Inbox {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Inbox { tx, rx: Mutex::new(rx) }
    }
}

impl Inbox {
    /// Called by the Collective service for each received chunk.
    pub fn deliver(&self, chunk: GradChunk) {
        // The receiver lives as long as the inbox; a send can only fail during shutdown.
        let _ = self.tx.send(chunk);
    }
}

/// A step's gradient where the group's collective wants it (`AllReduce`).
pub enum Gradient {
    /// Still in the parameters' `.grad`: a group of one has nothing to exchange, and the
    /// gradient never makes a trip through host memory.
    InPlace,
    /// The fused fp32 buffer in host memory, in the layout's order.
    Host(Vec<f32>),
}

/// The all-reduce of a step's fused gradient, as the step sees it: one code path whatever the
/// group. `Ring` (gRPC streams between workers) and `Alone` (the group of one) implement it;
/// an NCCL one would reduce `Gradient::Device` in place over a communicator built at Setup
/// (see ARCHITECTURE, "How to add a collective").
#[tonic::async_trait]
pub trait AllReduce: Send + Sync {
    /// Whether this collective reads the gradient from host memory.
    fn wants_host(&self) -> bool;
    /// Sums `grad` over the group in place: afterwards every member holds the same bits.
    /// `abort` carries the newest generation the coordinator announced.
    async fn all_reduce(
        &self,
        inbox: &Inbox,
        grad: &mut Gradient,
        step: u64,
        abort: &mut tokio::sync::watch::Receiver<u64>,
    ) -> Result<ReduceStats, CollectiveError>;
}

/// The group of one: its gradient is already the group's.
pub struct Alone;

#[tonic::async_trait]
impl AllReduce for Alone {
    fn wants_host(&self) -> bool {
        false
    }

    async fn all_reduce(
        &self,
        _: &Inbox,
        _: &mut Gradient,
        _: u64,
        _: &mut tokio::sync::watch::Receiver<u64>,
    ) -> Result<ReduceStats, CollectiveError> {
        Ok(ReduceStats::default())
    }
}

#[tonic::async_trait]
impl AllReduce for Ring {
    fn wants_host(&self) -> bool {
        true
    }

    async fn all_reduce(
        &self,
        inbox: &Inbox,
        grad: &mut Gradient,
        step: u64,
        abort: &mut tokio::sync::watch::Receiver<u64>,
    ) -> Result<ReduceStats, CollectiveError> {
        match grad {
            Gradient::Host(buf) => self.reduce(inbox, buf, step, abort).await,
            Gradient::InPlace => Err(CollectiveError::Send {
                to: (self.rank + 1) % self.world.max(1),
                why: "the ring reduces a host buffer; the gradient was left in place".into(),
            }),
        }
    }
}

/// Traffic of one all-reduce.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReduceStats {
    pub bytes_sent: u64,
    pub millis: f64,
}

/// This worker's place in the ring.
pub struct Ring {
    pub rank: u32,
    pub world: u32,
    pub generation: u64,
    /// Client to rank (rank + 1) % world; None when alone.
    pub next: Option<CollectiveClient<AuthChannel>>,
    /// Elements per message.
    pub chunk_elems: usize,
    pub timeout: Duration,
}

/// A lazily connected client to the ring successor at `addr`, the token and TLS of
/// `security` on every call.
pub fn connect(security: &peftrain_net::Security, addr: &str, timeout: Duration) -> Result<CollectiveClient<AuthChannel>, String> {
    let ch = security.endpoint(addr, timeout).map_err(|e| e.to_string())?.connect_lazy();
    Ok(CollectiveClient::with_interceptor(ch, security.client_auth()).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20))
}

/// Element range of segment `i` of `n` over a buffer of `len`.
fn segment(len: usize, n: usize, i: usize) -> (usize, usize) {
    (i * len / n, (i + 1) * len / n)
}

pub fn to_le_bytes(v: &[f32]) -> Bytes {
    Bytes::from(peftrain_net::wire::f32_to_le_bytes(v))
}

impl Ring {
    /// Sums `buf` across the ring in place; afterwards every worker holds the same bits.
    /// `abort` carries the newest generation the coordinator announced: when it moves past
    /// ours, the step was abandoned and waiting on peers stops at once.
    pub async fn reduce(
        &self,
        inbox: &Inbox,
        buf: &mut [f32],
        step: u64,
        abort: &mut tokio::sync::watch::Receiver<u64>,
    ) -> Result<ReduceStats, CollectiveError> {
        let n = self.world as usize;
        let Some(next) = self.next.clone().filter(|_| n > 1) else {
            return Ok(ReduceStats::default());
        };
        let started = Instant::now();
        let r = self.rank as usize;
        let from = ((r + n - 1) % n) as u32;
        let to = ((r + 1) % n) as u32;
        let total = buf.len() as u64;
        let (tx, rx) = mpsc::channel::<GradChunk>(16);
        let mut client = next;
        // The client-streaming call runs in its own task so that the transport drains our
        // sends while we wait on the predecessor.
        let call = tokio::spawn(async move { client.push(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
        let mut inbox = inbox.rx.lock().await;
        let mut bytes_sent = 0u64;
        let rounds = 2 * (n - 1);
        for round in 0..rounds {
            let (send_seg, recv_seg, reduce) = if round < n - 1 {
                ((r + n - round) % n, (r + 2 * n - round - 1) % n, true)
            } else {
                let k = round - (n - 1);
                ((r + 1 + n - k) % n, (r + n - k) % n, false)
            };
            let (a, b) = segment(buf.len(), n, send_seg);
            let mut off = a;
            while off < b {
                let end = (off + self.chunk_elems).min(b);
                let chunk = GradChunk {
                    step,
                    generation: self.generation,
                    from_rank: self.rank,
                    round: round as u32,
                    offset: off as u64,
                    data: to_le_bytes(&buf[off..end]),
                    total,
                };
                bytes_sent += chunk.encoded_len() as u64 + GRPC_FRAME_BYTES;
                tx.send(chunk).await.map_err(|_| CollectiveError::Send { to, why: "stream closed".into() })?;
                off = end;
            }
            let (a, b) = segment(buf.len(), n, recv_seg);
            let mut received = 0usize;
            while received < b - a {
                if *abort.borrow() > self.generation {
                    return Err(CollectiveError::Abandoned(*abort.borrow()));
                }
                let received_msg = tokio::select! {
                    r = tokio::time::timeout(self.timeout, inbox.recv()) => r,
                    _ = abort.changed() => return Err(CollectiveError::Abandoned(*abort.borrow())),
                };
                let msg = match received_msg {
                    Err(_) => return Err(CollectiveError::Timeout { from, step, round: round as u32, secs: self.timeout.as_secs_f64() }),
                    Ok(None) => return Err(CollectiveError::Closed { from, step }),
                    Ok(Some(m)) => m,
                };
                // Leftovers of an earlier, abandoned step or group are dropped.
                if msg.generation != self.generation || msg.step < step {
                    continue;
                }
                let bad = |why: String| CollectiveError::BadChunk { from: msg.from_rank, why };
                if msg.step != step || msg.round != round as u32 || msg.from_rank != from {
                    return Err(bad(format!(
                        "expected step {step} round {round} from rank {from}, got step {} round {} from rank {}",
                        msg.step, msg.round, msg.from_rank
                    )));
                }
                if msg.total != total {
                    return Err(bad(format!("buffer length {} differs from ours ({total})", msg.total)));
                }
                if msg.data.len() % 4 != 0 {
                    return Err(bad(format!("{} bytes is not a whole number of fp32 values", msg.data.len())));
                }
                let start = msg.offset as usize;
                let len = msg.data.len() / 4;
                if start < a || start + len > b {
                    return Err(bad(format!("elements {start}..{} fall outside segment {a}..{b}", start + len)));
                }
                let dst = &mut buf[start..start + len];
                if reduce {
                    peftrain_net::wire::add_le_bytes(dst, &msg.data);
                } else {
                    peftrain_net::wire::copy_le_bytes(dst, &msg.data);
                }
                received += len;
            }
        }
        drop(tx);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(Ok(_))) => {}
            Ok(Ok(Err(status))) => return Err(CollectiveError::Send { to, why: status.message().to_string() }),
            Ok(Err(join)) => return Err(CollectiveError::Send { to, why: join.to_string() }),
            Err(_) => return Err(CollectiveError::Send { to, why: "no acknowledgement within the timeout".into() }),
        }
        Ok(ReduceStats { bytes_sent, millis: started.elapsed().as_secs_f64() * 1000.0 })
    }
}

#[cfg(test)]
mod tests {
    use super::segment;

    #[test]
    fn segments_tile_the_buffer() {
        for (len, n) in [(10, 3), (7, 7), (2, 3), (1000, 4)] {
            let mut covered = 0;
            for i in 0..n {
                let (a, b) = segment(len, n, i);
                assert_eq!(a, covered);
                covered = b;
            }
            assert_eq!(covered, len);
        }
    }
}
