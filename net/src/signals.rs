//! SIGTERM and SIGINT as a request to stop at the next step boundary (a Kubernetes eviction or
//! node drain, Ctrl-C). The coordinator finishes its step, writes a checkpoint and exits
//! (`--resume` then continues bit for bit); a worker leaves its group between two steps. A
//! second signal stops at once.

use std::sync::{Arc, Mutex};

static INSTALLED: std::sync::OnceLock<StopSignal> = std::sync::OnceLock::new();

/// The signal that asked this process to stop, if handlers were installed and one did (a
/// command that failed because of it reports the signal's exit status, not a failure's).
pub fn requested_in_process() -> Option<&'static str> {
    INSTALLED.get().and_then(|s| s.requested())
}

/// Whether a stop was asked for, and by which signal.
#[derive(Clone, Default)]
pub struct StopSignal(Arc<Inner>);

#[derive(Default)]
struct Inner {
    signal: Mutex<Option<&'static str>>,
    asked: tokio::sync::Notify,
}

impl StopSignal {
    /// Listens for SIGTERM and SIGINT from now on (inside a tokio runtime); once per process,
    /// so every run of a `compare` shares one request to stop.
    pub fn install() -> std::io::Result<StopSignal> {
        if let Some(s) = INSTALLED.get() {
            return Ok(s.clone());
        }
        let stop = Self::listen()?;
        Ok(INSTALLED.get_or_init(|| stop).clone())
    }

    fn listen() -> std::io::Result<StopSignal> {
        use tokio::signal::unix::{signal, SignalKind};
        let stop = StopSignal::default();
        // A second signal exits as a process killed by it would (128 + its number), which the
        // manifests' podFailurePolicies treat like the first one's 143.
        for (kind, name, code) in [(SignalKind::terminate(), "SIGTERM", 143), (SignalKind::interrupt(), "SIGINT", 130)] {
            let mut s = signal(kind)?;
            let flag = stop.clone();
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    if flag.requested().is_some() {
                        eprintln!("peftrain: {name} again: stopping now, without a checkpoint");
                        std::process::exit(code);
                    }
                    tracing::info!("{name}: stopping after the current step");
                    *flag.0.signal.lock().unwrap_or_else(|p| p.into_inner()) = Some(name);
                    flag.0.asked.notify_waiters();
                }
            });
        }
        Ok(stop)
    }

    /// The signal that asked to stop, if one did.
    pub fn requested(&self) -> Option<&'static str> {
        *self.0.signal.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns once a stop has been asked for.
    pub async fn asked(&self) {
        loop {
            let notified = self.0.asked.notified();
            if self.requested().is_some() {
                return;
            }
            notified.await;
        }
    }
}
