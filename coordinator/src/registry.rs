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
    Mismatch {
        worker: String,
        got: String,
        want: String,
        detail: String,
    },
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
}

struct State {
    members: Vec<Member>,
    fingerprint: Option<pb::Fingerprint>,
}

pub struct Registry {
    pub run_id: String,
    pub spec: pb::RunSpec,
    pub expected: u32,
    state: Mutex<State>,
    changed: Notify,
}

impl Registry {
    pub fn new(run_id: String, spec: pb::RunSpec, expected: u32) -> Registry {
        Registry {
            run_id,
            spec,
            expected,
            state: Mutex::new(State {
                members: Vec::new(),
                fingerprint: None,
            }),
            changed: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave State half-updated (all updates are
        // single assignments), so a poisoned lock is still safe to use.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn hello(&self, req: &pb::HelloRequest) -> Result<pb::HelloReply, RegistryError> {
        if req.protocol_version != pb::PROTOCOL_VERSION {
            return Err(RegistryError::Protocol {
                got: req.protocol_version,
                want: pb::PROTOCOL_VERSION,
            });
        }
        Ok(pb::HelloReply {
            run_id: self.run_id.clone(),
            spec: Some(self.spec.clone()),
        })
    }

    pub fn register(&self, req: pb::RegisterRequest) -> Result<pb::RegisterReply, RegistryError> {
        if req.protocol_version != pb::PROTOCOL_VERSION {
            return Err(RegistryError::Protocol {
                got: req.protocol_version,
                want: pb::PROTOCOL_VERSION,
            });
        }
        if req.run_id != self.run_id {
            return Err(RegistryError::WrongRun {
                worker: req.worker_id,
                got: req.run_id,
                want: self.run_id.clone(),
            });
        }
        let fp = req.fingerprint.ok_or_else(|| RegistryError::BadRequest {
            worker: req.worker_id.clone(),
            why: "no fingerprint".into(),
        })?;
        if req.address.is_empty() || req.worker_id.is_empty() {
            return Err(RegistryError::BadRequest {
                worker: req.worker_id.clone(),
                why: "worker id and address are required".into(),
            });
        }
        let mut st = self.state();
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
            // The same worker registering again (a retry) replaces its entry.
            m.address = req.address;
            m.last_seen = Instant::now();
        } else {
            if st.members.len() as u32 >= self.expected {
                return Err(RegistryError::Full {
                    worker: req.worker_id,
                    expected: self.expected,
                });
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
            });
        }
        if st.fingerprint.is_none() {
            st.fingerprint = Some(fp);
        }
        let reply = pb::RegisterReply {
            registered: st.members.len() as u32,
            expected: self.expected,
        };
        drop(st);
        self.changed.notify_waiters();
        Ok(reply)
    }

    pub fn heartbeat(&self, req: &pb::HeartbeatRequest) -> pb::HeartbeatReply {
        let mut st = self.state();
        let known = req.run_id == self.run_id
            && st.members.iter_mut().any(|m| {
                if m.worker_id == req.worker_id {
                    m.last_seen = Instant::now();
                    true
                } else {
                    false
                }
            });
        pb::HeartbeatReply { known }
    }

    /// Forgets a worker (lost): its slot reopens for a replacement, and its heartbeats are
    /// answered "unknown" so that, if it was only frozen, it re-registers as a newcomer.
    pub fn remove(&self, worker_id: &str) {
        self.state().members.retain(|m| m.worker_id != worker_id);
        self.changed.notify_waiters();
    }

    pub fn members(&self) -> Vec<Member> {
        self.state().members.clone()
    }

    pub fn fingerprint(&self) -> Option<pb::Fingerprint> {
        self.state().fingerprint.clone()
    }

    /// Waits until `expected` workers registered, `abort` reports a reason to stop (e.g. a local
    /// worker process died), or `timeout` passes.
    pub async fn wait_full(&self, timeout: Duration, mut abort: impl FnMut() -> Option<String>) -> Result<Vec<Member>, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            let members = self.members();
            if members.len() as u32 >= self.expected {
                return Ok(members);
            }
            if let Some(why) = abort() {
                return Err(why);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "only {} of {} workers registered within {:.0} s",
                    members.len(),
                    self.expected,
                    timeout.as_secs_f64()
                ));
            }
            // Poll the abort condition at least every 200 ms while waiting for registrations.
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

    fn fp(d: &str, n: u64) -> pb::Fingerprint {
        pb::Fingerprint {
            digest: d.into(),
            model_type: "roberta".into(),
            trainable_params: n,
            total_params: 10,
            layout: vec![],
        }
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
}
