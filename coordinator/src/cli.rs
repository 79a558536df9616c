//! The `peftrain` command line (clap): the subcommands and the flags outside a run's
//! configuration; the run's own flags are `TrainConfig`'s, derived from it.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use peftrain_spec::{MethodArgs, MethodKind};

use crate::config::TrainConfig;

#[derive(Parser, Debug)]
#[command(name = "peftrain", version, about = "Parameter-efficient fine-tuning of RoBERTa/BERT on GLUE across many workers")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log lines (stderr) as text or JSON; RUST_LOG filters them.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"], env = "PEFTRAIN_LOG_FORMAT")]
    pub log_format: String,
    /// No progress bars or progress lines, and only warnings in the log.
    #[arg(long, global = true, env = "PEFTRAIN_QUIET")]
    pub quiet: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train in single-node mode: the coordinator in-process, N local workers on loopback.
    Train(TrainCmd),
    /// Run the coordinator alone; workers join with `peftrain worker --coordinator URL`.
    Coordinator(CoordinatorCmd),
    /// Run a worker (hands over to `peftrain-worker` beside this binary).
    #[command(disable_help_flag = true)]
    Worker {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Print peft's trainable-parameter line for a model and method (config.json only).
    Params(ParamsCmd),
    /// Predict a split with trained weights: `index<TAB>prediction` per row.
    Predict(PredictCmd),
    /// Evaluate trained weights on a labelled split: validation loss and accuracy.
    Eval(EvalCmd),
    /// Train several methods under the same settings and write report.md with plots.
    Compare(CompareCmd),
    /// Write a merged Hugging Face checkpoint (LoRA folded in, BitFit biases written in).
    Merge(MergeCmd),
    /// Push an output directory to a Hugging Face Hub model repo (HF_ENDPOINT, HF_TOKEN), as
    /// Trainer.push_to_hub does: everything but checkpoint-* and _*, in one commit.
    Push(PushCmd),
    /// Write report.md and curves.png for finished runs (e.g. one per method, each run on a
    /// cluster with `peftrain coordinator`).
    Report(ReportCmd),
}

#[derive(Args, Debug)]
pub struct PushCmd {
    /// The directory to push: a run's --output-dir (adapter or weights, model card, logs) or
    /// a `merge` output.
    pub dir: PathBuf,
    /// The repo: ORG/NAME, or NAME in the token owner's namespace (TrainingArguments'
    /// hub_model_id).
    #[arg(long, alias = "hub-model-id")]
    pub repo_id: String,
    /// The branch to commit to.
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// Create the repo private (an existing repo keeps its visibility).
    #[arg(long, alias = "hub-private-repo")]
    pub private: bool,
    /// The commit's summary line (the Trainer's "End of training").
    #[arg(long, default_value = "End of training")]
    pub commit_message: String,
}

#[derive(Args, Debug)]
pub struct ReportCmd {
    /// Output directories of finished runs, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub runs: Vec<PathBuf>,
    #[arg(long)]
    pub output_dir: PathBuf,
    #[arg(long, default_value = "peftrain report")]
    pub title: String,
}

#[derive(Args, Debug)]
pub struct EvalCmd {
    #[command(flatten)]
    pub file: FileFlags,
    #[command(flatten)]
    pub train: TrainConfig,
    #[command(flatten)]
    pub local: LocalArgs,
    #[command(flatten)]
    pub net: NetFlags,
    /// Trained weights: a peftrain output directory or a peft adapter directory.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// dev (or train).
    #[arg(long, default_value = "dev")]
    pub split: String,
}

#[derive(Args, Debug)]
pub struct CompareCmd {
    #[command(flatten)]
    pub file: FileFlags,
    #[command(flatten)]
    pub train: TrainConfig,
    #[command(flatten)]
    pub local: LocalArgs,
    #[command(flatten)]
    pub net: NetFlags,
    /// Methods to train, one run each, under the same settings (each with its default
    /// learning rate unless --lr is given).
    #[arg(long, value_parser = peftrain_spec::flag::<MethodKind>, value_delimiter = ',', default_value = "full,bitfit,lora")]
    pub methods: Vec<MethodKind>,
}

#[derive(Args, Debug)]
pub struct MergeCmd {
    #[arg(long)]
    pub model: PathBuf,
    /// A peftrain output directory or a peft adapter directory.
    #[arg(long)]
    pub adapter: PathBuf,
    #[arg(long)]
    pub output: PathBuf,
}

/// The flags about the configuration rather than in it.
#[derive(Args, Debug, Clone)]
pub struct FileFlags {
    /// A TOML file of flags (`batch_size = 16`, `method = "lora"`). Precedence: command line,
    /// then PEFTRAIN_* environment variables, then this file, then the defaults.
    #[arg(long, env = "PEFTRAIN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the resolved configuration as JSON and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// The shared token and TLS (the token's value may also come from PEFTRAIN_TOKEN).
#[derive(Args, Debug, Clone)]
pub struct NetFlags {
    /// File holding the run's shared token, required on every RPC (else PEFTRAIN_TOKEN; in
    /// single-node mode a random one is made when neither is given).
    #[arg(long, env = "PEFTRAIN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// TLS certificate (PEM) of the coordinator (and, single-node, of its workers).
    #[arg(long, env = "PEFTRAIN_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, env = "PEFTRAIN_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) the workers' certificates chain to: mutual TLS.
    #[arg(long, env = "PEFTRAIN_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Serve Prometheus metrics (/metrics) and a JSON status (/status) over HTTP here.
    #[arg(long, env = "PEFTRAIN_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// After the run, keep serving health, metrics and status until terminated (for a
    /// Kubernetes Deployment, which would restart a coordinator that exits).
    #[arg(long, env = "PEFTRAIN_KEEP_SERVING")]
    pub keep_serving: bool,
}

impl NetFlags {
    pub fn to_args(&self) -> crate::app::NetArgs {
        crate::app::NetArgs {
            security: peftrain_net::SecurityArgs {
                token_file: self.token_file.clone(),
                token: std::env::var("PEFTRAIN_TOKEN").ok(),
                tls_cert: self.tls_cert.clone(),
                tls_key: self.tls_key.clone(),
                tls_ca: self.tls_ca.clone(),
            },
            metrics_listen: self.metrics_listen,
            keep_serving: self.keep_serving,
        }
    }
}

#[derive(Args, Debug)]
pub struct LocalArgs {
    /// Device of the local workers: cpu, cuda or cuda:I.
    #[arg(long, default_value = "cpu", env = "PEFTRAIN_DEVICE")]
    pub device: String,
    /// libtorch threads per local worker (default: cores / workers).
    #[arg(long, env = "PEFTRAIN_THREADS")]
    pub threads: Option<usize>,
    /// Most worker processes single-node mode may start (default: 4 per core, at least 8).
    #[arg(long, env = "PEFTRAIN_MAX_LOCAL_WORKERS")]
    pub max_local_workers: Option<usize>,
}

#[derive(Args, Debug)]
pub struct TrainCmd {
    #[command(flatten)]
    pub file: FileFlags,
    #[command(flatten)]
    pub train: TrainConfig,
    #[command(flatten)]
    pub local: LocalArgs,
    #[command(flatten)]
    pub net: NetFlags,
}

#[derive(Args, Debug)]
pub struct CoordinatorCmd {
    /// Address to listen on for workers.
    #[arg(long, default_value = "0.0.0.0:50051", env = "PEFTRAIN_LISTEN")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub file: FileFlags,
    #[command(flatten)]
    pub train: TrainConfig,
    #[command(flatten)]
    pub net: NetFlags,
    /// Exit status after stopping on SIGTERM/SIGINT with a checkpoint written. Kubernetes
    /// counts a pod that exits 0 as done, and a JobSet whose coordinator is done is Completed:
    /// the manifests set 143 (128 + SIGTERM), which their podFailurePolicy ignores, so the
    /// coordinator is started again and resumes.
    #[arg(long, default_value_t = 0, env = "PEFTRAIN_SIGNAL_EXIT_CODE")]
    pub signal_exit_code: u8,
}

#[derive(Args, Debug)]
pub struct ParamsCmd {
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub method: MethodArgs,
    #[arg(long, default_value_t = 2)]
    pub num_labels: u32,
}

#[derive(Args, Debug)]
pub struct PredictCmd {
    #[command(flatten)]
    pub file: FileFlags,
    #[command(flatten)]
    pub train: TrainConfig,
    #[command(flatten)]
    pub local: LocalArgs,
    /// Trained weights: a peftrain output directory or a peft adapter directory.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// dev or test.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Where to write `index<TAB>prediction`.
    #[arg(long)]
    pub output: PathBuf,
    /// Add each row's logits.
    #[arg(long)]
    pub with_logits: bool,
    #[command(flatten)]
    pub net: NetFlags,
}
