//! A worker process's life: learn the run from the coordinator, build the replica, serve the
//! Worker and Collective services, register, heartbeat, and stop when told or when the
//! coordinator is gone for longer than its timeout. SIGTERM (a preemption, a node drain) makes
//! it ask to leave: the coordinator lets it go at the next step boundary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use peftrain_net::InterceptedService;
use peftrain_proto::v1 as pb;
use tch::{Device, Kind};
use tokio::net::TcpListener;
use tonic::transport::Channel;

/// Largest message a worker accepts from the coordinator: a shard, a state chunk.
pub const WORKER_MESSAGE_LIMIT: usize = 16 << 20;

use crate::compute::ComputeThread;
use crate::engine::Engine;
use crate::peft::Method;
use crate::replica::{Replica, ReplicaSpec};
use crate::service::{collective_service, WorkerService};
use peftrain_spec::BaseDtype;

/// How a worker process is started.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub coordinator: String,
    pub device: String,
    pub threads: Option<usize>,
    pub listen: SocketAddr,
    pub advertise: Option<String>,
    pub id: String,
    /// This node's copy of the base model, when it is not at the path the coordinator names.
    pub model_override: Option<PathBuf>,
    /// How long the coordinator may be unreachable before the worker gives up.
    pub coordinator_timeout: Duration,
    /// How long a peer may stay silent inside an all-reduce.
    pub collective_timeout: Duration,
    /// The run's token and TLS files.
    pub security: peftrain_net::Security,
    /// Serve Prometheus `/metrics` and JSON `/status` here.
    pub metrics_listen: Option<SocketAddr>,
}

/// How a worker's life ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The coordinator ended the run.
    Finished,
    /// A signal asked it to stop, and it left its group at a step boundary (or had none).
    Left,
}

/// Parses `cpu`, `cuda` or `cuda:I`, loading libtorch's CUDA library when needed.
pub fn parse_device(s: &str) -> anyhow::Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let index: usize = match s.strip_prefix("cuda:") {
                Some(i) => i.parse().map_err(|_| anyhow::anyhow!("--device {s}: bad GPU index"))?,
                None => 0,
            };
            crate::cuda::load_torch_cuda();
            if !tch::Cuda::is_available() {
                anyhow::bail!("--device {s}: CUDA is not available to libtorch (no GPU, or libtorch_cuda.so could not be loaded)");
            }
            let n = tch::Cuda::device_count() as usize;
            if index >= n {
                anyhow::bail!("--device {s}: only {n} GPU(s) visible");
            }
            Ok(Device::Cuda(index))
        }
        other => anyhow::bail!("--device {other:?}: expected cpu, cuda or cuda:I"),
    }
}

/// `--base-dtype auto`, as measured (docs/performance.md keeps one table per CPU class): bf16
/// on a CPU whose matmuls have native bf16 instructions — AMX-BF16 (bf16 several times faster
/// than fp32) or AVX512-BF16 (1.3x faster, same accuracy) — and fp32 elsewhere: with AVX2 alone
/// bf16 is emulated and the demo ran 8x slower than in fp32. On a GPU at these batch sizes the
/// step is bound by kernel launches, and bf16's casts made it slower. Returns the dtype and why,
/// for the run's header line.
pub fn auto_base_kind(device: Device) -> (Kind, &'static str) {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has = |flag: &str| cpuinfo.split_whitespace().any(|f| f == flag);
    match device {
        Device::Cpu if has("amx_bf16") => (Kind::BFloat16, "auto: this CPU has AMX-BF16, where bf16 was measured faster than fp32"),
        Device::Cpu if has("avx512_bf16") => (Kind::BFloat16, "auto: this CPU has AVX512-BF16, where bf16 was measured faster than fp32"),
        Device::Cpu => (Kind::Float, "auto: this CPU has neither AMX-BF16 nor AVX512-BF16, so bf16 would be emulated and slower"),
        _ => (Kind::Float, "auto: on a GPU these steps are launch-bound and bf16 was measured slower"),
    }
}

/// The base dtype a wire spec asks for on `device`, and a note on how it was chosen.
pub fn base_kind(dtype: &str, device: Device) -> anyhow::Result<(Kind, String)> {
    let dtype = BaseDtype::from_wire(dtype).map_err(|e| anyhow::anyhow!("base dtype {e}"))?;
    Ok(match dtype {
        BaseDtype::Fp32 => (Kind::Float, "fp32 (--base-dtype fp32)".to_string()),
        BaseDtype::Bf16 => (Kind::BFloat16, "bf16 (--base-dtype bf16)".to_string()),
        BaseDtype::Auto => {
            let (k, why) = auto_base_kind(device);
            (k, format!("{} ({why})", if k == Kind::BFloat16 { "bf16" } else { "fp32" }))
        }
    })
}

/// The replica a wire `RunSpec` describes, on `device`.
pub fn replica_spec(spec: &pb::RunSpec, device: Device) -> anyhow::Result<ReplicaSpec> {
    let method = Method::from_proto(&spec.method.clone().unwrap_or_default()).map_err(|e| anyhow::anyhow!(e))?;
    // Numbers from the wire are checked like flags before anything is built from them.
    let o = peftrain_spec::optimizer::Optimizer::from_proto(&spec.optimizer.unwrap_or_default()).map_err(anyhow::Error::msg)?;
    if !(1..=1 << 16).contains(&spec.num_labels) {
        anyhow::bail!("run spec: num_labels {} is outside 1..=65536", spec.num_labels);
    }
    let (base_kind, _) = base_kind(&spec.base_dtype, device)?;
    let (model_dir, random_init) = match spec.model_dir.strip_prefix("random:") {
        Some(dir) => (dir.to_string(), true),
        None => (spec.model_dir.clone(), false),
    };
    Ok(ReplicaSpec {
        model_dir: PathBuf::from(model_dir),
        method,
        num_labels: spec.num_labels as i64,
        regression: spec.regression,
        seed: spec.seed,
        init_adapter: (!spec.init_adapter.is_empty()).then(|| PathBuf::from(&spec.init_adapter)),
        optimizer: o.adamw,
        max_grad_norm: o.max_grad_norm,
        base_kind,
        random_init,
        padding_free: spec
            .padding
            .parse::<peftrain_spec::Padding>()
            .map_err(|why| anyhow::anyhow!("padding {why}"))?
            .is_free_on(device == Device::Cpu),
    })
}

fn coordinator_channel(url: &str, security: &peftrain_net::Security) -> anyhow::Result<Channel> {
    Ok(security
        .endpoint(url, Duration::from_secs(5))
        .map_err(|e| anyhow::anyhow!("--coordinator {url}: {e}"))?
        .timeout(Duration::from_secs(30))
        .connect_lazy())
}

/// Retries `f` with exponential backoff until it succeeds, fails with a status that retrying
/// cannot cure, or `deadline` passes.
async fn with_backoff<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let start = Instant::now();
    let mut wait = Duration::from_millis(100);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(s) if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown) => {
                if start.elapsed() > deadline {
                    anyhow::bail!("{what}: coordinator unreachable for {:.0} s: {}", deadline.as_secs_f64(), s.message());
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            Err(s) => anyhow::bail!("{what}: {} ({:?})", s.message(), s.code()),
        }
    }
}

type CoordinatorClient = pb::coordinator_client::CoordinatorClient<peftrain_net::AuthChannel>;

/// Hello to the coordinator, retried with backoff while it is unreachable.
async fn say_hello(coord: &CoordinatorClient, opts: &WorkerOptions) -> anyhow::Result<pb::HelloReply> {
    with_backoff("hello", opts.coordinator_timeout, || {
        let mut c = coord.clone();
        let req = pb::HelloRequest { protocol_version: pb::PROTOCOL_VERSION, worker_id: opts.id.clone() };
        async move { c.hello(req).await.map(|r| r.into_inner()) }
    })
    .await
}

pub async fn run_worker(opts: WorkerOptions) -> anyhow::Result<Ended> {
    let device = parse_device(&opts.device)?;
    opts.security.require_token("a worker")?;
    let stop = peftrain_net::signals::StopSignal::install()?;
    let listener = TcpListener::bind(opts.listen).await.map_err(|e| anyhow::anyhow!("--listen {}: {e}", opts.listen))?;
    let bound = listener.local_addr()?;
    let address = match &opts.advertise {
        Some(a) => a.clone(),
        None if bound.ip().is_unspecified() => anyhow::bail!("--listen {bound} needs --advertise HOST:PORT so peers can reach this worker"),
        None => bound.to_string(),
    };
    let mut coord = pb::coordinator_client::CoordinatorClient::with_interceptor(
        coordinator_channel(&opts.coordinator, &opts.security)?,
        opts.security.client_auth(),
    );
    // A stop asked for while the coordinator is still out of reach ends the wait at once.
    let hello = tokio::select! {
        h = say_hello(&coord, &opts) => h?,
        _ = stop.asked() => return Ok(Ended::Left),
    };
    let spec_pb = hello.spec.ok_or_else(|| anyhow::anyhow!("coordinator sent no run spec"))?;
    let mut spec = replica_spec(&spec_pb, device)?;
    if let Some(dir) = &opts.model_override {
        spec.model_dir = dir.clone();
    }
    tracing::info!(worker = %opts.id, model = %spec.model_dir.display(), method = spec.method.name(), device = ?device, "building replica");
    let model_digest = peftrain_spec::digest::model_digest(&spec.model_dir, spec.random_init).map_err(anyhow::Error::msg)?;
    let (_, base_dtype) = base_kind(&spec_pb.base_dtype, device)?;
    let method_name = spec.method.name().to_string();
    let (compute, info) = ComputeThread::start(opts.threads, move || Replica::build(&spec, device))?;
    let fp = info.fingerprint.clone();
    tracing::debug!(trainable = fp.trainable_params, all = info.peft_all_params, "replica built");
    let engine = Arc::new(Engine::new(compute, &info, opts.security.clone(), opts.collective_timeout));
    engine.stat(|s| {
        s.worker_id = opts.id.clone();
        s.device = opts.device.clone();
        s.run_id = hello.run_id.clone();
        s.task = spec_pb.task.clone();
        s.method = method_name;
    });
    if let Some(addr) = opts.metrics_listen {
        let l = TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("--metrics-listen {addr}: {e}"))?;
        tracing::info!(metrics_address = %l.local_addr()?, "serving /metrics and /status");
        let e = engine.clone();
        let s = engine.clone();
        let router = peftrain_net::http::router(
            Arc::new(move || e.stats().prometheus()),
            Arc::new(move || serde_json::to_string_pretty(&s.stats()).unwrap_or_default() + "\n"),
        );
        tokio::spawn(peftrain_net::http::serve_http(l, router, std::future::pending::<()>()));
    }

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<pb::worker_server::WorkerServer<WorkerService>>().await;
    let serve_engine = engine.clone();
    let incoming = peftrain_net::serve::incoming(listener);
    let mut builder = peftrain_net::serve::server_builder();
    if let Some(tls) = opts.security.server_tls()? {
        builder = builder.tls_config(tls)?;
    }
    let auth = opts.security.server_auth();
    let server = tokio::spawn(async move {
        builder
            // Health stays open: Kubernetes' gRPC probes carry no token.
            .add_service(health_service)
            .add_service(InterceptedService::new(
                pb::worker_server::WorkerServer::new(WorkerService(serve_engine.clone()))
                    .max_decoding_message_size(WORKER_MESSAGE_LIMIT)
                    .max_encoding_message_size(256 << 20),
                auth.clone(),
            ))
            .add_service(collective_service(serve_engine.comm.clone(), auth))
            .serve_with_incoming_shutdown(incoming, async move {
                serve_engine.shutdown.notified().await;
                serve_engine.comm.close();
            })
            .await
    });

    let reg = pb::RegisterRequest {
        protocol_version: pb::PROTOCOL_VERSION,
        worker_id: opts.id.clone(),
        run_id: hello.run_id.clone(),
        address: address.clone(),
        device: opts.device.clone(),
        threads: opts.threads.unwrap_or(0) as u32,
        fingerprint: Some(to_pb_fingerprint(&fp)),
        newly_initialized: info.newly_initialized.clone(),
        model_class: info.model_class.clone(),
        non_embedding_params: info.non_embedding_params,
        peft_all_params: info.peft_all_params,
        model_digest,
        base_dtype,
    };
    // Leaving (a stop was asked for): the local server stops, and the process exits as Left.
    let leave = || {
        engine.shutdown.notify_one();
        Ok(Ended::Left)
    };
    let mut server = server;
    let mut run_id = hello.run_id.clone();
    // Heartbeats well inside the coordinator's worker timeout.
    let beat = (opts.collective_timeout / 4).clamp(Duration::from_millis(200), Duration::from_secs(2));
    loop {
        if stop.requested().is_some() {
            // Asked to stop before (re)joining a group: nobody to leave.
            return leave();
        }
        let register = with_backoff("register", opts.coordinator_timeout, || {
            let mut c = coord.clone();
            let req = pb::RegisterRequest { run_id: run_id.clone(), ..reg.clone() };
            async move { c.register(req).await.map(|r| r.into_inner()) }
        });
        let reply = tokio::select! {
            r = register => r,
            _ = stop.asked() => {
                return leave();
            }
        };
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                engine.shutdown.notify_one();
                return Err(e);
            }
        };
        tracing::info!(worker = %opts.id, %address, "registered ({}/{})", reply.registered, reply.expected);

        // Heartbeats until the coordinator stops knowing us (it restarted, or declared us lost
        // while we were frozen): then register again, with the same replica.
        // A signal is told at once rather than at the next beat, so the coordinator lets this
        // worker go at the very next step boundary.
        let mut last_ok = Instant::now();
        let mut asked_at: Option<Instant> = None;
        loop {
            tokio::select! {
                res = &mut server => {
                    res??;
                    return Ok(if stop.requested().is_some() { Ended::Left } else { Ended::Finished });
                }
                _ = tokio::time::sleep(beat) => {}
                _ = stop.asked(), if asked_at.is_none() => {}
            }
            let leaving = stop.requested().is_some();
            if leaving && asked_at.is_none() {
                tracing::info!(worker = %opts.id, "asked to stop: leaving the group at the next step boundary");
                asked_at = Some(Instant::now());
            }
            // Bounded: a coordinator that does not let this worker go within its timeout (it is
            // evaluating, or too old to know `leaving`) is left without a goodbye.
            if asked_at.is_some_and(|t| t.elapsed() > opts.coordinator_timeout) {
                return leave();
            }
            let req = pb::HeartbeatRequest { worker_id: opts.id.clone(), run_id: run_id.clone(), leaving };
            let mut hb = tonic::Request::new(req);
            hb.set_timeout(beat * 2);
            match coord.heartbeat(hb).await {
                Ok(r) if r.get_ref().known => last_ok = Instant::now(),
                // Forgotten while leaving, or the coordinator gone (connection refused: a local
                // coordinator's death is what sent the SIGTERM): nothing to wait for.
                Ok(_) if leaving => {
                    return leave();
                }
                Err(s) if leaving && s.code() == tonic::Code::Unavailable => {
                    return leave();
                }
                Ok(_) => break,
                Err(_) if last_ok.elapsed() > opts.coordinator_timeout => {
                    engine.shutdown.notify_one();
                    anyhow::bail!("coordinator {} unreachable for {:.0} s", opts.coordinator, opts.coordinator_timeout.as_secs_f64());
                }
                Err(_) => {}
            }
        }
        if stop.requested().is_some() {
            return leave();
        }
        let again = tokio::select! {
            h = say_hello(&coord, &opts) => h?,
            _ = stop.asked() => {
                return leave();
            }
        };
        if again.spec != Some(spec_pb.clone()) {
            engine.shutdown.notify_one();
            anyhow::bail!("the coordinator now runs a different model or method; start a new worker for it");
        }
        tracing::info!(worker = %opts.id, "coordinator run {} does not know this worker; registering again", again.run_id);
        run_id = again.run_id;
        engine.stat(|s| s.new_run(&run_id));
    }
}

pub fn to_pb_fingerprint(fp: &crate::replica::Fingerprint) -> pb::Fingerprint {
    pb::Fingerprint {
        digest: fp.digest.clone(),
        model_type: fp.model_type.clone(),
        trainable_params: fp.trainable_params,
        total_params: fp.total_params,
        layout: fp.layout.iter().map(|(n, s, k)| pb::TensorInfo { name: n.clone(), shape: s.clone(), dtype: k.clone() }).collect(),
    }
}
