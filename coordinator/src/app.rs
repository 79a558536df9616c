//! The commands that drive workers (`train`, `coordinator`, `predict`): start the coordinator
//! service, bring the group up (spawning local workers in single-node mode), run the job, and
//! take everything down again whatever happened.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use peftrain_spec::{Method, MethodArgs, MethodKind};

use crate::checkpoint;
use crate::cluster::{Cluster, Tolerance};
use crate::config::{read_model_config, ReportTo, TrainConfig};
use crate::data::{infer_labels, load_split, read_user_file, Example, Labels, Split};
use crate::local::LocalWorkers;
use crate::observe::{Observer, Phase};
use crate::registry::Registry;
/// peft's trainable-parameter line (formatted in report.rs).
pub use crate::report::peft_line;
use crate::report::{human_bytes, newly_initialized_message, MetricsLog};
use crate::signals::StopSignal;
use crate::tokenize::{Encoded, TextTokenizer};
use crate::trainer::{self, LoopState, RunSummary};
use peftrain_net::{Security, SecurityArgs};

/// Where the workers come from.
#[derive(Debug, Clone)]
pub enum Workers {
    /// Single-node: spawn `--workers` local worker processes on loopback.
    Local {
        device: String,
        threads: Option<usize>,
        /// At most this many local processes (default `default_max_local_workers`).
        max_local_workers: Option<usize>,
    },
    /// Multi-node: listen here and wait for workers to register.
    Remote { listen: SocketAddr },
}

/// How the coordinator is secured and observed.
#[derive(Debug, Clone, Default)]
pub struct NetArgs {
    pub security: SecurityArgs,
    /// Serve Prometheus `/metrics` and JSON `/status` here.
    pub metrics_listen: Option<SocketAddr>,
    /// After the run, keep serving health, metrics and status until SIGTERM (a Kubernetes
    /// Deployment would otherwise restart a finished coordinator).
    pub keep_serving: bool,
}

/// A running group: the coordinator service, the registered workers and (single-node) their
/// processes.
pub struct Session {
    pub cluster: Cluster,
    pub observer: Observer,
    local: Option<LocalWorkers>,
    stop_server: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<Result<(), crate::service::ServeError>>,
}

/// The run's token and TLS files, as a group of `workers` needs them: remote workers need the
/// user's token; single-node mode makes a random one when the user gave none.
pub fn load_security(workers: &Workers, net: &NetArgs) -> Result<Security, peftrain_net::NetError> {
    let security = Security::load(&net.security)?;
    match workers {
        // Single-node: without a token of the user's, a fresh one protects loopback too.
        Workers::Local { .. } if security.token().is_none() => Ok(security.with_token(&Security::random_token()?)),
        Workers::Local { .. } => Ok(security),
        Workers::Remote { .. } => security.require_token("the coordinator").map(|()| security),
    }
}

impl Session {
    pub async fn start(cfg: &TrainConfig, workers: &Workers, send_type_ids: bool, net: &NetArgs, stop: &StopSignal) -> anyhow::Result<Session> {
        Self::start_with(cfg, workers, send_type_ids, net, load_security(workers, net)?, stop).await
    }

    /// As `start`, with the token and TLS files already loaded (`load_security`).
    pub async fn start_with(
        cfg: &TrainConfig,
        workers: &Workers,
        send_type_ids: bool,
        net: &NetArgs,
        security: Security,
        stop: &StopSignal,
    ) -> anyhow::Result<Session> {
        // TLS mistakes surface here, before anything listens.
        security.server_tls()?;
        let run_id = format!("run-{}-{}", std::process::id(), now_millis());
        let observer = Observer::new(&run_id, &cfg.task_name(), cfg.method.kind.as_str(), cfg.workers, cfg.metric_keys());
        if let Some(addr) = net.metrics_listen {
            let l = TcpListener::bind(addr).await.with_context(|| format!("--metrics-listen {addr}"))?;
            tracing::info!(metrics_address = %l.local_addr()?, "serving /metrics and /status");
            tokio::spawn(peftrain_net::http::serve_http(l, observer.router(), std::future::pending::<()>()));
        }
        let registry = Arc::new(
            Registry::new(run_id, cfg.run_spec(), cfg.workers as u32)
                .with_model_digest(expected_model_digest(cfg), Duration::from_secs_f64(cfg.worker_timeout)),
        );
        spawn_pause_watch(&registry);
        let listen = match workers {
            Workers::Local { .. } => SocketAddr::from(([127, 0, 0, 1], 0)),
            Workers::Remote { listen } => *listen,
        };
        let listener = TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
        let bound = listener.local_addr()?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let serve_security = security.clone();
        let serve_registry = registry.clone();
        let server = tokio::spawn(async move {
            crate::service::serve(listener, serve_registry, &serve_security, async move {
                let _ = stop_rx.await;
            })
            .await
        });
        let scheme = if security.tls_enabled() { "https" } else { "http" };
        tracing::info!(address = %bound, workers = cfg.workers, "coordinator listening");
        let mut local = match workers {
            Workers::Local { device, threads, .. } => {
                let s = &net.security;
                let tls: Vec<(&str, &Path)> = [("--tls-cert", &s.tls_cert), ("--tls-key", &s.tls_key), ("--tls-ca", &s.tls_ca)]
                    .into_iter()
                    .filter_map(|(f, p)| p.as_deref().map(|p| (f, p)))
                    .collect();
                let token = security.token().unwrap_or_default().to_string();
                // With TLS, the certificate must name 127.0.0.1 (an IP SAN): loopback is used as is.
                let url = format!("{scheme}://{bound}");
                Some(LocalWorkers::spawn(cfg.workers, &url, device, *threads, cfg.worker_timeout, &token, &tls).map_err(|e| anyhow!(e))?)
            }
            Workers::Remote { .. } => None,
        };
        let tolerance = Tolerance {
            rpc_timeout: Duration::from_secs_f64(cfg.rpc_timeout),
            worker_timeout: Duration::from_secs_f64(cfg.worker_timeout),
            min_workers: cfg.min_workers,
        };
        // Elastic start: all --workers, or --min-workers once --register-timeout has passed.
        let since = std::time::Instant::now();
        let cluster = loop {
            let stop = stop.clone();
            let wait = registry
                .wait_start(cfg.min_workers, since, Duration::from_secs_f64(cfg.register_timeout), || {
                    if let Some(sig) = stop.requested() {
                        return Some(format!("stopped by {sig} before training started"));
                    }
                    local.as_mut().and_then(|l| l.exited())
                })
                .await;
            // Marked before the group is formed: a worker that asks to leave meanwhile is kept
            // and let go at the first step boundary, instead of vanishing under a live connection.
            let started = match wait {
                Ok(_) => {
                    registry.mark_started();
                    Cluster::start(registry.clone(), tolerance, send_type_ids, security.clone(), cfg.padding, cfg.all_reduce).await
                }
                Err(why) => Err(crate::cluster::ClusterError::Setup(why)),
            };
            match started {
                Ok(c) => break c,
                // Registered, then gone before the group was set up: its place goes to the next
                // worker to register (multi-node), within the same registration deadline.
                Err(crate::cluster::ClusterError::Connect { worker, address, why }) => {
                    tracing::warn!(%worker, "registered but unreachable at {address} ({why}): dropped; waiting for another worker");
                    registry.remove(&worker);
                }
                Err(e) => {
                    let _ = stop_tx.send(());
                    if let Some(l) = local {
                        l.finish(Duration::from_millis(100)).await;
                    }
                    return Err(anyhow!(e));
                }
            }
        };
        Ok(Session { cluster, observer, local, stop_server: Some(stop_tx), server })
    }

    /// Shuts the workers down, waits for local processes, stops the service (after SIGTERM
    /// or Ctrl-C with `keep_serving`). A run that is not done (`paused`: stopped by a signal
    /// or failed) leaves remote workers running: they wait for the coordinator that resumes it.
    pub async fn finish(mut self, keep_serving: bool, paused: bool) {
        if !paused || self.local.is_some() {
            self.cluster.shutdown().await;
        }
        if let Some(l) = self.local.take() {
            l.finish(Duration::from_secs(10)).await;
        }
        if keep_serving {
            tracing::info!("run over; serving health, metrics and status until terminated");
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
            }
        }
        if let Some(s) = self.stop_server.take() {
            let _ = s.send(());
        }
        // A graceful stop waits for open connections; a frozen worker's never closes. A paused
        // run is being preempted: its grace period is better spent by its successor.
        let drain = if paused { Duration::from_secs(1) } else { Duration::from_secs(5) };
        let _ = tokio::time::timeout(drain, &mut self.server).await;
    }

    pub fn local_pids(&self) -> Vec<u32> {
        self.local.as_ref().map(|l| l.pids()).unwrap_or_default()
    }
}

fn now_millis() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
}

/// The examples of a split: the GLUE task's, or the user's file for it (labels read as the
/// run's labels say).
pub fn load_examples(cfg: &TrainConfig, split: Split) -> anyhow::Result<Vec<Example>> {
    match cfg.glue_task() {
        Some(task) => {
            let glue = cfg.glue_dir.as_deref().ok_or_else(|| anyhow!("no GLUE directory: pass --glue-dir or set GLUE_DIR"))?;
            Ok(load_split(glue, task, split)?)
        }
        None => {
            let path = cfg.split_file(split).map_err(usage)?;
            // With --task, the files' labels may be the task's ids as well as its names.
            Ok(read_user_file(path, &cfg.user_columns(), &cfg.labels(), split.is_test(), cfg.task.is_some())?)
        }
    }
}

/// Reads and tokenizes a split, applying `limit` (first N rows); also returns how many rows
/// were truncated to `--max-length`.
pub fn prepare_split(cfg: &TrainConfig, tok: &TextTokenizer, split: Split, limit: Option<usize>) -> anyhow::Result<(Vec<Encoded>, usize)> {
    let mut rows = load_examples(cfg, split)?;
    if let Some(n) = limit {
        rows.truncate(n);
    }
    let enc = tok.encode_all(&rows)?;
    if enc.truncated > 0 {
        tracing::info!("{} of {} {split:?} examples were longer than --max-length {} and were truncated", enc.truncated, rows.len(), tok.max_length);
    }
    Ok((enc.examples, enc.truncated))
}

/// Reads what the coordinator needs of config.json and checks `--max-length` against it;
/// returns whether to send segment ids.
fn send_type_ids(model: &Path, max_length: usize) -> anyhow::Result<bool> {
    let info = read_model_config(model).map_err(usage)?;
    if max_length > info.max_tokens() {
        return Err(usage(format!(
            "--max-length {max_length} exceeds the {} positions of {}/config.json (max_position_embeddings)",
            info.max_tokens(),
            model.display()
        )));
    }
    // RoBERTa's type vocabulary has one entry; only BERT-family models read segment ids.
    Ok(info.family() == peftrain_spec::ModelType::Bert)
}

/// `peftrain train` / `peftrain coordinator`: the whole run, outputs included.
pub async fn run_training(cfg: &TrainConfig, workers: &Workers, net: &NetArgs) -> anyhow::Result<RunSummary> {
    cfg.validate_values().map_err(usage)?;
    // A missing, weak or placeholder token and unreadable TLS files are refused at start,
    // before anything is read or written (exit 2: in a JobSet, a failure no retry mends).
    let security = load_security(workers, net).map_err(|e| usage(e.to_string()))?;
    // --push-to-hub: the token checked and the repo made before anything trains, as the
    // Trainer's init_hf_repo does.
    let push_target = match cfg.push_to_hub {
        false => None,
        true => {
            let (id, private, hub) = (cfg.hub_repo_id(), cfg.hub_private_repo, crate::hub::HubOptions::from_env());
            let target = tokio::task::spawn_blocking(move || crate::push::prepare(&id, private, &hub)).await?;
            Some(target.map_err(|e| if e.is_usage() { usage(format!("--push-to-hub: {e}")) } else { anyhow!("--push-to-hub: {e}") })?)
        }
    };
    check_local_workers(cfg, workers)?;
    let mut resolved = cfg.clone();
    resolve_inputs(&mut resolved)?;
    let cfg = &resolved;
    cfg.validate().map_err(usage)?;
    crate::outdir::check_no_overlap("--output-dir", &cfg.output_dir, &cfg.inputs()).map_err(usage)?;
    if let Some(dir) = &cfg.logging_dir {
        crate::outdir::check_no_overlap("--logging-dir", dir, &cfg.inputs()).map_err(usage)?;
    }
    let stop = StopSignal::install().context("installing the SIGTERM/SIGINT handlers")?;
    let type_ids = send_type_ids(&cfg.model, cfg.max_length)?;
    let tok = TextTokenizer::load(&cfg.tokenizer_dir(), cfg.max_length)?;
    let (train, truncated) = prepare_split(cfg, &tok, Split::Train, cfg.train_limit)?;
    // The validation sets (MNLI: matched, then mismatched); none for your own data without a
    // --validation-file.
    let mut devs: Vec<(Vec<Encoded>, &'static str)> = Vec::new();
    if cfg.glue_task().is_some() || cfg.validation_file.is_some() {
        for (split, suffix) in cfg.eval_splits() {
            devs.push((prepare_split(cfg, &tok, split, cfg.eval_limit)?.0, suffix));
        }
    }
    let dev: Vec<(&[Encoded], &str)> = devs.iter().map(|(d, s)| (d.as_slice(), *s)).collect();
    let dev_len = devs.first().map_or(0, |(d, _)| d.len());
    let resume_dir = match &cfg.resume {
        None => None,
        Some(p) if p.as_os_str() == "latest" && !p.is_dir() => {
            let latest = checkpoint::list_checkpoints(&cfg.output_dir)?.pop().map(|(_, p)| p);
            if latest.is_none() {
                tracing::info!("--resume: no checkpoint in {}, starting from the beginning", cfg.output_dir.display());
            }
            latest
        }
        Some(p) => Some(p.clone()),
    };
    // A run continues in its own directory; anything else (a fresh start, `--resume latest`
    // that found no checkpoint, a checkpoint from elsewhere) claims the output directory.
    let continues_here = resume_dir
        .as_deref()
        .and_then(|d| d.parent())
        .is_some_and(|parent| crate::outdir::canonical(parent) == crate::outdir::canonical(&cfg.output_dir));
    if !continues_here {
        crate::outdir::claim_output_dir(&cfg.output_dir, cfg.overwrite_output_dir).map_err(usage)?;
    }
    let total_steps = cfg.total_steps(train.len());
    // A damaged or edited checkpoint is refused before anything is started, written or rotated.
    let resumed = match &resume_dir {
        Some(dir) => {
            let position = checkpoint::read_position(dir)?;
            check_resume_position(dir, &position, total_steps)?;
            Some(dir.clone())
        }
        None => None,
    };
    std::fs::create_dir_all(&cfg.output_dir).with_context(|| format!("creating {}", cfg.output_dir.display()))?;
    checkpoint::write_atomic(&cfg.output_dir.join("run_config.json"), &serde_json::to_vec_pretty(cfg)?)?;

    let mut session = Session::start_with(cfg, workers, type_ids, net, security, &stop).await?;
    let mut st = LoopState::default();
    let mut completed = false;
    let result = async {
        let lead = session.cluster.registry.members().into_iter().next().ok_or_else(|| anyhow!("no workers"))?;
        if let Some(msg) = newly_initialized_message(&lead.model_class, &cfg.model, &lead.newly_initialized) {
            tracing::warn!("{msg}");
        }
        let fp = lead.fingerprint.clone();
        let metrics_path = cfg.output_dir.join("metrics.jsonl");
        let mut metrics = match &resumed {
            Some(dir) => {
                let (state, loop_state): (_, LoopState) = checkpoint::read_checkpoint(dir, &fp.layout)?;
                if loop_state.fingerprint != fp.digest {
                    anyhow::bail!(
                        "{}: checkpoint of a different replica (fingerprint {}, the workers have {}): another model, method or layout",
                        dir.display(),
                        loop_state.fingerprint,
                        fp.digest
                    );
                }
                session.cluster.set_state(&state).await?;
                st = loop_state;
                if st.run_id.is_empty() {
                    st.run_id = session.cluster.registry.run_id.clone();
                }
                trainer::truncate_metrics(&metrics_path, st.global_step)?;
                tracing::info!("resumed from {} at step {}", dir.display(), st.global_step);
                MetricsLog::append(&metrics_path)
            }
            None => {
                st.fingerprint = fp.digest.clone();
                st.run_id = session.cluster.registry.run_id.clone();
                MetricsLog::create(&metrics_path)
            }
        }
        .with_context(|| format!("opening {}", metrics_path.display()))?;
        if cfg.report_to == ReportTo::Tensorboard {
            let dir = cfg.logging_dir.clone().unwrap_or_else(|| crate::tensorboard::default_logging_dir(&cfg.output_dir));
            metrics = metrics.with_tensorboard(&dir).with_context(|| format!("--logging-dir {}", dir.display()))?;
        }
        println!(
            "{} | {} x {} | {} workers | base {} | {} train / {} dev examples{}",
            peft_line(fp.trainable_params, lead.peft_all_params),
            cfg.method.kind,
            cfg.task_name(),
            session.cluster.world(),
            if lead.base_dtype.is_empty() { "?" } else { &lead.base_dtype },
            train.len(),
            dev_len,
            if truncated > 0 { format!(" ({truncated} truncated to {} tokens)", cfg.max_length) } else { String::new() }
        );
        let obs = session.observer.clone();
        let summary =
            trainer::train(cfg, &mut session.cluster, &train, &dev, lead.non_embedding_params, std::io::stdout(), &mut metrics, &mut st, &obs, &stop)
                .await?;
        if let Some(sig) = summary.stopped {
            eprintln!(
                "peftrain: stopped by {sig} after step {} of {}; checkpoint written to {}; continue with --resume",
                st.global_step,
                total_steps,
                cfg.output_dir.join(format!("checkpoint-{}", st.global_step)).display()
            );
            return anyhow::Ok(summary);
        }
        let bytes = checkpoint::write_trainable(&cfg.output_dir, cfg, &session.cluster.layout(), &summary.state)?;
        // The Trainer's state of the finished run (trainer.save_state()), log history whole.
        let hf = crate::run_state::trainer_state(cfg, &st).map_err(|e| anyhow!(e))?;
        checkpoint::write_atomic(&cfg.output_dir.join(crate::run_state::TRAINER_STATE_FILE), &serde_json::to_vec_pretty(&hf)?)?;
        let name = cfg.output_dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "peftrain-model".into());
        let repo = push_target.as_ref().map(|t| t.repo_id.as_str());
        let card = crate::model_card::model_card(cfg, &name, repo, summary.last_eval.as_ref(), &st);
        checkpoint::write_atomic(&cfg.output_dir.join("README.md"), card.as_bytes())?;
        tracing::info!("trainable weights written to {} ({})", cfg.output_dir.display(), human_bytes(bytes));
        std::fs::write(cfg.output_dir.join("train_output.json"), serde_json::to_vec_pretty(&summary.output)?)?;
        println!("{}", summary.output);
        let record = crate::compare::RunSummaryFile {
            method: cfg.method.kind.as_str().into(),
            task: cfg.task_name(),
            model: cfg.model.display().to_string(),
            trainable_params: fp.trainable_params,
            all_params: lead.peft_all_params,
            train_runtime: summary.output.metrics.train_runtime,
            train_samples_per_second: summary.output.metrics.train_samples_per_second,
            metric_keys: cfg.metric_keys(),
            best_metric_key: cfg.best_model_metric().key,
            best_metric: summary.best_metric,
            final_metrics: summary.last_eval.as_ref().map(|e| e.metrics.iter().cloned().collect()).unwrap_or_default(),
            final_eval_loss: summary.last_eval.as_ref().map(|e| e.loss),
            workers: session.cluster.world(),
        };
        std::fs::write(cfg.output_dir.join("run_summary.json"), serde_json::to_vec_pretty(&record)?)?;
        let run = crate::compare::RunRecord::read(&cfg.output_dir).map_err(|e| anyhow!(e))?;
        let title = format!("peftrain {} on {}", cfg.method.kind, cfg.task_name());
        let (md, png) = crate::compare::write_report(&cfg.output_dir, &title, &[run]).map_err(|e| anyhow!(e))?;
        println!(
            "trainable weights: {} | report: {} | plot: {}",
            cfg.output_dir.join(if cfg.method.kind.saves_peft_adapter() { "adapter_model.safetensors" } else { "trainable.safetensors" }).display(),
            md.display(),
            png.display()
        );
        completed = true;
        anyhow::Ok(summary)
    }
    .await;
    session.observer.update(|s| match &result {
        Ok(_) => s.phase = Phase::Finished,
        Err(e) => {
            s.phase = Phase::Failed;
            s.error = Some(format!("{e:#}"));
        }
    });
    if let Err(e) = &result {
        // A run that cannot go on leaves a final checkpoint of its last completed step.
        if st.global_step > 0 && session.cluster.world() > 0 {
            match trainer::save_checkpoint(cfg, &session.cluster, &st).await {
                Ok(_) => tracing::warn!("final checkpoint at step {} written after: {e:#}", st.global_step),
                Err(ce) => tracing::warn!("no final checkpoint: {ce}"),
            }
        }
    }
    // Remote workers are told to exit only when the run is done: after a stop or a failure
    // they wait for the coordinator that resumes it (exiting 0 would mark a Job's index done).
    let done = matches!(&result, Ok(summary) if summary.stopped.is_none());
    session.finish(net.keep_serving, !done).await;
    // The push comes after the run is finished and said so: a push that fails leaves a
    // finished run (outputs written, no extra checkpoint) and says how to retry.
    if let (Ok(_), true, Some(target)) = (&result, completed, push_target) {
        let dir = cfg.output_dir.clone();
        let pushed =
            tokio::task::spawn_blocking(move || crate::push::commit(&target, &dir, "main", "End of training").map(|d| (d, target.repo_id))).await?;
        match pushed {
            Ok((done, _)) => println!("pushed {} files ({} through LFS) to {}: {}", done.files, done.lfs_files, done.repo_id, done.commit_url),
            Err(e) => {
                return Err(anyhow!(
                    "training finished (outputs in {}), but the push failed: {e}; retry with `peftrain push {} --repo-id {}`",
                    cfg.output_dir.display(),
                    cfg.output_dir.display(),
                    cfg.hub_repo_id()
                ))
            }
        }
    }
    result
}

/// A refused flag, config field or value: exit status 2, as clap's own usage errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

pub fn usage(e: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Usage(e.into()))
}

/// What `peftrain predict` needs.
#[derive(Debug, Clone)]
pub struct PredictConfig {
    pub train: TrainConfig,
    pub split: Split,
    pub output: PathBuf,
    pub with_logits: bool,
}

/// `peftrain predict`: logits of a split through one or more workers, written as GLUE's
/// submission form `index<TAB>prediction` (plus the logits on request).
pub async fn run_predict(p: &PredictConfig, workers: &Workers, net: &NetArgs) -> anyhow::Result<usize> {
    p.train.validate_values().map_err(usage)?;
    check_local_workers(&p.train, workers)?;
    let mut resolved = p.train.clone();
    resolve_inputs(&mut resolved)?;
    let cfg = &resolved;
    cfg.validate().map_err(usage)?;
    crate::outdir::check_no_overlap("--output", &p.output, &cfg.inputs()).map_err(usage)?;
    let type_ids = send_type_ids(&cfg.model, cfg.max_length)?;
    let tok = TextTokenizer::load(&cfg.tokenizer_dir(), cfg.max_length)?;
    let (rows, _) = prepare_split(cfg, &tok, p.split, cfg.eval_limit)?;
    let mut session = Session::start(cfg, workers, type_ids, net, &StopSignal::default()).await?;
    let result = async {
        let mut out = String::from(if p.with_logits { "index\tprediction\tlogits\n" } else { "index\tprediction\n" });
        let labels = cfg.labels();
        for chunk in rows.chunks(cfg.eval_batch().max(1)) {
            let refs: Vec<&Encoded> = chunk.iter().collect();
            let ev = session.cluster.evaluate(&refs, true).await?;
            let nl = ev.num_labels.max(1);
            for (e, logits) in chunk.iter().zip(ev.logits.chunks(nl)) {
                // run_glue.py's predict file: the label name, or a regression's score to 3 decimals.
                let pred = if labels.is_regression() {
                    format!("{:.3}", logits.first().copied().unwrap_or(f32::NAN))
                } else {
                    labels.names.get(crate::metrics::argmax(logits) as usize).cloned().unwrap_or_else(|| "?".into())
                };
                out.push_str(&format!("{}\t{pred}", e.idx));
                if p.with_logits {
                    let l: Vec<String> = logits.iter().map(|v| format!("{v}")).collect();
                    out.push_str(&format!("\t{}", l.join(",")));
                }
                out.push('\n');
            }
        }
        checkpoint::write_atomic(&p.output, out.as_bytes())?;
        anyhow::Ok(rows.len())
    }
    .await;
    session.finish(false, false).await;
    result
}

/// `peftrain eval`: validation loss and accuracy of trained weights on a labelled split.
pub async fn run_eval(cfg: &TrainConfig, split: Split, workers: &Workers, net: &NetArgs) -> anyhow::Result<trainer::EvalResult> {
    cfg.validate_values().map_err(usage)?;
    check_local_workers(cfg, workers)?;
    let mut resolved = cfg.clone();
    resolve_inputs(&mut resolved)?;
    let cfg = &resolved;
    cfg.validate().map_err(usage)?;
    if split == Split::Test {
        anyhow::bail!("--split test has no labels: use `peftrain predict` for it");
    }
    let type_ids = send_type_ids(&cfg.model, cfg.max_length)?;
    let tok = TextTokenizer::load(&cfg.tokenizer_dir(), cfg.max_length)?;
    let (rows, _) = prepare_split(cfg, &tok, split, cfg.eval_limit)?;
    let mut session = Session::start(cfg, workers, type_ids, net, &StopSignal::default()).await?;
    let result =
        trainer::evaluate_sets(&mut session.cluster, &[(&rows, "")], cfg.eval_batch(), &cfg.metrics(), cfg.labels().is_regression(), cfg.quiet)
            .await
            .map_err(anyhow::Error::from);
    session.finish(false, false).await;
    result
}

/// `peftrain compare`: each method under the same settings, one after the other, then
/// `report.md` and `curves.png` in the output directory.
pub async fn run_compare(cfg: &TrainConfig, methods: &[MethodKind], workers: &Workers, net: &NetArgs) -> anyhow::Result<(PathBuf, PathBuf)> {
    cfg.validate_values().map_err(usage)?;
    crate::outdir::check_no_overlap("--output-dir", &cfg.output_dir, &cfg.inputs()).map_err(usage)?;
    if cfg.resume.is_none() {
        crate::outdir::claim_output_dir(&cfg.output_dir, cfg.overwrite_output_dir).map_err(usage)?;
    }
    let mut records = Vec::new();
    for &m in methods {
        let mut c = cfg.clone();
        c.method = cfg.method.with_kind(m);
        c.output_dir = cfg.output_dir.join(m.as_str());
        println!("\n== {m} ==");
        let s = run_training(&c, workers, net).await.with_context(|| format!("training {m}"))?;
        if let Some(sig) = s.stopped {
            anyhow::bail!("stopped by {sig} while training {m}; continue it with `peftrain train --resume --output-dir {}`", c.output_dir.display());
        }
        records.push(crate::compare::RunRecord::read(&c.output_dir).map_err(|e| anyhow!(e))?);
    }
    let names: Vec<&str> = methods.iter().map(|m| m.as_str()).collect();
    let title = format!("peftrain compare: {} on {}", names.join(", "), cfg.task_name());
    crate::compare::write_report(&cfg.output_dir, &title, &records).map_err(|e| anyhow!(e))
}

/// Resolves hub names: a `--model` that is not a directory is a Hugging Face repo id (local
/// cache first, else downloaded), and GLUE without a directory comes from the hub's `glue`.
pub fn resolve_inputs(cfg: &mut TrainConfig) -> anyhow::Result<()> {
    let opts = crate::hub::HubOptions::from_env();
    let spec = cfg.model.display().to_string();
    if !cfg.model.is_dir() {
        cfg.model = crate::hub::resolve_model(&spec, &opts)?;
        cfg.model_id = Some(spec);
    }
    if let Some(t) = &cfg.tokenizer {
        if !t.is_dir() {
            cfg.tokenizer = Some(crate::hub::resolve_model(&t.display().to_string(), &opts)?);
        }
    }
    if let Some(task) = cfg.glue_task() {
        cfg.task = Some(task);
        if cfg.glue_dir.is_none() {
            cfg.glue_dir = Some(crate::hub::resolve_glue(task, &opts)?);
        }
    }
    if cfg.labels.is_none() {
        cfg.labels = Some(match (cfg.task, &cfg.train_file) {
            (Some(t), _) => Labels::of_task(t),
            (None, Some(train)) => infer_labels(train, &cfg.user_columns())?,
            (None, None) => {
                return Err(usage(
                    "your data's labels are unknown: pass --train-file (their names come from it), --task, or --adapter trained weights whose trainable_config.json names them",
                ))
            }
        });
    }
    Ok(())
}

/// Takes the method of saved trainable weights: peftrain's `trainable_config.json` (the run's
/// method flags, as `run_config.json` has them), or peft's `adapter_config.json` (LoRA, IA3).
pub fn apply_adapter_method(cfg: &mut TrainConfig, dir: &Path) -> anyhow::Result<()> {
    let read = |name: &str| -> anyhow::Result<Option<(PathBuf, serde_json::Value)>> {
        let p = dir.join(name);
        if !p.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        let v = serde_json::from_str(&text).with_context(|| format!("{}: malformed JSON", p.display()))?;
        Ok(Some((p, v)))
    };
    if let Some((p, v)) = read("trainable_config.json")? {
        let labels = match v.get("labels") {
            Some(l) => {
                let l: Labels =
                    serde_path_to_error::deserialize(l).map_err(|e| anyhow!("{}: field `labels.{}`: {}", p.display(), e.path(), e.inner()))?;
                l.validate().map_err(|e| anyhow!("{}: field `labels`: {e}", p.display()))?;
                Some(l)
            }
            None => None,
        };
        let m: MethodArgs = serde_path_to_error::deserialize(v).map_err(|e| anyhow!("{}: field `{}`: {}", p.display(), e.path(), e.inner()))?;
        m.method().validate().map_err(|e| anyhow!("{}: {e}", p.display()))?;
        cfg.method = m;
        // The labels the weights were trained on name what they predict, unless the task
        // says otherwise.
        if cfg.labels.is_none() && cfg.task.is_none() {
            cfg.labels = labels;
        }
        return Ok(());
    }
    if let Some((p, v)) = read("adapter_config.json")? {
        let m = Method::from_peft_adapter_config(&v).map_err(|e| anyhow!("{}: {e}", p.display()))?;
        cfg.method = MethodArgs::of(&m);
        return Ok(());
    }
    anyhow::bail!("{}: neither trainable_config.json nor adapter_config.json found", dir.display())
}

/// Single-node mode's limits: a sane number of local processes and threads.
fn check_local_workers(cfg: &TrainConfig, workers: &Workers) -> anyhow::Result<()> {
    use peftrain_spec::check::int;
    if let Workers::Local { threads, max_local_workers, .. } = workers {
        if let Some(t) = threads {
            int("--threads", *t, 1..=1024).map_err(usage)?;
        }
        let cap = match max_local_workers {
            Some(m) => {
                int("--max-local-workers", *m, 1..=crate::config::MAX_WORKERS).map_err(usage)?;
                *m
            }
            None => default_max_local_workers(),
        };
        if cfg.workers > cap {
            return Err(usage(format!(
                "--workers {} exceeds --max-local-workers {cap}: single-node mode runs one process per worker on {} core(s); raise --max-local-workers to allow more",
                cfg.workers,
                crate::local::cores()
            )));
        }
    }
    Ok(())
}

/// Local worker processes allowed by default: four per core, at least eight.
pub fn default_max_local_workers() -> usize {
    (4 * crate::local::cores()).max(8)
}

/// The base model's digest the workers must match, from the coordinator's own files; None
/// (the first worker's replica fingerprint decides) when the coordinator has only config.json.
fn expected_model_digest(cfg: &TrainConfig) -> Option<String> {
    match peftrain_spec::digest::model_digest(&cfg.model, cfg.random_weights) {
        Ok(d) => Some(d),
        Err(why) => {
            tracing::info!("workers are not checked against this coordinator's model ({why}): the first to register fixes the group's fingerprint");
            None
        }
    }
}

/// Looks at the clock four times a second for as long as the registry lives, so a pause of
/// this process (SIGSTOP, a suspended VM) is seen and not taken for the workers' silence.
fn spawn_pause_watch(registry: &Arc<Registry>) {
    let weak = Arc::downgrade(registry);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            match weak.upgrade() {
                Some(r) => {
                    r.tick();
                }
                None => break,
            }
        }
    });
}

/// A checkpoint's position agrees with itself: its directory name, peftrain_state.json's
/// global_step and the optimizer's step count (one per applied update) tell the same story,
/// and it lies within this run.
fn check_resume_position(dir: &Path, p: &checkpoint::Position, total_steps: u64) -> anyhow::Result<()> {
    let named = dir.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("checkpoint-")).and_then(|n| n.parse::<u64>().ok());
    let applied = p.global_step.checked_sub(p.steps_skipped);
    let why = if named.is_some_and(|n| n != p.global_step) {
        Some(format!("peftrain_state.json says global_step {} but the directory is checkpoint-{}", p.global_step, named.unwrap_or(0)))
    } else if applied != Some(p.optimizer_step) {
        Some(format!(
            "peftrain_state.json says global_step {} with {} skipped, but optimizer.safetensors holds optimizer_step {}",
            p.global_step, p.steps_skipped, p.optimizer_step
        ))
    } else if p.consecutive_skipped > p.steps_skipped {
        Some(format!("peftrain_state.json says {} consecutive skipped steps of {} skipped in all", p.consecutive_skipped, p.steps_skipped))
    } else if p.global_step > total_steps {
        return Err(usage(format!(
            "--resume {}: the checkpoint is at step {}, beyond this run's {total_steps} steps (--max-steps, --epochs, --train-limit)",
            dir.display(),
            p.global_step
        )));
    } else {
        None
    };
    match why {
        Some(why) => anyhow::bail!("--resume {}: {why}: a damaged or edited checkpoint; nothing was changed", dir.display()),
        None => Ok(()),
    }
}
