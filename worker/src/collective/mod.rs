//! The all-reduce of the fused fp32 gradient buffer over worker-to-worker gRPC streams: a
//! group's schedule (`schedule.rs`: the ring, or recursive halving-doubling) run over one
//! long-lived `Collective.Push` stream per peer. Transfers go in chunks so that full
//! fine-tuning's hundreds of megabytes never sit in one message.

pub mod schedule;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use peftrain_net::AuthChannel;
use peftrain_proto::v1::collective_client::CollectiveClient;
use peftrain_proto::v1::GradChunk;
use prost::Message;
use tokio::sync::{mpsc, Mutex, RwLock};

pub use peftrain_spec::AllReduce as Algorithm;
use schedule::{Op, Round};

/// gRPC's length-prefixed message framing: 1 flag byte + 4 length bytes.
pub const GRPC_FRAME_BYTES: u64 = 5;

#[derive(Debug, thiserror::Error)]
pub enum CollectiveError {
    #[error("no gradient data from rank {from} within {secs:.0} s (step {step}, round {round})")]
    Timeout { from: u32, step: u64, round: u32, secs: f64 },
    #[error("the streams from the group ended mid all-reduce (step {step})")]
    Closed { step: u64 },
    #[error("gradient chunk from rank {from} rejected: {why}")]
    BadChunk { from: u32, why: String },
    #[error("sending to rank {to} failed: {why}")]
    Send { to: u32, why: String },
    #[error("abandoned: the group moved on to generation {0}")]
    Abandoned(u64),
    #[error("bad group: {0}")]
    BadGroup(String),
}

/// This worker's place in a group, as the coordinator announces it.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub rank: u32,
    pub world: u32,
    pub generation: u64,
    /// Every member's address, by rank.
    pub peers: Vec<String>,
    /// The group's all-reduce, as the coordinator chose it (never `Auto`).
    pub algorithm: Algorithm,
}

/// Where chunks pushed by peers wait until the all-reduce consumes them.
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
/// group. `Exchange` (gRPC streams between workers) and `Alone` (the group of one) implement
/// it; an NCCL one would reduce `Gradient::Device` in place over a communicator built at Setup
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

/// Traffic of one all-reduce, and where its time went.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReduceStats {
    pub bytes_sent: u64,
    /// Entry to exit.
    pub millis: f64,
    /// Of that, waiting with nothing to do for the first data of a round (a slower peer, the
    /// wire's latency); the rest is serialization, sends and the sums.
    pub wait_millis: f64,
}

/// A lazily connected client to the peer at `addr`, the token and TLS of `security` on every
/// call.
pub fn connect(security: &peftrain_net::Security, addr: &str, timeout: Duration) -> Result<CollectiveClient<AuthChannel>, String> {
    let ch = security.endpoint(addr, timeout).map_err(|e| e.to_string())?.connect_lazy();
    Ok(CollectiveClient::with_interceptor(ch, security.client_auth()).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20))
}

pub fn to_le_bytes(v: &[f32]) -> Bytes {
    Bytes::from(peftrain_net::wire::f32_to_le_bytes(v))
}

/// The collective side of a worker: its group, the chunks peers pushed, and the generation
/// that aborts a running all-reduce. Training (`Engine`) and `peftrain-worker allreduce-bench`
/// share it, so the bench measures the code path a step takes.
pub struct Comm {
    pub group: RwLock<Option<Exchange>>,
    pub inbox: Inbox,
    /// The newest group generation announced; moving it aborts a running all-reduce.
    pub abort: tokio::sync::watch::Sender<u64>,
    /// Token and TLS for calls to peers.
    pub security: peftrain_net::Security,
    pub timeout: Duration,
    /// Elements per message.
    pub chunk_elems: usize,
    /// Length of the buffer the group all-reduces (chunks are checked against it).
    len: AtomicU64,
    /// Set when the worker's server stops: the peers' long-lived push streams are ended from
    /// this side, or the server's graceful shutdown would wait for them forever.
    closed: tokio::sync::watch::Sender<bool>,
}

impl Comm {
    pub fn new(security: peftrain_net::Security, timeout: Duration, len: u64) -> Comm {
        Comm {
            group: RwLock::new(None),
            inbox: Inbox::default(),
            abort: tokio::sync::watch::channel(0).0,
            security,
            timeout,
            chunk_elems: peftrain_spec::state::CHUNK_ELEMS,
            len: AtomicU64::new(len),
            closed: tokio::sync::watch::channel(false).0,
        }
    }

    /// Ends every incoming push stream and drops the group (closing ours to the peers).
    pub fn close(&self) {
        self.closed.send_replace(true);
        if let Ok(mut g) = self.group.try_write() {
            *g = None;
        }
    }

    /// Resolves once `close` was called.
    pub async fn closing(&self) {
        let mut rx = self.closed.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    pub fn buffer_len(&self) -> u64 {
        self.len.load(Ordering::Relaxed)
    }

    /// The bench's buffers change size between measurements; training's never does.
    pub fn set_buffer_len(&self, len: u64) {
        self.len.store(len, Ordering::Relaxed);
    }

    /// The newest generation announced.
    pub fn generation(&self) -> u64 {
        *self.abort.borrow()
    }

    /// Abandons a step of the old group still waiting on a lost peer, then takes the new one:
    /// its schedule, and a lazily connected client per peer it names.
    pub async fn setup(&self, group: &Group) -> Result<(), CollectiveError> {
        self.abort.send_replace(group.generation);
        let (rank, world) = (group.rank as usize, group.world as usize);
        if world == 0 || rank >= world || group.peers.len() != world {
            return Err(CollectiveError::BadGroup(format!("rank {rank} of {world} with {} peers", group.peers.len())));
        }
        if group.algorithm == Algorithm::Auto {
            return Err(CollectiveError::BadGroup("the coordinator must choose the all-reduce".into()));
        }
        let plan = schedule::schedule(group.algorithm, rank, world, self.buffer_len() as usize);
        let mut clients = HashMap::new();
        for t in plan.iter().flat_map(|r| &r.send) {
            if let std::collections::hash_map::Entry::Vacant(e) = clients.entry(t.peer) {
                let addr = &group.peers[t.peer as usize];
                e.insert(connect(&self.security, addr, self.timeout).map_err(|why| CollectiveError::BadGroup(format!("{addr}: {why}")))?);
            }
        }
        *self.group.write().await = Some(Exchange {
            rank: group.rank,
            world: group.world,
            generation: group.generation,
            algorithm: group.algorithm,
            len: self.buffer_len() as usize,
            plan,
            clients,
            streams: Mutex::new(HashMap::new()),
            chunk_elems: self.chunk_elems,
            timeout: self.timeout,
        });
        Ok(())
    }
}

/// A push stream to one peer, open for the whole generation: a step's chunks need no new
/// HTTP/2 stream and no acknowledgement round trip (the peer's own receive is the only
/// confirmation an all-reduce needs; a broken stream fails the next send).
struct Stream {
    tx: mpsc::Sender<GradChunk>,
    call: tokio::task::JoinHandle<Result<(), tonic::Status>>,
}

/// What a received chunk is to the running all-reduce.
enum Fate {
    Expected,
    NextStep,
    Drop,
}

/// This worker's place in a group and its schedule.
pub struct Exchange {
    pub rank: u32,
    pub world: u32,
    pub generation: u64,
    pub algorithm: Algorithm,
    /// The buffer length the schedule was cut for.
    len: usize,
    plan: Vec<Round>,
    clients: HashMap<u32, CollectiveClient<AuthChannel>>,
    streams: Mutex<HashMap<u32, Stream>>,
    chunk_elems: usize,
    timeout: Duration,
}

#[tonic::async_trait]
impl AllReduce for Exchange {
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
                why: "the group reduces a host buffer; the gradient was left in place".into(),
            }),
        }
    }
}

impl Exchange {
    async fn send(&self, to: u32, chunk: GradChunk) -> Result<(), CollectiveError> {
        let mut streams = self.streams.lock().await;
        let s = match streams.entry(to) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let mut client =
                    self.clients.get(&to).cloned().ok_or_else(|| CollectiveError::Send { to, why: "not a peer of this schedule".into() })?;
                let (tx, rx) = mpsc::channel::<GradChunk>(64);
                // The call runs in its own task so that the transport drains our sends while
                // we wait on peers.
                let call = tokio::spawn(async move { client.push(tokio_stream::wrappers::ReceiverStream::new(rx)).await.map(|_| ()) });
                e.insert(Stream { tx, call })
            }
        };
        if s.tx.send(chunk).await.is_ok() {
            return Ok(());
        }
        // The call ended: say why.
        let why = match tokio::time::timeout(Duration::from_secs(1), &mut s.call).await {
            Ok(Ok(Err(status))) => status.message().to_string(),
            Ok(Err(join)) => join.to_string(),
            _ => "stream closed".to_string(),
        };
        streams.remove(&to);
        Err(CollectiveError::Send { to, why })
    }

    /// What to do with `c` while reducing `step`: a chunk this schedule expects (now or in a
    /// later round), one of the next step (a peer that finished this one already started the
    /// next: back-to-back all-reduces without a coordinator between them), or traffic of an
    /// earlier step or group to drop.
    fn fate(&self, c: &GradChunk, step: u64) -> Result<Fate, CollectiveError> {
        if c.generation != self.generation || c.step < step {
            return Ok(Fate::Drop);
        }
        if c.step == step + 1 {
            return Ok(Fate::NextStep);
        }
        // The Collective service let in only whole fp32 values that fit this buffer
        // (`service::check_chunk`); what is left to check is the schedule's.
        let bad = |why: String| CollectiveError::BadChunk { from: c.from_rank, why };
        if c.step != step {
            return Err(bad(format!("step {} while this group reduces step {step}", c.step)));
        }
        let Some(round) = self.plan.get(c.round as usize) else {
            return Err(bad(format!("round {} of a {}-round schedule", c.round, self.plan.len())));
        };
        let (start, end) = (c.offset as usize, c.offset as usize + c.data.len() / 4);
        if !round.recv.iter().any(|(t, _)| t.peer == c.from_rank && t.range.start <= start && end <= t.range.end) {
            return Err(bad(format!("round {} from rank {}: elements {start}..{end} are not expected", c.round, c.from_rank)));
        }
        Ok(Fate::Expected)
    }

    /// Runs this rank's schedule on `buf`; afterwards every member holds the same bits.
    /// `abort` carries the newest generation the coordinator announced: when it moves past
    /// ours, the step was abandoned and waiting on peers stops at once.
    pub async fn reduce(
        &self,
        inbox: &Inbox,
        buf: &mut [f32],
        step: u64,
        abort: &mut tokio::sync::watch::Receiver<u64>,
    ) -> Result<ReduceStats, CollectiveError> {
        let started = Instant::now();
        let total = buf.len() as u64;
        if self.world <= 1 {
            return Ok(ReduceStats::default());
        }
        // The schedule's ranges were cut for the buffer the group was set up with.
        if buf.len() != self.len {
            return Err(CollectiveError::BadGroup(format!("a buffer of {} values for a group set up for {}", buf.len(), self.len)));
        }
        let inbox_handle = inbox;
        let mut inbox = inbox.rx.lock().await;
        // Chunks of later rounds that came early (another peer's round ran ahead of ours).
        let mut early: HashMap<u32, Vec<GradChunk>> = HashMap::new();
        let mut stats = ReduceStats::default();
        let mut next_step = Vec::new();
        for (k, round) in self.plan.iter().enumerate() {
            for t in &round.send {
                let mut off = t.range.start;
                while off < t.range.end {
                    let end = (off + self.chunk_elems).min(t.range.end);
                    let chunk = GradChunk {
                        step,
                        generation: self.generation,
                        from_rank: self.rank,
                        round: k as u32,
                        offset: off as u64,
                        data: to_le_bytes(&buf[off..end]),
                        total,
                    };
                    stats.bytes_sent += chunk.encoded_len() as u64 + GRPC_FRAME_BYTES;
                    self.send(t.peer, chunk).await?;
                    off = end;
                }
            }
            let want: usize = round.recv.iter().map(|(t, _)| t.range.len()).sum();
            let mut got = 0usize;
            let mut pending = early.remove(&(k as u32)).unwrap_or_default();
            while got < want {
                let msg = match pending.pop() {
                    Some(m) => m,
                    None => {
                        if *abort.borrow() > self.generation {
                            return Err(CollectiveError::Abandoned(*abort.borrow()));
                        }
                        let waited = Instant::now();
                        let m = tokio::select! {
                            r = tokio::time::timeout(self.timeout, inbox.recv()) => r,
                            _ = abort.changed() => return Err(CollectiveError::Abandoned(*abort.borrow())),
                        };
                        if got == 0 {
                            stats.wait_millis += waited.elapsed().as_secs_f64() * 1000.0;
                        }
                        let from = round.recv.first().map_or(0, |(t, _)| t.peer);
                        match m {
                            Err(_) => return Err(CollectiveError::Timeout { from, step, round: k as u32, secs: self.timeout.as_secs_f64() }),
                            Ok(None) => return Err(CollectiveError::Closed { step }),
                            Ok(Some(m)) => {
                                match self.fate(&m, step)? {
                                    Fate::Drop => continue,
                                    Fate::NextStep => {
                                        next_step.push(m);
                                        continue;
                                    }
                                    Fate::Expected => {}
                                }
                                if m.round as usize != k {
                                    if (m.round as usize) < k {
                                        return Err(CollectiveError::BadChunk {
                                            from: m.from_rank,
                                            why: format!("round {} arrived after round {k} began", m.round),
                                        });
                                    }
                                    early.entry(m.round).or_default().push(m);
                                    continue;
                                }
                                m
                            }
                        }
                    }
                };
                let start = msg.offset as usize;
                let len = msg.data.len() / 4;
                let op = round.recv.iter().find(|(t, _)| t.peer == msg.from_rank).map_or(Op::Add, |(_, op)| *op);
                let dst = &mut buf[start..start + len];
                match op {
                    Op::Add => peftrain_net::wire::add_le_bytes(dst, &msg.data),
                    Op::Copy => peftrain_net::wire::copy_le_bytes(dst, &msg.data),
                }
                got += len;
            }
        }
        // The next step's early chunks wait in the inbox for it (checked again then).
        drop(inbox);
        for m in next_step {
            inbox_handle.deliver(m);
        }
        stats.millis = started.elapsed().as_secs_f64() * 1000.0;
        Ok(stats)
    }
}
