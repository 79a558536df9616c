//! The replica's own thread: libtorch work runs there, jobs arrive as closures, results and
//! panics come back as values; and what the rest of the worker learns of the replica.

use crate::error::WorkerError;
use crate::replica::Replica;

/// The replica lives on one dedicated thread: libtorch's OpenMP team belongs to the thread
/// that runs the ops, so hopping between pool threads would start new teams (and ignore the
/// configured thread count). Jobs are closures sent to it; results come back on a oneshot.
pub struct ComputeThread {
    tx: std::sync::mpsc::Sender<Job>,
}

/// One closure run on the compute thread against the replica.
type Job = Box<dyn FnOnce(&mut Replica) + Send>;

impl ComputeThread {
    /// Builds the replica on a new thread with `threads` intra-op threads.
    pub fn start(
        threads: Option<usize>,
        build: impl FnOnce() -> Result<Replica, crate::error::ModelError> + Send + 'static,
    ) -> Result<(ComputeThread, ReplicaInfo), WorkerError> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
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
        let info = built_rx.recv().map_err(|_| WorkerError::Internal("the compute thread died while building the replica".into()))??;
        Ok((ComputeThread { tx }, info))
    }

    /// Runs `f` on the replica's thread. A panic inside libtorch becomes an error, not a crash.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce(&mut Replica) -> Result<T, WorkerError> + Send + 'static) -> Result<T, WorkerError> {
        let (otx, orx) = tokio::sync::oneshot::channel();
        let job = Box::new(move |r: &mut Replica| {
            let res =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(r))).unwrap_or_else(|p| Err(WorkerError::Internal(panic_message(&p))));
            let _ = otx.send(res);
        });
        self.tx.send(job).map_err(|_| WorkerError::Internal("the compute thread is gone".into()))?;
        orx.await.map_err(|_| WorkerError::Internal("the compute thread dropped a job".into()))?
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    let msg =
        p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_else(|| "unknown panic".into());
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
    pub fn of(r: &Replica) -> Self {
        let extra = r.loaded.peft_extra_params(&r.spec.method);
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
