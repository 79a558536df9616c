//! Worker membership as plain Rust: who has said hello, who registered with which fingerprint,
//! who is still heartbeating. The Coordinator gRPC service is a thin adapter over this.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use peftrain_proto::v1 as pb;
use tokio::sync::Notify;

/// Everything registration can refuse; mapped to a gRPC status in `service.rs`, in one place.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RegistryError {
    #[error("protocol version {got} is not supported (coordinator speaks {want})")]
    Protocol { got: u32, want: u32 },
    #[error("worker {worker} registered for run {got}, this run is {want}")]
    WrongRun { worker: String, got: String, want: String },
    #[error("the group is full: {expected} workers already registered; worker {worker} refused")]
    Full { worker: String, expected: u32 },
    #[error(
        "worker {worker} refused: its replica fingerprint {got} differs from the group's {want} \
         (different base checkpoint, method or trainable layout{detail})"
    )]
    Mismatch { worker: String, got: String, want: String, detail: String },
    #[error(
        "worker {worker} refused: its model fingerprint {got} differs from the coordinator's --model {want} \
         (another checkpoint, or another copy of config.json)"
    )]
    WrongModel { worker: String, got: String, want: String },
    #[error("worker {worker}: {why}")]
    BadRequest { worker: String, why: String },
}

/// A registered worker.
#[derive(Debug, Clone)]
pub struct Member {
    pub worker_id: String,
    pub address: String,
    pub device: String,
    pub fingerprint: pb::Fingerprint,
    pub last_seen: Instant,
    pub newly_initialized: Vec<String>,
    pub model_class: String,
    pub non_embedding_params: u64,
    pub peft_all_params: u64,
    /// The frozen base's dtype as the worker resolved it, and why.
    pub base_dtype: String,
    /// It asked to leave (SIGTERM): the cluster lets it go at the next step boundary.
    pub leaving: bool,
}

/// What the coordinator does about the workers registered so far, as torchrun's rendezvous
/// (`--nnodes MIN:MAX`) decides it: start at once when all are there; once the registration
/// time is up, start with whoever came if they are at least the minimum, else give up.
#[derive(Debug, Clone, PartialEq)]
pub enum StartDecision {
    Start,
    Wait,
    Fail(String),
}

/// A pure function of the counts and the clock, so it is unit-tested without sockets.
pub fn start_decision(registered: usize, expected: usize, min_workers: usize, waited: Duration, timeout: Duration) -> StartDecision {
    let min = min_workers.clamp(1, expected.max(1));
    if registered >= expected {
        StartDecision::Start
    } else if waited < timeout {
        StartDecision::Wait
    } else if registered >= min {
        StartDecision::Start
    } else {
        StartDecision::Fail(format!(
            "only {registered} of {expected} workers registered within {:.0} s (--register-timeout), fewer than --min-workers {min}",
            timeout.as_secs_f64()
        ))
    }
}

struct State {
    members: Vec<Member>,
    /// The replica fingerprint of the group, fixed by its first member and forgotten when the
    /// last one goes (so a wrong first comer that died locks nobody out).
    fingerprint: Option<pb::Fingerprint>,
    /// When this process last looked at the clock (see `tick`).
    clock: Instant,
}

/// A gap this long between two looks at the clock means this process was not running
/// (SIGSTOP, a suspended VM, a starved host): heartbeats it could not receive meanwhile say
/// nothing about the workers. The ticker looks every 250 ms.
const PAUSE: Duration = Duration::from_secs(2);

pub struct Registry {
    pub run_id: String,
    pub spec: pb::RunSpec,
    pub expected: u32,
    /// The base model's digest as the coordinator computed it from its own `--model`
    /// (`peftrain_spec::digest`); None when the coordinator has no weights to hash.
    pub model_digest: Option<String>,
    /// A registered worker silent this long is gone; its place goes to the next one to ask.
    pub stale_after: Duration,
    state: Mutex<State>,
    changed: Notify,
    /// The group has been set up: from then on the cluster decides who is lost.
    started: std::sync::atomic::AtomicBool,
}

impl Registry {
    pub fn new(run_id: String, spec: pb::RunSpec, expected: u32) -> Registry {
        Registry {
            run_id,
            spec,
            expected,
            model_digest: None,
            stale_after: Duration::from_secs(30),
            state: Mutex::new(State { members: Vec::new(), fingerprint: None, clock: Instant::now() }),
            changed: Notify::new(),
            started: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Marks the group as set up: silent members are no longer evicted at registration (the
    /// cluster's heartbeat watchdog removes lost ones itself).
    pub fn mark_started(&self) {
        let _st = self.state();
        self.started.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn with_model_digest(mut self, digest: Option<String>, stale_after: Duration) -> Registry {
        self.model_digest = digest;
        self.stale_after = stale_after;
        self
    }

    /// Looks at the clock; after a pause of this process (a gap over `PAUSE` since the last
    /// look) every member's heartbeat clock restarts, since the silence was ours, not theirs.
    /// Returns the pause's length when there was one.
    pub fn tick(&self) -> Option<Duration> {
        let mut st = self.state();
        let now = Instant::now();
        let gap = now.saturating_duration_since(st.clock);
        st.clock = now;
        if gap <= PAUSE {
            return None;
        }
        for m in &mut st.members {
            m.last_seen = now;
        }
        drop(st);
        tracing::warn!("the coordinator was paused for {:.1} s; its workers' heartbeat clocks restart", gap.as_secs_f64());
        Some(gap)
    }

    /// Members silent (no heartbeat) for longer than `timeout`, after checking for a pause of
    /// this process.
    pub fn silent(&self, timeout: Duration) -> Vec<String> {
        if self.tick().is_some() {
            return Vec::new();
        }
        self.state().members.iter().filter(|m| m.last_seen.elapsed() > timeout).map(|m| m.worker_id.clone()).collect()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave State half-updated (all updates are
        // single assignments), so a poisoned lock is still safe to use.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn hello(&self, req: &pb::HelloRequest) -> Result<pb::HelloReply, RegistryError> {
        if req.protocol_version != pb::PROTOCOL_VERSION {
            return Err(RegistryError::Protocol { got: req.protocol_version, want: pb::PROTOCOL_VERSION });
        }
        Ok(pb::HelloReply { run_id: self.run_id.clone(), spec: Some(self.spec.clone()) })
    }

    pub fn register(&self, req: pb::RegisterRequest) -> Result<pb::RegisterReply, RegistryError> {
        if req.protocol_version != pb::PROTOCOL_VERSION {
            return Err(RegistryError::Protocol { got: req.protocol_version, want: pb::PROTOCOL_VERSION });
        }
        if req.run_id != self.run_id {
            return Err(RegistryError::WrongRun { worker: req.worker_id, got: req.run_id, want: self.run_id.clone() });
        }
        let fp = req.fingerprint.ok_or_else(|| RegistryError::BadRequest { worker: req.worker_id.clone(), why: "no fingerprint".into() })?;
        if req.address.is_empty() || req.worker_id.is_empty() {
            return Err(RegistryError::BadRequest { worker: req.worker_id.clone(), why: "worker id and address are required".into() });
        }
        if let Some(want) = &self.model_digest {
            if *want != req.model_digest {
                return Err(RegistryError::WrongModel {
                    worker: req.worker_id,
                    got: if req.model_digest.is_empty() { "(none)".into() } else { short(&req.model_digest) },
                    want: short(want),
                });
            }
        }
        // A pause of this process first restarts the heartbeat clocks, so nobody is evicted for it.
        self.tick();
        let started = self.started.load(std::sync::atomic::Ordering::SeqCst);
        let mut st = self.state();
        if !started && st.members.len() as u32 >= self.expected && !st.members.iter().any(|m| m.worker_id == req.worker_id) {
            // A member that stopped heartbeating (it died after registering) gives its place up.
            let stale = self.stale_after;
            st.members.retain(|m| {
                let gone = m.last_seen.elapsed() > stale;
                if gone {
                    tracing::warn!(worker = %m.worker_id, "registered worker silent for {:.0} s: dropped for {}", stale.as_secs_f64(), req.worker_id);
                }
                !gone
            });
            if st.members.is_empty() {
                st.fingerprint = None;
            }
        }
        if let Some(want) = &st.fingerprint {
            if want.digest != fp.digest {
                return Err(RegistryError::Mismatch {
                    worker: req.worker_id,
                    got: short(&fp.digest),
                    want: short(&want.digest),
                    detail: layout_difference(want, &fp),
                });
            }
        }
        if let Some(m) = st.members.iter_mut().find(|m| m.worker_id == req.worker_id) {
            // The same worker registering again (a retry, or a replacement under its name)
            // replaces its entry, and is not leaving.
            m.address = req.address;
            m.last_seen = Instant::now();
            m.leaving = false;
        } else {
            if st.members.len() as u32 >= self.expected {
                return Err(RegistryError::Full { worker: req.worker_id, expected: self.expected });
            }
            st.members.push(Member {
                worker_id: req.worker_id,
                address: req.address,
                device: req.device,
                fingerprint: fp.clone(),
                last_seen: Instant::now(),
                newly_initialized: req.newly_initialized,
                model_class: req.model_class,
                non_embedding_params: req.non_embedding_params,
                peft_all_params: req.peft_all_params,
                base_dtype: req.base_dtype,
                leaving: false,
            });
        }
        if st.fingerprint.is_none() {
            st.fingerprint = Some(fp);
        }
        let reply = pb::RegisterReply { registered: st.members.len() as u32, expected: self.expected };
        drop(st);
        self.changed.notify_waiters();
        Ok(reply)
    }

    /// A heartbeat; one that says `leaving` marks its worker to be let go at the next step
    /// boundary, or, before the group is set up, forgets it at once (its slot reopens).
    pub fn heartbeat(&self, req: &pb::HeartbeatRequest) -> pb::HeartbeatReply {
        let mut st = self.state();
        // Read under the lock `mark_started` is set under: a group being formed keeps its members.
        let started = self.started.load(std::sync::atomic::Ordering::SeqCst);
        let Some(m) = st.members.iter_mut().find(|m| req.run_id == self.run_id && m.worker_id == req.worker_id) else {
            return pb::HeartbeatReply { known: false };
        };
        m.last_seen = Instant::now();
        if !req.leaving {
            return pb::HeartbeatReply { known: true };
        }
        if !m.leaving {
            tracing::info!(worker = %m.worker_id, "asked to leave (SIGTERM): it goes at the next step boundary");
        }
        m.leaving = true;
        if started {
            return pb::HeartbeatReply { known: true };
        }
        st.members.retain(|m| m.worker_id != req.worker_id);
        if st.members.is_empty() {
            st.fingerprint = None;
        }
        drop(st);
        self.changed.notify_waiters();
        pb::HeartbeatReply { known: false }
    }

    /// Workers that asked to leave.
    pub fn leavers(&self) -> Vec<String> {
        self.state().members.iter().filter(|m| m.leaving).map(|m| m.worker_id.clone()).collect()
    }

    /// Forgets a worker (lost): its slot reopens for a replacement, and its heartbeats are
    /// answered "unknown" so that, if it was only frozen, it re-registers as a newcomer.
    pub fn remove(&self, worker_id: &str) {
        let mut st = self.state();
        st.members.retain(|m| m.worker_id != worker_id);
        if st.members.is_empty() {
            st.fingerprint = None;
        }
        drop(st);
        self.changed.notify_waiters();
    }

    /// Removes `worker_id` only while it is still registered at `address`: a replacement that
    /// registered under the same name (a restarted pod) before its predecessor was found lost
    /// has another address, and keeps its place.
    pub fn remove_at(&self, worker_id: &str, address: &str) {
        let mut st = self.state();
        st.members.retain(|m| m.worker_id != worker_id || m.address != address);
        if st.members.is_empty() {
            st.fingerprint = None;
        }
        drop(st);
        self.changed.notify_waiters();
    }

    pub fn members(&self) -> Vec<Member> {
        self.state().members.clone()
    }

    pub fn fingerprint(&self) -> Option<pb::Fingerprint> {
        self.state().fingerprint.clone()
    }

    /// Waits until `start_decision` says start (all `expected` registered, or at least
    /// `min_workers` once `timeout` since `since` has passed) or fail, or `abort` reports a
    /// reason to stop (e.g. a local worker process died). Later workers join at a step boundary.
    pub async fn wait_start(
        &self,
        min_workers: usize,
        since: Instant,
        timeout: Duration,
        mut abort: impl FnMut() -> Option<String>,
    ) -> Result<Vec<Member>, String> {
        loop {
            let notified = self.changed.notified();
            let members = self.members();
            match start_decision(members.len(), self.expected as usize, min_workers, since.elapsed(), timeout) {
                StartDecision::Start => {
                    if members.len() < self.expected as usize {
                        tracing::warn!(
                            "starting with {} of {} workers after {:.0} s; the others join at a step boundary when they register",
                            members.len(),
                            self.expected,
                            timeout.as_secs_f64()
                        );
                    }
                    return Ok(members);
                }
                StartDecision::Fail(why) => return Err(why),
                StartDecision::Wait => {}
            }
            if let Some(why) = abort() {
                return Err(why);
            }
            // Poll the abort condition and the clock at least every 200 ms while waiting.
            let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
        }
    }
}

fn short(d: &str) -> String {
    d.chars().take(12).collect()
}

/// A readable hint at what differs between two fingerprints.
fn layout_difference(a: &pb::Fingerprint, b: &pb::Fingerprint) -> String {
    if a.model_type != b.model_type {
        return format!(": model type {} vs {}", a.model_type, b.model_type);
    }
    if a.trainable_params != b.trainable_params {
        return format!(": {} vs {} trainable parameters", a.trainable_params, b.trainable_params);
    }
    for (x, y) in a.layout.iter().zip(&b.layout) {
        if x.name != y.name || x.shape != y.shape || x.dtype != y.dtype {
            return format!(": {} {:?} {} vs {} {:?} {}", x.name, x.shape, x.dtype, y.name, y.shape, y.dtype);
        }
    }
    String::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_is_decided_like_torchruns_rendezvous() {
        let s = Duration::from_secs;
        // All there: at once, whatever the clock says.
        assert_eq!(start_decision(3, 3, 1, s(0), s(60)), StartDecision::Start);
        // Some missing: wait out the registration time, even with the minimum there.
        assert_eq!(start_decision(2, 3, 1, s(59), s(60)), StartDecision::Wait);
        assert_eq!(start_decision(0, 3, 1, s(10), s(60)), StartDecision::Wait);
        // Time up: start with the minimum or more, else fail and say why.
        assert_eq!(start_decision(2, 3, 2, s(60), s(60)), StartDecision::Start);
        assert_eq!(start_decision(1, 3, 1, s(61), s(60)), StartDecision::Start);
        let StartDecision::Fail(why) = start_decision(1, 4, 2, s(60), s(60)) else { panic!("should fail") };
        assert!(why.contains("only 1 of 4") && why.contains("--min-workers 2") && why.contains("60 s"), "{why}");
        // A minimum of 0 still needs one worker; one above the count means all of them.
        assert!(matches!(start_decision(0, 2, 0, s(60), s(60)), StartDecision::Fail(_)));
        assert!(matches!(start_decision(2, 3, 9, s(60), s(60)), StartDecision::Fail(_)));
    }

    #[test]
    fn a_leaving_worker_is_forgotten_before_the_start_and_marked_after() {
        let r = Registry::new("r".into(), pb::RunSpec::default(), 2);
        r.register(req("a", fp("d", 1))).unwrap();
        r.register(req("b", fp("d", 1))).unwrap();
        let hb = |id: &str, leaving| pb::HeartbeatRequest { worker_id: id.into(), run_id: "r".into(), leaving };
        assert!(r.heartbeat(&hb("a", false)).known);
        // Before the group is set up: gone at once, its slot open again.
        assert!(!r.heartbeat(&hb("a", true)).known);
        assert_eq!(r.members().len(), 1);
        r.register(req("c", fp("d", 1))).unwrap();
        r.mark_started();
        // After: still a member, marked, until the cluster lets it go.
        assert!(r.heartbeat(&hb("b", true)).known);
        assert_eq!(r.leavers(), vec!["b".to_string()]);
        assert_eq!(r.members().len(), 2);
        assert!(!r.heartbeat(&hb("z", true)).known);
    }

    fn fp(d: &str, n: u64) -> pb::Fingerprint {
        pb::Fingerprint { digest: d.into(), model_type: "roberta".into(), trainable_params: n, total_params: 10, layout: vec![] }
    }

    fn req(id: &str, f: pb::Fingerprint) -> pb::RegisterRequest {
        pb::RegisterRequest {
            protocol_version: pb::PROTOCOL_VERSION,
            worker_id: id.into(),
            run_id: "r".into(),
            address: "127.0.0.1:1".into(),
            device: "cpu".into(),
            threads: 1,
            fingerprint: Some(f),
            ..Default::default()
        }
    }

    #[test]
    fn refuses_mismatched_and_extra_workers() {
        let r = Registry::new("r".into(), pb::RunSpec::default(), 2);
        assert_eq!(r.register(req("a", fp("aaaa", 5))).unwrap().registered, 1);
        let e = r.register(req("b", fp("bbbb", 6))).unwrap_err();
        assert!(matches!(e, RegistryError::Mismatch { .. }), "{e}");
        assert!(e.to_string().contains("5 vs 6 trainable"), "{e}");
        assert_eq!(r.register(req("b", fp("aaaa", 5))).unwrap().registered, 2);
        assert!(matches!(r.register(req("c", fp("aaaa", 5))), Err(RegistryError::Full { .. })));
        // A retry of a known worker is not an extra worker.
        assert_eq!(r.register(req("a", fp("aaaa", 5))).unwrap().registered, 2);
        let mut stale = req("d", fp("aaaa", 5));
        stale.run_id = "old".into();
        assert!(matches!(r.register(stale), Err(RegistryError::WrongRun { .. })));
    }

    #[test]
    fn the_coordinator_s_model_decides_not_the_first_comer() {
        let r = Registry::new("r".into(), pb::RunSpec::default(), 2).with_model_digest(Some("good".into()), Duration::from_secs(30));
        let mut wrong = req("intruder", fp("xxxx", 5));
        wrong.model_digest = "bad".into();
        assert!(matches!(r.register(wrong), Err(RegistryError::WrongModel { .. })));
        let mut right = req("a", fp("aaaa", 5));
        right.model_digest = "good".into();
        assert_eq!(r.register(right).unwrap().registered, 1);
    }

    #[test]
    fn a_group_emptied_forgets_its_fingerprint_and_silent_members_give_up_their_place() {
        let r = Registry::new("r".into(), pb::RunSpec::default(), 1).with_model_digest(None, Duration::from_millis(50));
        r.register(req("a", fp("aaaa", 5))).unwrap();
        r.remove("a");
        // A different first comer gone: the next group may have another fingerprint.
        r.register(req("b", fp("bbbb", 6))).unwrap();
        std::thread::sleep(Duration::from_millis(120));
        let reply = r.register(req("c", fp("cccc", 7))).unwrap();
        assert_eq!(reply.registered, 1);
        assert_eq!(r.members()[0].worker_id, "c");
    }

    #[test]
    fn a_pause_of_the_coordinator_is_not_the_workers_silence() {
        let r = Registry::new("r".into(), pb::RunSpec::default(), 1);
        r.register(req("a", fp("aaaa", 5))).unwrap();
        // As if the process had been stopped for longer than PAUSE and the timeout.
        r.state().clock = Instant::now() - Duration::from_secs(5);
        r.state().members[0].last_seen = Instant::now() - Duration::from_secs(5);
        assert!(r.silent(Duration::from_secs(1)).is_empty(), "the pause was the coordinator's");
        assert!(r.silent(Duration::from_secs(1)).is_empty(), "heartbeat clocks restarted");
        r.state().members[0].last_seen = Instant::now() - Duration::from_secs(2);
        assert_eq!(r.silent(Duration::from_secs(1)), vec!["a".to_string()]);
    }
}
