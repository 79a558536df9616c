//! The coordinator's handle on its workers: ranks and ring setup, sharding each global batch by
//! token count and fanning it out, the two-phase step (reduce, then commit), and the group's
//! changes: lost workers are dropped and their step redone by the survivors; replacements join
//! at a step boundary with the state of a live peer.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pb::worker_client::WorkerClient;
use peftrain_net::{AuthChannel, Security};
use peftrain_proto::v1 as pb;
use peftrain_spec::torch_rng::{Mt19937, StreamState};
use peftrain_spec::{AllReduce, Padding};
use tokio::task::JoinSet;
use tonic::Code;

use crate::checkpoint::ReplicaState;
use crate::data::Label;
use crate::registry::{Member, Registry};
use crate::sampler::{shard, ShardCost};
use crate::tokenize::Encoded;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("worker {worker} ({address}): {message} [{code:?}]")]
    Rpc { worker: String, address: String, code: Code, message: String },
    #[error("cannot reach worker {worker} at {address}: {why}")]
    Connect { worker: String, address: String, why: String },
    #[error("{have} worker(s) left, fewer than --min-workers {min}: the run cannot go on (lost: {lost})")]
    TooFewWorkers { have: usize, min: usize, lost: String },
    #[error("workers disagree: {0}")]
    Inconsistent(String),
    /// The group could not be formed (registration timed out, a local worker died, a signal).
    #[error("{0}")]
    Setup(String),
}

/// How often in a row a step's all-reduce may be interrupted with every worker alive before
/// the run gives up.
const MAX_INTERRUPTED: u32 = 3;

/// One worker as the coordinator sees it.
#[derive(Clone)]
pub struct Conn {
    pub member: Member,
    pub client: WorkerClient<AuthChannel>,
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
    /// The longest all-reduce over workers: the exchange and the wait for the slowest shard.
    pub allreduce_ms: f64,
    /// The shortest: the all-reduce of the worker that arrived last, the exchange alone.
    pub exchange_ms: f64,
    pub compute_ms: f64,
    /// The reduced gradient held NaN/Inf: the update was skipped on every worker.
    pub skipped: bool,
    /// How many times this step was redone after losing workers.
    pub redone: u32,
    /// The largest peak resident memory among the workers.
    pub peak_rss_bytes: u64,
    /// Loss sums of each micro-batch, over all workers.
    pub micro_loss_sums: Vec<f64>,
    /// Each rank's dropout stream after the step, by rank.
    pub dropout_streams: Vec<StreamState>,
}

/// Aggregate of an evaluation batch.
#[derive(Debug, Clone, Default)]
pub struct EvalOutcome {
    pub loss_sum: f64,
    pub examples: u64,
    /// Row-major [examples, num_labels] in the batch's order, when asked for.
    pub logits: Vec<f32>,
    pub num_labels: usize,
}

/// How the group reacts to failures.
#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    /// Deadline of every RPC.
    pub rpc_timeout: Duration,
    /// A worker silent (no heartbeat) this long is lost.
    pub worker_timeout: Duration,
    /// Fewest workers the run may carry on with.
    pub min_workers: usize,
}

pub struct Cluster {
    pub registry: Arc<Registry>,
    pub conns: Vec<Conn>,
    pub generation: u64,
    pub tolerance: Tolerance,
    /// Send segment ids (BERT) or not (RoBERTa's type vocabulary has one entry).
    pub send_type_ids: bool,
    pub security: Security,
    /// The run's `--padding`: with the members' devices, how a shard's cost is counted.
    pub padding: Padding,
    /// The run's `--all-reduce`, resolved for each group as it forms.
    pub all_reduce: AllReduce,
    /// What the current group runs (printed when it changes).
    pub algorithm: Option<AllReduce>,
}

/// What one try of a retryable phase came to.
enum Attempt<T> {
    Done(T),
    /// These workers are gone: drop them and try again.
    Lost(BTreeSet<String>),
    /// An all-reduce was abandoned with every worker alive: set the group up again and retry.
    Interrupted,
}

/// What a fan-out brought back.
struct Gathered<T> {
    ok: Vec<T>,
    lost: BTreeSet<String>,
    peer_trouble: bool,
}

/// A call's failure, sorted by what it says about the callee.
enum Failure {
    /// The worker is gone (connection refused or reset, no answer by the deadline).
    Lost(String),
    /// The worker answered that a peer failed it (an aborted all-reduce).
    PeerTrouble,
    /// Anything else ends the run.
    Fatal(ClusterError),
}

/// Every worker that committed took the same update: the same count of AdamW steps, all
/// applied or all skipped. Replicas that disagree have diverged, and the run stops rather than
/// average gradients of different models.
pub fn check_commits(replies: &[(String, pb::CommitReply)]) -> Result<(), ClusterError> {
    let Some((first, want)) = replies.first() else { return Ok(()) };
    match replies.iter().find(|(_, r)| r.optimizer_step != want.optimizer_step || r.applied != want.applied) {
        None => Ok(()),
        Some((id, r)) => Err(ClusterError::Inconsistent(format!(
            "after the commit worker {first} is at optimizer step {} ({}), worker {id} at {} ({})",
            want.optimizer_step,
            if want.applied { "applied" } else { "skipped" },
            r.optimizer_step,
            if r.applied { "applied" } else { "skipped" },
        ))),
    }
}

/// Calls every worker of `calls` at once (`call` makes one RPC from a client and a request):
/// the one fan-out every phase uses. Each result carries its call's index; a failure is
/// classified by what it says about the callee.
fn fan_out<Q, R, F, Fut>(calls: Vec<(Conn, tonic::Request<Q>)>, call: F) -> JoinSet<Result<(usize, R), Failure>>
where
    Q: Send + 'static,
    R: Send + 'static,
    F: Fn(WorkerClient<AuthChannel>, tonic::Request<Q>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<R, tonic::Status>> + Send,
{
    let mut set = JoinSet::new();
    for (k, (c, req)) in calls.into_iter().enumerate() {
        let call = call.clone();
        set.spawn(async move { call(c.client.clone(), req).await.map(|r| (k, r)).map_err(|s| classify(&c, s)) });
    }
    set
}

/// Gives every rank below `world` a dropout stream: one it has kept, else a fresh one from
/// `seed`.
pub fn fill_streams(streams: &mut Vec<StreamState>, world: usize, seed: u64) {
    while streams.len() < world {
        streams.push(Mt19937::new(seed).to_state());
    }
}

/// What the Trainer draws from each rank's stream between steps: its DataLoader's base seed,
/// one `random_()` of an int64 (two outputs), each time an epoch's or an evaluation's iterator
/// is created.
pub fn advance_streams(streams: &mut [StreamState], loaders: u64) -> Result<(), String> {
    for s in streams.iter_mut() {
        let mut g = Mt19937::from_state(s)?;
        g.skip(2 * loaders);
        *s = g.to_state();
    }
    Ok(())
}

fn rpc_error(c: &Conn, s: &tonic::Status) -> ClusterError {
    ClusterError::Rpc { worker: c.member.worker_id.clone(), address: c.member.address.clone(), code: s.code(), message: s.message().to_string() }
}

fn classify(c: &Conn, s: tonic::Status) -> Failure {
    match s.code() {
        Code::Aborted => Failure::PeerTrouble,
        Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::Unauthenticated
        | Code::PermissionDenied
        | Code::ResourceExhausted
        | Code::OutOfRange => Failure::Fatal(rpc_error(c, &s)),
        _ => {
            tracing::warn!(worker = %c.member.worker_id, "worker lost: {} [{:?}]", s.message(), s.code());
            Failure::Lost(c.member.worker_id.clone())
        }
    }
}

/// Tells workers to exit; errors are ignored (a worker may already be gone).
async fn tell_to_exit(conns: &[Conn]) {
    for c in conns {
        let mut client = c.client.clone();
        let mut req = tonic::Request::new(pb::ShutdownRequest {});
        req.set_timeout(Duration::from_secs(5));
        let _ = client.shutdown(req).await;
    }
}

async fn connect(m: &Member, security: &Security) -> Result<Conn, ClusterError> {
    let err = |why: String| ClusterError::Connect { worker: m.worker_id.clone(), address: m.address.clone(), why };
    let ch = security
        .endpoint(&m.address, Duration::from_secs(10))
        .map_err(|e| err(e.to_string()))?
        .connect()
        .await
        .map_err(|e| err(format!("{e} ({})", std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default())))?;
    let client = WorkerClient::with_interceptor(ch, security.client_auth()).max_decoding_message_size(256 << 20).max_encoding_message_size(16 << 20);
    Ok(Conn { member: m.clone(), client })
}

impl Cluster {
    /// Connects to the registered workers and sets the group up; ranks follow worker names.
    pub async fn start(
        registry: Arc<Registry>,
        tolerance: Tolerance,
        send_type_ids: bool,
        security: Security,
        padding: Padding,
        all_reduce: AllReduce,
    ) -> Result<Cluster, ClusterError> {
        let mut members = registry.members();
        if members.is_empty() {
            return Err(ClusterError::Setup("no registered worker is left to start with".into()));
        }
        members.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        let mut conns = Vec::new();
        for m in &members {
            conns.push(connect(m, &security).await?);
        }
        // Generations start from the clock, so a restarted coordinator's never repeat an earlier
        // one's (workers drop traffic of other generations).
        let generation = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(1);
        let mut c = Cluster { registry, conns, generation, tolerance, send_type_ids, security, padding, all_reduce, algorithm: None };
        c.setup().await?;
        Ok(c)
    }

    pub fn world(&self) -> usize {
        self.conns.len()
    }

    /// The group's shards are as costly as its slowest layout's: padded cost once any member
    /// computes padded (a group mixing devices is balanced for the padded one).
    fn shard_cost(&self) -> ShardCost {
        let free = self.conns.iter().all(|c| self.padding.is_free_on(c.member.device == "cpu"));
        if free {
            ShardCost::RealTokens
        } else {
            ShardCost::Padded
        }
    }

    /// One request per worker, in rank order, each with the RPC deadline.
    fn each<T>(&self, make: impl Fn(usize, &Conn) -> T) -> Vec<(Conn, tonic::Request<T>)> {
        self.conns.iter().enumerate().map(|(k, c)| (c.clone(), self.request(make(k, c)))).collect()
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(self.tolerance.rpc_timeout);
        r
    }

    /// Sends every worker its rank and the ring under a new generation, so traffic of an
    /// abandoned step or an older group is recognised and dropped.
    async fn setup(&mut self) -> Result<(), ClusterError> {
        loop {
            self.generation += 1;
            let peers: Vec<String> = self.conns.iter().map(|c| c.member.address.clone()).collect();
            let bytes = 4 * self.conns.first().map_or(0, |c| c.member.fingerprint.trainable_params);
            let algorithm = self.all_reduce.resolve(peers.len(), bytes);
            if peers.len() > 1 && self.algorithm != Some(algorithm) {
                let (rounds, _) = peftrain_spec::collective::critical_path(algorithm, peers.len(), bytes);
                tracing::info!(
                    "all-reduce: {algorithm} ({} workers, {bytes} bytes of gradients, {rounds} rounds; --all-reduce {})",
                    peers.len(),
                    self.all_reduce
                );
            }
            self.algorithm = Some(algorithm);
            let wire = match algorithm {
                AllReduce::HalvingDoubling => pb::AllReduceAlgorithm::HalvingDoubling,
                AllReduce::Ring | AllReduce::Auto => pb::AllReduceAlgorithm::Ring,
            };
            let calls = self.each(|rank, _| pb::SetupRequest {
                run_id: self.registry.run_id.clone(),
                rank: rank as u32,
                world_size: peers.len() as u32,
                peers: peers.clone(),
                generation: self.generation,
                all_reduce: wire as i32,
            });
            let set = fan_out(calls, |mut w, req| async move { w.setup(req).await.map(|_| ()) });
            let g = self.gather(set).await?;
            if g.lost.is_empty() {
                return Ok(());
            }
            self.remove(&g.lost)?;
        }
    }

    /// Waits for a fan-out, watching heartbeats meanwhile: a worker whose call fails as a lost
    /// worker's does, or whose heartbeats stop (a frozen process keeps its connection open and
    /// never answers), is reported lost, and the calls still waiting are abandoned.
    async fn gather<T: Send + 'static>(&self, set: JoinSet<Result<T, Failure>>) -> Result<Gathered<T>, ClusterError> {
        let g = self.gather_any(set).await?;
        if g.peer_trouble && g.lost.is_empty() {
            return Err(ClusterError::Inconsistent("a worker answered that a peer failed it and no worker is missing".into()));
        }
        Ok(g)
    }

    /// `gather`, also returning (instead of failing on) peer trouble with every worker alive:
    /// for the step's phase one, which can be redone.
    async fn gather_any<T: Send + 'static>(&self, mut set: JoinSet<Result<T, Failure>>) -> Result<Gathered<T>, ClusterError> {
        let mut g = Gathered { ok: Vec::new(), lost: BTreeSet::new(), peer_trouble: false };
        let mut watchdog = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                r = set.join_next() => match r {
                    None => break,
                    Some(r) => match r {
                        Err(e) if e.is_cancelled() => {}
                        Err(e) => return Err(ClusterError::Inconsistent(e.to_string())),
                        Ok(Ok(v)) => g.ok.push(v),
                        Ok(Err(Failure::Lost(id))) => { g.lost.insert(id); }
                        Ok(Err(Failure::PeerTrouble)) => g.peer_trouble = true,
                        Ok(Err(Failure::Fatal(e))) => return Err(e),
                    },
                },
                _ = watchdog.tick() => {
                    let silent = self.silent();
                    for id in &silent {
                        tracing::warn!(worker = %id, "worker lost: no heartbeat for {:.0} s", self.tolerance.worker_timeout.as_secs_f64());
                    }
                    g.lost.extend(silent);
                    if !g.lost.is_empty() {
                        // Survivors may be waiting on the lost worker: stop waiting.
                        set.abort_all();
                        break;
                    }
                }
            }
        }
        if g.peer_trouble && g.lost.is_empty() {
            // A peer failed someone's all-reduce but its own call has not failed (yet): the
            // heartbeats decide who is gone.
            let deadline = Instant::now() + self.tolerance.worker_timeout + Duration::from_secs(2);
            while g.lost.is_empty() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(250)).await;
                g.lost = self.silent();
            }
            // Every worker alive: the ring was only interrupted (the coordinator paused between
            // sending two shards, a peer starved past the ring timeout). `peer_trouble` with no
            // one lost tells the caller to redo the step on the same group.
        }
        Ok(g)
    }

    /// Drops lost workers from the group (and the registry, so their slots reopen).
    fn remove(&mut self, lost: &BTreeSet<String>) -> Result<(), ClusterError> {
        let names = self.drop_members(lost)?;
        tracing::warn!("lost {names}; carrying on with {} worker(s)", self.conns.len());
        Ok(())
    }

    /// Takes workers out of the group and the registry; fails below --min-workers.
    fn drop_members(&mut self, ids: &BTreeSet<String>) -> Result<String, ClusterError> {
        for c in self.conns.iter().filter(|c| ids.contains(&c.member.worker_id)) {
            self.registry.remove_at(&c.member.worker_id, &c.member.address);
        }
        self.conns.retain(|c| !ids.contains(&c.member.worker_id));
        let names = ids.iter().cloned().collect::<Vec<_>>().join(", ");
        if self.conns.len() < self.tolerance.min_workers.max(1) {
            return Err(ClusterError::TooFewWorkers { have: self.conns.len(), min: self.tolerance.min_workers.max(1), lost: names });
        }
        Ok(names)
    }

    /// At a step boundary: workers that asked to leave (SIGTERM, a preemption) go now, told to
    /// exit, and the others re-form the ring. Between two steps nothing is in flight, so no
    /// step is redone and nobody waits for a heartbeat timeout.
    pub async fn release_leavers(&mut self) -> Result<usize, ClusterError> {
        // A leaver not in the group yet (registered, not admitted) is forgotten, not admitted.
        for m in self.registry.members().into_iter().filter(|m| m.leaving && !self.conns.iter().any(|c| c.member.worker_id == m.worker_id)) {
            self.registry.remove_at(&m.worker_id, &m.address);
        }
        let leaving: BTreeSet<String> =
            self.registry.leavers().into_iter().filter(|id| self.conns.iter().any(|c| &c.member.worker_id == id)).collect();
        // Below --min-workers the trainer stops the run at the next boundary with a checkpoint
        // (`leaving_below_minimum`); until then the leavers stay and hold the state.
        if leaving.is_empty() || self.leaving_below_minimum() {
            return Ok(0);
        }
        let going: Vec<Conn> = self.conns.iter().filter(|c| leaving.contains(&c.member.worker_id)).cloned().collect();
        let names = self.drop_members(&leaving)?;
        tell_to_exit(&going).await;
        tracing::info!("{names} left (asked to stop); carrying on with {} worker(s)", self.conns.len());
        self.setup().await?;
        Ok(leaving.len())
    }

    /// Workers whose heartbeats stopped for longer than the worker timeout.
    fn silent(&self) -> BTreeSet<String> {
        let ids: BTreeSet<&String> = self.conns.iter().map(|c| &c.member.worker_id).collect();
        self.registry.silent(self.tolerance.worker_timeout).into_iter().filter(|id| ids.contains(id)).collect()
    }

    /// Whether letting the workers that asked to leave go would leave fewer than
    /// --min-workers: then the run stops at this boundary with a checkpoint, taken while the
    /// leavers still hold the state, rather than failing and losing the steps since the last.
    pub fn leaving_below_minimum(&self) -> bool {
        let leavers = self.registry.leavers();
        let going = self.conns.iter().filter(|c| leavers.contains(&c.member.worker_id)).count();
        going > 0 && self.conns.len() - going < self.tolerance.min_workers.max(1)
    }

    /// At a step boundary: brings registered replacements into the group, each receiving the
    /// trainable weights and optimizer state from a live peer.
    pub async fn admit_joiners(&mut self) -> Result<usize, ClusterError> {
        let known: BTreeSet<String> = self.conns.iter().map(|c| c.member.worker_id.clone()).collect();
        let joiners: Vec<Member> = self.registry.members().into_iter().filter(|m| !known.contains(&m.worker_id)).collect();
        if joiners.is_empty() {
            return Ok(0);
        }
        let mut admitted = Vec::new();
        for m in joiners {
            match connect(&m, &self.security).await {
                Ok(c) => admitted.push(c),
                Err(e) => {
                    tracing::warn!("{e}");
                    self.registry.remove(&m.worker_id);
                }
            }
        }
        let peer = self.conns.first().map(|c| c.member.address.clone());
        let ids: Vec<String> = admitted.iter().map(|c| c.member.worker_id.clone()).collect();
        self.conns.extend(admitted);
        self.conns.sort_by(|a, b| a.member.worker_id.cmp(&b.member.worker_id));
        self.setup().await?;
        if let Some(peer) = peer {
            for id in &ids {
                let Some(c) = self.conns.iter().find(|c| &c.member.worker_id == id).cloned() else { continue };
                let mut client = c.client.clone();
                let req = self.request(pb::SyncFromRequest { peer: peer.clone(), generation: self.generation });
                if let Err(s) = client.sync_from(req).await {
                    tracing::warn!(worker = %id, "joining failed: {}", s.message());
                    self.remove(&BTreeSet::from([id.clone()]))?;
                    self.setup().await?;
                }
            }
        }
        tracing::info!("{} joined; the group has {} worker(s)", ids.join(", "), self.conns.len());
        Ok(ids.len())
    }

    fn batch(&self, examples: &[&Encoded], positions: &[usize]) -> pb::Batch {
        let mut b = pb::Batch::default();
        for &p in positions {
            let e = examples[p];
            b.input_ids.extend_from_slice(&e.ids);
            if self.send_type_ids {
                b.token_type_ids.extend_from_slice(&e.type_ids);
            }
            b.lengths.push(e.ids.len() as u32);
            match e.label {
                Some(Label::Class(c)) => b.labels.push(c as i64),
                Some(Label::Score(s)) => b.scores.push(s),
                None => {}
            }
        }
        b
    }

    /// One optimizer step on a global batch of micro-batches (each one's loss sum divided by
    /// its divisor; their gradients add up before the one all-reduce), whatever happens to
    /// workers meanwhile: phase one (forward/backward, all-reduce) on every worker, then phase
    /// two (commit). Workers lost in phase one are dropped and the same batch is redone,
    /// re-sharded among the survivors.
    ///
    /// `streams` holds each rank's dropout stream as the last committed step left it (a rank
    /// without one starts from `seed`, as every torchrun rank's generator does after
    /// `set_seed`); a redone step draws from the same states, and the committed step's replace
    /// them.
    pub async fn step(
        &mut self,
        step: u64,
        micro: &[&[&Encoded]],
        divisors: &[f64],
        lr: f64,
        streams: &mut Vec<StreamState>,
        seed: u64,
    ) -> Result<StepOutcome, ClusterError> {
        let mut redone = 0u32;
        let mut interrupted = 0u32;
        loop {
            fill_streams(streams, self.world(), seed);
            match self.try_step(step, micro, divisors, lr, streams).await? {
                Attempt::Done(mut out) => {
                    self.commit(step).await?;
                    for (rank, state) in out.dropout_streams.iter().enumerate() {
                        streams[rank] = state.clone();
                    }
                    out.redone = redone;
                    return Ok(out);
                }
                Attempt::Interrupted => {
                    // An all-reduce abandoned with every worker alive: same group, new generation.
                    interrupted += 1;
                    if interrupted > MAX_INTERRUPTED {
                        return Err(ClusterError::Inconsistent(format!(
                            "the all-reduce of step {} failed {MAX_INTERRUPTED} times in a row with every worker alive",
                            step + 1
                        )));
                    }
                    self.setup().await?;
                    redone += 1;
                    tracing::warn!(step = step + 1, "an all-reduce was interrupted with every worker alive: redoing the step");
                }
                Attempt::Lost(lost) => {
                    self.remove(&lost)?;
                    self.setup().await?;
                    redone += 1;
                    tracing::warn!(step = step + 1, "redoing the step on {} worker(s)", self.world());
                }
            }
        }
    }

    /// Phase one: Lost or Interrupted can be redone, nobody having applied anything.
    async fn try_step(
        &self,
        step: u64,
        micro: &[&[&Encoded]],
        divisors: &[f64],
        lr: f64,
        streams: &[StreamState],
    ) -> Result<Attempt<StepOutcome>, ClusterError> {
        let world = self.world();
        let total: usize = micro.iter().map(|m| m.len()).sum();
        // Each micro-batch sharded by cost; a worker's shard is its part of each, in order.
        let mut parts: Vec<Vec<&Encoded>> = vec![Vec::new(); world];
        let mut counts: Vec<Vec<u32>> = vec![Vec::new(); world];
        for m in micro {
            let lengths: Vec<usize> = m.iter().map(|e| e.ids.len()).collect();
            for (rank, positions) in shard(&lengths, world, self.shard_cost()).into_iter().enumerate() {
                counts[rank].push(positions.len() as u32);
                parts[rank].extend(positions.iter().map(|&p| m[p]));
            }
        }
        let calls = self.each(|rank, _| pb::StepRequest {
            step,
            generation: self.generation,
            shard: Some(self.batch(&parts[rank], &(0..parts[rank].len()).collect::<Vec<_>>())),
            global_batch_size: total as u32,
            micro_batch_examples: counts[rank].clone(),
            micro_batch_divisors: divisors.to_vec(),
            learning_rate: lr,
            dropout_stream: streams.get(rank).map(StreamState::to_proto),
        });
        let set = fan_out(calls, |mut w, req| async move { w.step(req).await.map(|r| r.into_inner()) });
        let g = self.gather_any(set).await?;
        if !g.lost.is_empty() {
            return Ok(Attempt::Lost(g.lost));
        }
        if g.peer_trouble {
            return Ok(Attempt::Interrupted);
        }
        // The shortest all-reduce: the one of the worker that arrived last.
        let exchange_ms = g.ok.iter().map(|(_, r)| r.allreduce_ms).reduce(f64::min).unwrap_or(0.0);
        let mut out = StepOutcome { micro_loss_sums: vec![0.0; micro.len()], exchange_ms, ..Default::default() };
        let mut states = vec![None; world];
        let mut norms = Vec::new();
        for (rank, reply) in g.ok {
            match reply.dropout_stream.as_ref().map(StreamState::generator_from_proto) {
                Some(Ok(g)) if rank < world => states[rank] = Some(g.to_state()),
                Some(Err(e)) => return Err(ClusterError::Inconsistent(format!("a worker answered {e}"))),
                _ => return Err(ClusterError::Inconsistent("a worker answered a step without its dropout stream".into())),
            }
            if reply.micro_loss_sums.len() != micro.len() {
                return Err(ClusterError::Inconsistent(format!(
                    "a worker answered {} micro-batch losses for {}",
                    reply.micro_loss_sums.len(),
                    micro.len()
                )));
            }
            for (acc, s) in out.micro_loss_sums.iter_mut().zip(&reply.micro_loss_sums) {
                *acc += s;
            }
            out.loss_sum += reply.loss_sum;
            out.examples += reply.examples;
            out.tokens += reply.tokens;
            out.allreduce_bytes = out.allreduce_bytes.max(reply.allreduce_bytes);
            out.allreduce_ms = out.allreduce_ms.max(reply.allreduce_ms);
            out.compute_ms = out.compute_ms.max(reply.compute_ms);
            out.skipped |= reply.nonfinite;
            out.peak_rss_bytes = out.peak_rss_bytes.max(reply.peak_rss_bytes);
            norms.push(reply.grad_norm);
        }
        // Every worker clipped the same reduced gradient: their norms agree bit for bit.
        out.grad_norm = norms.first().copied().unwrap_or(0.0);
        if norms.iter().any(|n| n.to_bits() != out.grad_norm.to_bits() && !(n.is_nan() && out.grad_norm.is_nan())) {
            return Err(ClusterError::Inconsistent(format!("replicas diverged: gradient norms {norms:?}")));
        }
        if out.examples as usize != total {
            return Err(ClusterError::Inconsistent(format!("workers trained on {} examples of a batch of {total}", out.examples)));
        }
        out.dropout_streams =
            states.into_iter().collect::<Option<Vec<_>>>().ok_or_else(|| ClusterError::Inconsistent("a rank answered no step".into()))?;
        Ok(Attempt::Done(out))
    }

    /// Phase two. Every worker holds the same reduced gradient; a worker lost now takes
    /// nothing with it (its shard is in the sum), so the survivors commit and carry on.
    async fn commit(&mut self, step: u64) -> Result<(), ClusterError> {
        let calls = self.each(|_, _| pb::CommitRequest { step, generation: self.generation });
        let set = fan_out(calls, |mut w, req| async move { w.commit(req).await.map(|r| r.into_inner()) });
        let g = self.gather(set).await?;
        let replies: Vec<(String, pb::CommitReply)> = g.ok.into_iter().map(|(k, r)| (self.conns[k].member.worker_id.clone(), r)).collect();
        check_commits(&replies)?;
        if !g.lost.is_empty() {
            self.remove(&g.lost)?;
            self.setup().await?;
        }
        Ok(())
    }

    /// Loss, accuracy and optionally logits of a batch, sharded like training; a batch whose
    /// workers were lost is evaluated again by the survivors.
    pub async fn evaluate(&mut self, examples: &[&Encoded], want_logits: bool) -> Result<EvalOutcome, ClusterError> {
        loop {
            match self.try_evaluate(examples, want_logits).await? {
                Attempt::Done(out) => return Ok(out),
                Attempt::Lost(lost) => {
                    self.remove(&lost)?;
                    self.setup().await?;
                }
                Attempt::Interrupted => self.setup().await?,
            }
        }
    }

    async fn try_evaluate(&self, examples: &[&Encoded], want_logits: bool) -> Result<Attempt<EvalOutcome>, ClusterError> {
        let lengths: Vec<usize> = examples.iter().map(|e| e.ids.len()).collect();
        let shards = shard(&lengths, self.world(), self.shard_cost());
        let calls = self.each(|k, _| pb::EvalRequest { shard: Some(self.batch(examples, &shards[k])), return_logits: want_logits });
        let set = fan_out(calls, |mut w, req| async move { w.evaluate(req).await.map(|r| r.into_inner()) });
        let g = self.gather(set).await?;
        if !g.lost.is_empty() {
            return Ok(Attempt::Lost(g.lost));
        }
        let mut out = EvalOutcome::default();
        let mut parts = Vec::new();
        for (k, reply) in g.ok {
            out.loss_sum += reply.loss_sum;
            out.examples += reply.examples as u64;
            out.num_labels = reply.num_labels as usize;
            parts.push((k, reply.logits));
        }
        if want_logits {
            let nl = out.num_labels;
            let mut logits = vec![0f32; examples.len() * nl];
            for (k, bytes) in parts {
                let vals = peftrain_net::wire::le_bytes_to_f32(&bytes);
                if vals.len() != shards[k].len() * nl {
                    return Err(ClusterError::Inconsistent(format!("{} logits for a shard of {}", vals.len(), shards[k].len())));
                }
                for (row, &p) in shards[k].iter().enumerate() {
                    logits[p * nl..(p + 1) * nl].copy_from_slice(&vals[row * nl..(row + 1) * nl]);
                }
            }
            out.logits = logits;
        }
        Ok(Attempt::Done(out))
    }

    /// The group's current state, from the first worker that answers (a frozen one is passed
    /// over when its heartbeats stop).
    pub async fn get_state(&self) -> Result<ReplicaState, ClusterError> {
        let mut last = None;
        for c in &self.conns {
            let set = fan_out(vec![(c.clone(), self.request(pb::GetStateRequest {}))], |mut w, req| async move {
                let mut stream = w.get_state(req).await?.into_inner();
                let mut chunks = Vec::new();
                while let Some(ch) = stream.message().await? {
                    chunks.push(ch);
                }
                Ok(chunks)
            });
            match self.gather(set).await {
                Ok(g) if g.lost.is_empty() => {
                    let chunks = g.ok.into_iter().next().map(|(_, c)| c).unwrap_or_default();
                    return ReplicaState::from_chunks(&chunks, crate::checkpoint::state_values(&self.layout())).map_err(ClusterError::Inconsistent);
                }
                Ok(_) => last = Some(ClusterError::Inconsistent(format!("worker {} was lost while sending its state", c.member.worker_id))),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ClusterError::Inconsistent("no workers to take the state from".into())))
    }

    /// Loads `state` into every worker (resuming from a checkpoint).
    pub async fn set_state(&self, state: &ReplicaState) -> Result<(), ClusterError> {
        let calls =
            self.conns.iter().map(|c| (c.clone(), self.request(tokio_stream::iter(state.to_chunks(peftrain_spec::state::CHUNK_ELEMS))))).collect();
        let set = fan_out(calls, |mut w, req| async move { w.set_state(req).await.map(|_| ()) });
        let g = self.gather(set).await?;
        if !g.lost.is_empty() {
            let names: Vec<String> = g.lost.into_iter().collect();
            return Err(ClusterError::Inconsistent(format!("lost {} while loading the checkpoint", names.join(", "))));
        }
        Ok(())
    }

    /// Tells every worker to exit.
    pub async fn shutdown(&self) {
        tell_to_exit(&self.conns).await;
    }

    /// Trainable layout of the group (from the fingerprint all members share).
    pub fn layout(&self) -> Vec<pb::TensorInfo> {
        self.registry.fingerprint().map(|f| f.layout).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(id: &str, step: u64, applied: bool) -> (String, pb::CommitReply) {
        (id.into(), pb::CommitReply { applied, optimizer_step: step })
    }

    #[test]
    fn commits_that_disagree_stop_the_run() {
        assert!(check_commits(&[]).is_ok());
        assert!(check_commits(&[reply("w0", 5, true), reply("w1", 5, true)]).is_ok());
        assert!(check_commits(&[reply("w0", 5, false), reply("w1", 5, false)]).is_ok());
        let e = check_commits(&[reply("w0", 5, true), reply("w1", 4, true)]).unwrap_err().to_string();
        assert!(e.contains("w0") && e.contains("step 5") && e.contains("w1") && e.contains(" 4 "), "{e}");
        let e = check_commits(&[reply("w0", 5, true), reply("w1", 5, true), reply("w2", 5, false)]).unwrap_err().to_string();
        assert!(e.contains("w2") && e.contains("skipped"), "{e}");
    }
}
