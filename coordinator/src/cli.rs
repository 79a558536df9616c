//! The `peftrain` command line (clap): flags, their defaults, and their mapping onto the plain
//! `TrainConfig`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::app::default_glue_dir;
use crate::config::TrainConfig;
use crate::data::Task;

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
    /// Write report.md and curves.png for finished runs (e.g. one per method, each run on a
    /// cluster with `peftrain coordinator`).
    Report(ReportCmd),
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
    pub train: TrainArgs,
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
    pub train: TrainArgs,
    #[command(flatten)]
    pub local: LocalArgs,
    #[command(flatten)]
    pub net: NetFlags,
    /// Methods to train, one run each, under the same settings (each with its default
    /// learning rate unless --lr is given).
    #[arg(long, value_delimiter = ',', default_value = "full,bitfit,lora")]
    pub methods: Vec<String>,
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

#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// A TOML file of flags (`batch_size = 16`, `method = "lora"`). Precedence: command line,
    /// then PEFTRAIN_* environment variables, then this file, then the defaults.
    #[arg(long, env = "PEFTRAIN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the resolved configuration as JSON and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Model directory (config.json and model.safetensors / pytorch_model.bin).
    #[arg(long, env = "PEFTRAIN_MODEL")]
    pub model: PathBuf,
    /// Tokenizer directory (default: the model directory).
    #[arg(long, env = "PEFTRAIN_TOKENIZER")]
    pub tokenizer: Option<PathBuf>,
    /// sst2 or rte.
    #[arg(long, default_value = "sst2", value_parser = parse_task, env = "PEFTRAIN_TASK")]
    pub task: Task,
    /// Directory with the GLUE layout (SST-2/, RTE/) or the HF parquet layout (sst2/, rte/).
    /// Default: ../shared/data/glue where it exists, else the Hugging Face Hub's `glue` dataset.
    #[arg(long, env = "GLUE_DIR")]
    pub glue_dir: Option<PathBuf>,
    /// full, bitfit or lora.
    #[arg(long, default_value = "lora", env = "PEFTRAIN_METHOD")]
    pub method: String,
    /// BitFit: `all` (all biases + head, the paper) or `bias-only` (parameters named bias).
    #[arg(long, env = "PEFTRAIN_BITFIT_SCOPE", default_value = "all")]
    pub bitfit_scope: String,
    #[arg(long, env = "PEFTRAIN_LORA_R", default_value_t = 8)]
    pub lora_r: u32,
    #[arg(long, env = "PEFTRAIN_LORA_ALPHA", default_value_t = 16.0)]
    pub lora_alpha: f64,
    #[arg(long, env = "PEFTRAIN_LORA_DROPOUT", default_value_t = 0.1)]
    pub lora_dropout: f64,
    /// Comma-separated module names LoRA adapts.
    #[arg(long, env = "PEFTRAIN_LORA_TARGETS", default_value = "query,value", value_delimiter = ',')]
    pub lora_targets: Vec<String>,
    #[arg(long, env = "PEFTRAIN_EPOCHS", default_value_t = 3.0)]
    pub epochs: f64,
    #[arg(long, env = "PEFTRAIN_MAX_STEPS")]
    pub max_steps: Option<u64>,
    /// Global batch size (split across workers).
    #[arg(long, env = "PEFTRAIN_BATCH_SIZE", default_value_t = 16)]
    pub batch_size: usize,
    #[arg(long, env = "PEFTRAIN_EVAL_BATCH_SIZE", default_value_t = 64)]
    pub eval_batch_size: usize,
    /// Peak learning rate (default per method: full 2e-5, bitfit 1e-3, lora 5e-4).
    #[arg(long, env = "PEFTRAIN_LR")]
    pub lr: Option<f64>,
    #[arg(long, env = "PEFTRAIN_WEIGHT_DECAY", default_value_t = 0.0)]
    pub weight_decay: f64,
    #[arg(long, env = "PEFTRAIN_WARMUP_RATIO", default_value_t = 0.06)]
    pub warmup_ratio: f64,
    #[arg(long, env = "PEFTRAIN_WARMUP_STEPS")]
    pub warmup_steps: Option<u64>,
    #[arg(long, env = "PEFTRAIN_MAX_GRAD_NORM", default_value_t = 1.0)]
    pub max_grad_norm: f64,
    #[arg(long, env = "PEFTRAIN_MAX_LENGTH", default_value_t = 128)]
    pub max_length: usize,
    #[arg(long, env = "PEFTRAIN_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Use only the first N training rows.
    #[arg(long, env = "PEFTRAIN_TRAIN_LIMIT")]
    pub train_limit: Option<usize>,
    /// Use only the first N evaluation rows.
    #[arg(long, env = "PEFTRAIN_EVAL_LIMIT")]
    pub eval_limit: Option<usize>,
    #[arg(long, env = "PEFTRAIN_LOGGING_STEPS", default_value_t = 50)]
    pub logging_steps: u64,
    /// Evaluate every N steps (default: at the end of each epoch); always at the end.
    #[arg(long, env = "PEFTRAIN_EVAL_STEPS")]
    pub eval_steps: Option<u64>,
    #[arg(long, default_value = "outputs/run", env = "PEFTRAIN_OUTPUT_DIR")]
    pub output_dir: PathBuf,
    /// Keep the file order instead of a seeded shuffle per epoch.
    #[arg(long, env = "PEFTRAIN_NO_SHUFFLE")]
    pub no_shuffle: bool,
    /// Sort examples by length within mega-batches so batches pad less.
    #[arg(long, env = "PEFTRAIN_GROUP_BY_LENGTH")]
    pub group_by_length: bool,
    /// Start from these trainable weights (a peftrain output directory or a peft adapter).
    #[arg(long, env = "PEFTRAIN_INIT_ADAPTER")]
    pub init_adapter: Option<PathBuf>,
    /// dtype of the frozen base weights and the base model's matmuls (trainable weights,
    /// gradients and AdamW state stay fp32): bf16, fp32, or auto — bf16 on a CPU with
    /// AMX-BF16 or AVX512-BF16, fp32 elsewhere (AVX2 alone emulates bf16), as measured per CPU
    /// class (docs/performance.md). fp32 reproduces Hugging Face's numbers to the digit.
    #[arg(long, env = "PEFTRAIN_BASE_DTYPE", default_value = "auto")]
    pub base_dtype: String,
    /// free: workers compute on the real tokens alone, padding only around attention (the same
    /// results with less work); padded: on the padded batch, as transformers does; auto: free
    /// on CPUs, padded on GPUs, as measured (docs/performance.md).
    #[arg(long, env = "PEFTRAIN_PADDING", default_value = "auto")]
    pub padding: String,
    /// Random weights of the config's shape instead of a checkpoint (speed measurements).
    #[arg(long, env = "PEFTRAIN_RANDOM_WEIGHTS")]
    pub random_weights: bool,
    /// Number of workers.
    #[arg(long, default_value_t = 1, env = "PEFTRAIN_WORKERS")]
    pub workers: usize,
    /// Deadline of each coordinator -> worker call, seconds.
    #[arg(long, env = "PEFTRAIN_RPC_TIMEOUT", default_value_t = 1800.0)]
    pub rpc_timeout: f64,
    /// How long to wait for the workers to register, seconds.
    #[arg(long, env = "PEFTRAIN_REGISTER_TIMEOUT", default_value_t = 600.0)]
    pub register_timeout: f64,
    /// Seconds without a heartbeat after which a worker is lost (also bounds ring waits).
    #[arg(long, default_value_t = 30.0, env = "PEFTRAIN_WORKER_TIMEOUT")]
    pub worker_timeout: f64,
    /// Fewest workers the run may carry on with.
    #[arg(long, default_value_t = 1, env = "PEFTRAIN_MIN_WORKERS")]
    pub min_workers: usize,
    /// Write a checkpoint every N steps (one is always written at the end).
    #[arg(long, env = "PEFTRAIN_SAVE_STEPS")]
    pub save_steps: Option<u64>,
    /// Keep only the newest N checkpoints.
    #[arg(long, env = "PEFTRAIN_SAVE_TOTAL_LIMIT")]
    pub save_total_limit: Option<usize>,
    /// Train into an output directory that already holds another run's outputs (as
    /// run_glue.py's --overwrite_output_dir: that run's checkpoints are removed first);
    /// without it, or --resume, such a directory is refused.
    #[arg(long, env = "PEFTRAIN_OVERWRITE_OUTPUT_DIR")]
    pub overwrite_output_dir: bool,
    /// Stop with an error after this many consecutive steps whose gradient was non-finite
    /// (each one skipped on every worker).
    #[arg(long, env = "PEFTRAIN_MAX_SKIPPED_STEPS", default_value_t = crate::config::default_max_skipped_steps())]
    pub max_skipped_steps: u64,
    /// Resume from a checkpoint directory, or (no value, or `latest`) from the newest in --output-dir.
    #[arg(long, num_args = 0..=1, default_missing_value = "latest", env = "PEFTRAIN_RESUME")]
    pub resume: Option<PathBuf>,
}

fn parse_task(s: &str) -> Result<Task, String> {
    crate::app::parse_task(s)
}

impl TrainArgs {
    pub fn to_config(&self) -> TrainConfig {
        TrainConfig {
            model: self.model.clone(),
            tokenizer: self.tokenizer.clone(),
            task: self.task,
            glue_dir: self.glue_dir.clone().or_else(default_glue_dir),
            method: self.method.clone(),
            bitfit_scope: self.bitfit_scope.clone(),
            lora_r: self.lora_r,
            lora_alpha: self.lora_alpha,
            lora_dropout: self.lora_dropout,
            lora_targets: self.lora_targets.clone(),
            epochs: self.epochs,
            max_steps: self.max_steps,
            batch_size: self.batch_size,
            eval_batch_size: self.eval_batch_size,
            lr: self.lr,
            weight_decay: self.weight_decay,
            warmup_ratio: self.warmup_ratio,
            warmup_steps: self.warmup_steps,
            max_grad_norm: self.max_grad_norm,
            max_length: self.max_length,
            seed: self.seed,
            train_limit: self.train_limit,
            eval_limit: self.eval_limit,
            logging_steps: self.logging_steps,
            eval_steps: self.eval_steps,
            output_dir: self.output_dir.clone(),
            shuffle: !self.no_shuffle,
            group_by_length: self.group_by_length,
            init_adapter: self.init_adapter.clone(),
            base_dtype: self.base_dtype.clone(),
            padding: self.padding.clone(),
            random_weights: self.random_weights,
            workers: self.workers,
            rpc_timeout: self.rpc_timeout,
            register_timeout: self.register_timeout,
            worker_timeout: self.worker_timeout,
            min_workers: self.min_workers,
            save_steps: self.save_steps,
            save_total_limit: self.save_total_limit,
            resume: self.resume.clone(),
            quiet: false,
            overwrite_output_dir: self.overwrite_output_dir,
            max_skipped_steps: self.max_skipped_steps,
        }
    }
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
    pub train: TrainArgs,
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
    pub train: TrainArgs,
    #[command(flatten)]
    pub net: NetFlags,
}

#[derive(Args, Debug)]
pub struct ParamsCmd {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, default_value = "lora")]
    pub method: String,
    #[arg(long, default_value = "all")]
    pub bitfit_scope: String,
    #[arg(long, default_value_t = 8)]
    pub lora_r: u32,
    #[arg(long, default_value = "query,value")]
    pub lora_targets: String,
    #[arg(long, default_value_t = 2)]
    pub num_labels: u32,
}

#[derive(Args, Debug)]
pub struct PredictCmd {
    #[command(flatten)]
    pub train: TrainArgs,
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
