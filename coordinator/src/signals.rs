//! SIGTERM and SIGINT as a request to stop: the training loop finishes its step, writes a
//! checkpoint and exits 0 (a Kubernetes eviction, Ctrl-C); `--resume` then continues bit for
//! bit. A second signal stops at once.

use std::sync::{Arc, Mutex};

/// Whether a stop was asked for, and by which signal.
#[derive(Clone, Default)]
pub struct StopSignal(Arc<Mutex<Option<&'static str>>>);

impl StopSignal {
    /// Listens for SIGTERM and SIGINT from now on (inside a tokio runtime); once per process,
    /// so every run of a `compare` shares one request to stop.
    pub fn install() -> std::io::Result<StopSignal> {
        static INSTALLED: std::sync::OnceLock<StopSignal> = std::sync::OnceLock::new();
        if let Some(s) = INSTALLED.get() {
            return Ok(s.clone());
        }
        let stop = Self::listen()?;
        Ok(INSTALLED.get_or_init(|| stop).clone())
    }

    fn listen() -> std::io::Result<StopSignal> {
        use tokio::signal::unix::{signal, SignalKind};
        let stop = StopSignal::default();
        for (kind, name) in [(SignalKind::terminate(), "SIGTERM"), (SignalKind::interrupt(), "SIGINT")] {
            let mut s = signal(kind)?;
            let flag = stop.clone();
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    if flag.requested().is_some() {
                        eprintln!("peftrain: {name} again: stopping now, without a checkpoint");
                        std::process::exit(130);
                    }
                    tracing::info!("{name}: stopping after the current step");
                    *flag.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(name);
                }
            });
        }
        Ok(stop)
    }

    /// The signal that asked to stop, if one did.
    pub fn requested(&self) -> Option<&'static str> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}
