//! `peftrain-worker`: a process holding one model replica; started by `peftrain train`
//! (single-node), by `peftrain worker`, or directly (a Kubernetes pod).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use peftrain_worker::model::{self, LoadOptions};
use peftrain_worker::peft::Method;
use peftrain_worker::run::{run_worker, Ended, WorkerOptions};

#[derive(Parser, Debug)]
#[command(name = "peftrain-worker", version, about = "peftrain worker: one RoBERTa/BERT replica")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Log lines (stderr) as text or JSON; RUST_LOG filters them.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"], env = "PEFTRAIN_LOG_FORMAT")]
    log_format: String,
    #[command(flatten)]
    worker: WorkerArgs,
}

#[derive(clap::Args, Debug)]
struct WorkerArgs {
    /// Coordinator URL (http://host:port).
    #[arg(long, env = "PEFTRAIN_COORDINATOR")]
    coordinator: Option<String>,
    /// cpu, cuda or cuda:I.
    #[arg(long, default_value = "cpu", env = "PEFTRAIN_DEVICE")]
    device: String,
    /// Intra-op threads for libtorch (default: libtorch's choice).
    #[arg(long, env = "PEFTRAIN_THREADS")]
    threads: Option<usize>,
    /// Address this worker's gRPC server binds.
    #[arg(long, default_value = "127.0.0.1:0", env = "PEFTRAIN_LISTEN")]
    listen: SocketAddr,
    /// host:port peers and the coordinator use to reach this worker (default: the bound address).
    #[arg(long, env = "PEFTRAIN_ADVERTISE")]
    advertise: Option<String>,
    /// Worker name, unique in the run (default: hostname-pid).
    #[arg(long, env = "PEFTRAIN_WORKER_ID")]
    id: Option<String>,
    /// This node's copy of the base model, if not at the path the coordinator names.
    #[arg(long, env = "PEFTRAIN_WORKER_MODEL")]
    model: Option<PathBuf>,
    /// Seconds the coordinator may be unreachable before this worker exits.
    #[arg(long, default_value_t = 60.0)]
    coordinator_timeout: f64,
    /// File holding the run's shared token (else PEFTRAIN_TOKEN).
    #[arg(long, env = "PEFTRAIN_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// TLS certificate (PEM) this worker serves and presents to peers.
    #[arg(long, env = "PEFTRAIN_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    #[arg(long, env = "PEFTRAIN_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// CA (PEM) that peers' and the coordinator's certificates chain to (mutual TLS).
    #[arg(long, env = "PEFTRAIN_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Serve Prometheus metrics (/metrics) and a JSON status (/status) over HTTP here.
    #[arg(long, env = "PEFTRAIN_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Seconds a ring peer may stay silent inside an all-reduce.
    #[arg(long, default_value_t = 30.0, env = "PEFTRAIN_WORKER_TIMEOUT")]
    worker_timeout: f64,
    /// Exit status after leaving the group on SIGTERM/SIGINT. Kubernetes counts a pod that
    /// exits 0 as done, and a Job never replaces a done index: the manifests set 143 (128 +
    /// SIGTERM) and their podFailurePolicy ignores it, so a preempted worker's index is
    /// started again when there is room.
    #[arg(long, default_value_t = 0, env = "PEFTRAIN_SIGNAL_EXIT_CODE")]
    signal_exit_code: u8,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write a merged Hugging Face checkpoint: the base model with trained weights (LoRA
    /// folded in, BitFit biases written in).
    Merge(MergeArgs),
    /// Print trainable and total parameter counts (peft's convention) as JSON; config.json only.
    Params(ParamsArgs),
    /// Run only the all-reduce, on a synthetic buffer, through the training code path: orders
    /// (JSON lines) on stdin, answers on stdout. Driven by bench/allreduce.sh.
    AllreduceBench(AllreduceBenchArgs),
}

#[derive(clap::Args, Debug)]
struct AllreduceBenchArgs {
    /// Address the Collective service binds (its bound address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Seconds a peer may stay silent inside an all-reduce.
    #[arg(long, default_value_t = 60.0)]
    worker_timeout: f64,
}

#[derive(clap::Args, Debug)]
struct ParamsArgs {
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    method: peftrain_spec::MethodArgs,
    #[arg(long, default_value_t = 2)]
    num_labels: i64,
}

#[derive(clap::Args, Debug)]
struct MergeArgs {
    #[command(flatten)]
    base: ParamsArgs,
    /// Trained weights: a peftrain output directory or a peft adapter.
    #[arg(long)]
    adapter: PathBuf,
    #[arg(long)]
    output: PathBuf,
    /// What the head predicts, as trainable_config.json's `labels` (JSON: problem_type and
    /// names); without it, the label count is read from the adapter's head.
    #[arg(long)]
    labels: Option<String>,
}

/// Outputs of the classification head saved in `dir` (peftrain's or peft's weights), if any.
fn head_outputs(dir: &std::path::Path) -> anyhow::Result<Option<i64>> {
    for f in ["trainable.safetensors", "adapter_model.safetensors"] {
        let p = dir.join(f);
        if !p.is_file() {
            continue;
        }
        let tensors = tch::Tensor::read_safetensors(&p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        let out = tensors.iter().find_map(|(k, t)| {
            let k = peftrain_worker::adapter_io::peft_key_to_name(k);
            (k == "classifier.out_proj.weight" || k == "classifier.weight").then(|| t.size().first().copied()).flatten()
        });
        return Ok(out);
    }
    Ok(None)
}

/// Writes `data` to `path` through a temporary file renamed into place.
fn write_atomic(path: &std::path::Path, data: &[u8]) -> anyhow::Result<()> {
    peftrain_spec::paths::write_atomic(path, data).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// What `merge` writes besides model.safetensors and config.json: the base's tokenizer files.
const TOKENIZER_FILES: [&str; 6] = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt", "vocab.txt"];

/// A refused argument: exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Usage(String);

fn merge(a: MergeArgs) -> anyhow::Result<()> {
    use peftrain_worker::replica::{Replica, ReplicaSpec};
    let p = &a.base;
    // Never into what it reads: writing model.safetensors over the base it is reading from, or
    // copying tokenizer files onto themselves, destroyed them.
    peftrain_spec::paths::check_no_overlap("--output", &a.output, &[("--model", &p.model), ("--adapter", &a.adapter)])
        .map_err(|e| anyhow::Error::new(Usage(e)))?;
    for f in ["model.safetensors", "config.json"].into_iter().chain(TOKENIZER_FILES) {
        if a.output.join(f).exists() {
            return Err(anyhow::Error::new(Usage(format!(
                "--output {}: already holds {f}; merge writes into a new or empty directory",
                a.output.display()
            ))));
        }
    }
    let method = typed_method(&p.method)?;
    let labels: Option<peftrain_spec::task::Labels> = match &a.labels {
        Some(j) => {
            let l: peftrain_spec::task::Labels = serde_json::from_str(j).map_err(|e| anyhow::Error::new(Usage(format!("--labels: {e}"))))?;
            l.validate().map_err(|e| anyhow::Error::new(Usage(format!("--labels: {e}"))))?;
            Some(l)
        }
        None => None,
    };
    // The merged model keeps the trained head's label count.
    let num_labels = match &labels {
        Some(l) => l.num_labels() as i64,
        None => head_outputs(&a.adapter)?.unwrap_or(p.num_labels),
    };
    let spec = ReplicaSpec {
        model_dir: p.model.clone(),
        method,
        num_labels,
        regression: labels.as_ref().is_some_and(|l| l.is_regression()),
        seed: 0,
        init_adapter: Some(a.adapter.clone()),
        optimizer: Default::default(),
        max_grad_norm: 1.0,
        base_kind: tch::Kind::Float,
        random_init: false,
        padding_free: false,
    };
    let r = Replica::build(&spec, tch::Device::Cpu)?;
    std::fs::create_dir_all(&a.output).map_err(|e| anyhow::anyhow!("{}: {e}", a.output.display()))?;
    let tensors = r.merged_tensors();
    let out = a.output.join("model.safetensors");
    let tmp = peftrain_spec::paths::temp_beside(&out);
    tch::Tensor::write_safetensors(&tensors, &tmp).map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    std::fs::rename(&tmp, &out).map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    // config.json as the base has it, named for the task head it now carries.
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&r.loaded.files.config)?)?;
    if let Some(o) = cfg.as_object_mut() {
        o.insert("architectures".into(), serde_json::json!([r.loaded.class_name()]));
        // The trained labels' names (transformers' LABEL_i where they are unknown), and a
        // regression's problem_type, so pipelines and run_glue read the head as trained.
        let id2label: Vec<(usize, String)> = match &labels {
            Some(l) => l.id2label(),
            None => (0..num_labels as usize).map(|i| (i, format!("LABEL_{i}"))).collect(),
        };
        o.insert("id2label".into(), id2label.iter().map(|(i, n)| (i.to_string(), serde_json::json!(n))).collect::<serde_json::Map<_, _>>().into());
        o.insert("label2id".into(), id2label.iter().map(|(i, n)| (n.clone(), serde_json::json!(i))).collect::<serde_json::Map<_, _>>().into());
        if let Some(l) = &labels {
            o.insert("problem_type".into(), serde_json::to_value(l.problem)?);
        }
    }
    write_atomic(&a.output.join("config.json"), &serde_json::to_vec_pretty(&cfg)?)?;
    for f in TOKENIZER_FILES {
        let src = p.model.join(f);
        if src.is_file() {
            let bytes = std::fs::read(&src).map_err(|e| anyhow::anyhow!("{}: {e}", src.display()))?;
            write_atomic(&a.output.join(f), &bytes)?;
        }
    }
    println!("{}", serde_json::json!({ "tensors": tensors.len(), "output": a.output }));
    Ok(())
}

/// The method the flags name, its numbers checked (a refusal exits 2).
fn typed_method(flags: &peftrain_spec::MethodArgs) -> anyhow::Result<Method> {
    let method = flags.method();
    method.validate().map_err(|e| anyhow::Error::new(Usage(e)))?;
    Ok(method)
}

fn params(a: ParamsArgs) -> anyhow::Result<()> {
    let method = typed_method(&a.method)?;
    let opts = LoadOptions {
        method: &method,
        device: tch::Device::Cpu,
        base_kind: tch::Kind::Float,
        num_labels: Some(a.num_labels),
        seed: 0,
        shapes_only: true,
        random_init: false,
    };
    let loaded = model::load(&a.model, &opts)?;
    let trainable = loaded.params.trainable_count();
    let all = loaded.params.total_count() + loaded.peft_extra_params(&method);
    // Raw counts; `peftrain params` formats peft's line from them.
    println!("{}", serde_json::json!({ "trainable": trainable, "all": all }));
    Ok(())
}

/// The async runtime of a worker process (gRPC, the all-reduce; the replica computes on its
/// own thread).
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

fn allreduce_bench(a: AllreduceBenchArgs) -> anyhow::Result<()> {
    use peftrain_spec::check::{float, Interval, MAX_SECONDS};
    float("--worker-timeout", a.worker_timeout, Interval::above(0.0, MAX_SECONDS)).map_err(|e| anyhow::Error::new(Usage(e)))?;
    let security = peftrain_net::Security::load(&peftrain_net::SecurityArgs { token: std::env::var("PEFTRAIN_TOKEN").ok(), ..Default::default() })
        .map_err(|e| anyhow::Error::new(Usage(e.to_string())))?;
    // A training worker's runtime: the same threads carry the same all-reduce.
    runtime()?.block_on(peftrain_worker::bench::run(a.listen, security, Duration::from_secs_f64(a.worker_timeout)))
}

/// The worker's own numeric flags, checked before anything is started from them.
fn worker_numbers(w: &WorkerArgs) -> anyhow::Result<()> {
    use peftrain_spec::check::{float, int, Interval, MAX_SECONDS};
    if let Some(t) = w.threads {
        int("--threads", t, 1..=1024).map_err(|e| anyhow::Error::new(Usage(e)))?;
    }
    float("--coordinator-timeout", w.coordinator_timeout, Interval::above(0.0, MAX_SECONDS)).map_err(|e| anyhow::Error::new(Usage(e)))?;
    float("--worker-timeout", w.worker_timeout, Interval::above(0.0, MAX_SECONDS)).map_err(|e| anyhow::Error::new(Usage(e)))?;
    Ok(())
}

fn main() {
    let cli: Cli = match peftrain_spec::parse_cli("peftrain-worker") {
        Ok(c) => c,
        Err(code) => std::process::exit(code.into()),
    };
    peftrain_net::logging::init(cli.log_format == "json", false);
    let result = match cli.command {
        Some(Command::Params(a)) => params(a),
        Some(Command::Merge(a)) => merge(a),
        Some(Command::AllreduceBench(a)) => allreduce_bench(a),
        None => {
            let w = cli.worker;
            let signal_exit_code = w.signal_exit_code;
            match w.coordinator.clone() {
                None => Err(anyhow::anyhow!("--coordinator URL is required (or PEFTRAIN_COORDINATOR)")),
                Some(coordinator) => worker_numbers(&w).and_then(|()| {
                    let id = w.id.unwrap_or_else(|| {
                        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
                        format!("{}-{}", host.trim(), std::process::id())
                    });
                    let opts = WorkerOptions {
                        coordinator,
                        device: w.device,
                        threads: w.threads,
                        listen: w.listen,
                        advertise: w.advertise,
                        id,
                        model_override: w.model,
                        coordinator_timeout: Duration::from_secs_f64(w.coordinator_timeout),
                        collective_timeout: Duration::from_secs_f64(w.worker_timeout),
                        security: peftrain_net::Security::default(),
                        metrics_listen: w.metrics_listen,
                    };
                    let security = peftrain_net::Security::load(&peftrain_net::SecurityArgs {
                        token_file: w.token_file,
                        token: std::env::var("PEFTRAIN_TOKEN").ok(),
                        tls_cert: w.tls_cert,
                        tls_key: w.tls_key,
                        tls_ca: w.tls_ca,
                    });
                    // A refused token or TLS file is input, not a failure: exit 2.
                    let opts = match security {
                        Ok(security) if security.token().is_none() => {
                            Err(anyhow::Error::new(Usage("a worker needs the run's shared token: --token-file FILE or PEFTRAIN_TOKEN".into())))
                        }
                        Ok(security) => Ok(WorkerOptions { security, ..opts }),
                        Err(e) => Err(anyhow::Error::new(Usage(e.to_string()))),
                    };
                    opts.and_then(|opts| {
                        runtime().and_then(|rt| rt.block_on(run_worker(opts))).map(|ended| {
                            if ended == Ended::Left && signal_exit_code != 0 {
                                std::process::exit(signal_exit_code.into());
                            }
                        })
                    })
                }),
            }
        }
    };
    if let Err(e) = result {
        eprintln!("peftrain-worker: error: {}", peftrain_net::logging::error_line(e.as_ref()));
        std::process::exit(if e.downcast_ref::<Usage>().is_some() { 2 } else { 1 });
    }
}
