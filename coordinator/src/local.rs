//! Single-node mode's local workers: `peftrain-worker` processes started beside the coordinator
//! on loopback, killed if the coordinator goes away.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How a worker process announces a fatal error on its last stderr line.
const WORKER_ERROR_PREFIX: &str = "peftrain-worker: error: ";

/// The worker binary: `$PEFTRAIN_WORKER_BIN`, else `peftrain-worker` beside this executable
/// (git-style: the coordinator never links libtorch, the worker does).
pub fn worker_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("PEFTRAIN_WORKER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate this executable: {e}"))?;
    let p = exe.with_file_name("peftrain-worker");
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!("{} not found: build it with `cargo build --release --bins` (or set PEFTRAIN_WORKER_BIN)", p.display()))
    }
}

struct LocalWorker {
    id: String,
    child: Child,
    /// The worker's fatal error line, kept so the coordinator reports it once, in its own words.
    error: Arc<Mutex<Option<String>>>,
}

pub struct LocalWorkers {
    children: Vec<LocalWorker>,
}

impl LocalWorkers {
    /// Starts `n` workers that register with `coordinator`, splitting `total_threads` among them.
    /// `token` and `tls` (cert, key, ca) are handed down so local traffic is as protected as
    /// remote traffic.
    pub fn spawn(
        n: usize,
        coordinator: &str,
        device: &str,
        threads: Option<usize>,
        worker_timeout: f64,
        token: &str,
        tls: &[(&str, &std::path::Path)],
    ) -> Result<LocalWorkers, String> {
        let bin = worker_binary()?;
        let cores = cores();
        let per_worker = threads.unwrap_or_else(|| (cores / n.max(1)).max(1));
        let mut children = Vec::new();
        for i in 0..n {
            let id = format!("local-{i}");
            let mut cmd = Command::new(&bin);
            cmd.arg("--coordinator")
                .arg(coordinator)
                .arg("--id")
                .arg(&id)
                .arg("--threads")
                .arg(per_worker.to_string())
                .arg("--worker-timeout")
                .arg(worker_timeout.to_string())
                .arg("--device")
                .arg(device_for(device, i))
                .env("PEFTRAIN_TOKEN", token)
                // The coordinator's own settings are not the workers': each gets its own.
                .env_remove("PEFTRAIN_METRICS_LISTEN")
                .env_remove("PEFTRAIN_LISTEN")
                .env_remove("PEFTRAIN_ADVERTISE")
                .env_remove("PEFTRAIN_WORKER_ID")
                .env_remove("PEFTRAIN_TOKEN_FILE")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            for (flag, path) in tls {
                cmd.arg(flag).arg(path);
            }
            // A process group of its own: Ctrl-C in a terminal reaches the coordinator alone,
            // which stops at a step boundary and then shuts its workers down.
            cmd.process_group(0);
            // Local workers belong to this coordinator: they go when it goes, even by SIGKILL.
            // SAFETY: prctl is async-signal-safe and touches only the child being spawned.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
            if std::env::var_os("RUST_LOG").is_none() {
                // The coordinator reports for the group; workers speak up only about problems.
                cmd.env("RUST_LOG", "warn");
            }
            let mut child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
            let error = Arc::new(Mutex::new(None));
            if let Some(stderr) = child.stderr.take() {
                let error = error.clone();
                // Worker logs pass through; its fatal error is held back for the coordinator's
                // single error line.
                tokio::spawn(async move {
                    let mut lines = BufReader::new(stderr).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        match line.strip_prefix(WORKER_ERROR_PREFIX) {
                            Some(e) => *error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string()),
                            None => eprintln!("{line}"),
                        }
                    }
                });
            }
            children.push(LocalWorker { id, child, error });
        }
        Ok(LocalWorkers { children })
    }

    /// A worker that already exited, and why: its own error line when it gave one.
    pub fn exited(&mut self) -> Option<String> {
        for w in &mut self.children {
            if let Ok(Some(status)) = w.child.try_wait() {
                // Let the stderr reader catch up with the last line before reporting.
                std::thread::sleep(Duration::from_millis(50));
                let error = w.error.lock().unwrap_or_else(|p| p.into_inner()).clone();
                return Some(match error {
                    Some(e) => e,
                    None => format!("local worker {} exited ({status}) before the run finished", w.id),
                });
            }
        }
        None
    }

    /// Waits for the workers to exit on their own, then kills what is left; all at once, so
    /// many workers take one grace period, not one each.
    pub async fn finish(self, grace: Duration) {
        let mut set = tokio::task::JoinSet::new();
        for mut w in self.children {
            set.spawn(async move {
                if tokio::time::timeout(grace, w.child.wait()).await.is_err() {
                    let _ = w.child.kill().await;
                }
            });
        }
        while set.join_next().await.is_some() {}
    }

    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().filter_map(|w| w.child.id()).collect()
    }
}

/// Cores this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism().map(|c| c.get()).unwrap_or(1)
}

/// `cuda` with several local workers spreads them over the visible GPUs.
fn device_for(device: &str, i: usize) -> String {
    if device == "cuda" {
        let gpus: usize = std::env::var("PEFTRAIN_LOCAL_GPUS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
        format!("cuda:{}", i % gpus.max(1))
    } else {
        device.to_string()
    }
}
