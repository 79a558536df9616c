//! A run's configuration as plain data (what the CLI, a config file or the environment fill
//! in), and the derived quantities every part reads the same way.

use std::path::PathBuf;

use peftrain_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use peftrain_spec::{BaseDtype, MethodArgs, Padding};

use crate::data::Task;

/// Everything a run is, as plain data: the flags of `peftrain train` (clap derives them from
/// this struct, so each default is written once, in its `#[arg]`), `run_config.json`, and what
/// `--print-config` shows. A config file and PEFTRAIN_* variables reach it through clap too.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
pub struct TrainConfig {
    /// Model directory (config.json and model.safetensors / pytorch_model.bin) on every
    /// worker's disk, or a Hugging Face repo id.
    #[arg(long, env = "PEFTRAIN_MODEL")]
    pub model: PathBuf,
    /// Tokenizer directory (default: the model directory).
    #[arg(long, env = "PEFTRAIN_TOKENIZER")]
    pub tokenizer: Option<PathBuf>,
    /// sst2 or rte.
    #[arg(long, default_value = "sst2", value_parser = peftrain_spec::flag::<Task>, env = "PEFTRAIN_TASK")]
    pub task: Task,
    /// Directory with the GLUE layout (SST-2/, RTE/) or the HF parquet layout (sst2/, rte/).
    /// Default: ../shared/data/glue where it exists, else the Hugging Face Hub's `glue` dataset.
    #[arg(long, env = "GLUE_DIR")]
    pub glue_dir: Option<PathBuf>,
    #[command(flatten)]
    #[serde(flatten)]
    pub method: MethodArgs,
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
    /// Keep the file order instead of a seeded shuffle per epoch (`"shuffle": false` in
    /// run_config.json, as the Trainer's users read it).
    #[arg(long, env = "PEFTRAIN_NO_SHUFFLE")]
    #[serde(rename = "shuffle", with = "negated")]
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
    #[arg(long, value_parser = peftrain_spec::flag::<BaseDtype>, env = "PEFTRAIN_BASE_DTYPE", default_value_t = BaseDtype::Auto)]
    pub base_dtype: BaseDtype,
    /// free: workers compute on the real tokens alone, padding only around attention (the same
    /// results with less work); padded: on the padded batch, as transformers does; auto: free
    /// on CPUs, padded on GPUs, as measured (docs/performance.md).
    #[arg(long, value_parser = peftrain_spec::flag::<Padding>, env = "PEFTRAIN_PADDING", default_value_t = Padding::Auto)]
    #[serde(default)]
    pub padding: Padding,
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
    /// Resume from a checkpoint directory, or (no value, or `latest`) from the newest in --output-dir.
    #[arg(long, num_args = 0..=1, default_missing_value = "latest", env = "PEFTRAIN_RESUME")]
    pub resume: Option<PathBuf>,
    /// No progress display (the global `--quiet`).
    #[arg(skip)]
    #[serde(default)]
    pub quiet: bool,
    /// Train into an output directory that already holds another run's outputs (as
    /// run_glue.py's --overwrite_output_dir: that run's checkpoints are removed first);
    /// without it, or --resume, such a directory is refused.
    #[arg(long, env = "PEFTRAIN_OVERWRITE_OUTPUT_DIR")]
    #[serde(default)]
    pub overwrite_output_dir: bool,
    /// Stop with an error after this many consecutive steps whose gradient was non-finite
    /// (each one skipped on every worker).
    #[arg(long, env = "PEFTRAIN_MAX_SKIPPED_STEPS", default_value_t = default_max_skipped_steps())]
    #[serde(default = "default_max_skipped_steps")]
    pub max_skipped_steps: u64,
}

/// The GLUE directory when neither --glue-dir nor GLUE_DIR names one: `../shared/data/glue`
/// where it exists; else None, and the data comes from the Hugging Face Hub.
pub fn default_glue_dir() -> Option<PathBuf> {
    let p = PathBuf::from("../shared/data/glue");
    p.is_dir().then_some(p)
}

/// A flag stored as its opposite: `--no-shuffle` is `"shuffle": false`.
mod negated {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &bool, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bool(!*v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        bool::deserialize(d).map(|v| !v)
    }
}

pub fn default_max_skipped_steps() -> u64 {
    10
}

/// Largest global batch, evaluation batch and token count a run may ask for: bounds what the
/// coordinator allocates per step and what a worker is sent.
pub const MAX_BATCH: usize = 1 << 16;
pub const MAX_LENGTH: usize = 1 << 16;
/// Most workers one run can have (ranks travel as u32; far beyond any ring this code drives).
pub const MAX_WORKERS: usize = 4096;

impl TrainConfig {
    /// The defaults of `peftrain train` for `model` (the flags' defaults and PEFTRAIN_* values).
    pub fn for_model(model: PathBuf) -> Result<TrainConfig, String> {
        use clap::Parser;
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            train: TrainConfig,
        }
        // Parsing an empty command line gives exactly the documented defaults.
        let mut c = Only::try_parse_from(["peftrain", "--model", &model.display().to_string()])
            .map(|o| o.train.with_default_glue_dir())
            .map_err(|e| e.to_string().lines().next().unwrap_or("").to_string())?;
        c.model = model;
        Ok(c)
    }

    /// `--glue-dir` when neither the flag nor GLUE_DIR gave one: `../shared/data/glue` where
    /// it exists (else the hub's `glue`, resolved later).
    pub fn with_default_glue_dir(mut self) -> TrainConfig {
        if self.glue_dir.is_none() {
            self.glue_dir = default_glue_dir();
        }
        self
    }

    pub fn lr(&self) -> f64 {
        self.lr.unwrap_or_else(|| self.method.kind.default_lr())
    }

    /// Every path the run reads, with its flag: no output may overlap one of them.
    pub fn inputs(&self) -> Vec<(&'static str, &std::path::Path)> {
        let mut v: Vec<(&'static str, &std::path::Path)> = vec![("--model", self.model.as_path())];
        if let Some(t) = &self.tokenizer {
            v.push(("--tokenizer", t));
        }
        if let Some(g) = &self.glue_dir {
            v.push(("--glue-dir", g));
        }
        if let Some(a) = &self.init_adapter {
            v.push(("--init-adapter", a));
        }
        v
    }

    pub fn tokenizer_dir(&self) -> PathBuf {
        self.tokenizer.clone().unwrap_or_else(|| self.model.clone())
    }

    /// Optimizer steps per epoch (the last batch may be short, as with drop_last=False).
    pub fn steps_per_epoch(&self, n_train: usize) -> u64 {
        n_train.div_ceil(self.batch_size.max(1)) as u64
    }

    /// Total optimizer steps: `--max-steps` if set, else ceil(epochs x steps per epoch).
    pub fn total_steps(&self, n_train: usize) -> u64 {
        let per_epoch = self.steps_per_epoch(n_train);
        self.max_steps
            .unwrap_or_else(|| (self.epochs * per_epoch as f64).ceil() as u64)
    }

    /// The replica every worker builds.
    pub fn run_spec(&self) -> pb::RunSpec {
        let model = self.model.display().to_string();
        pb::RunSpec {
            model_dir: if self.random_weights { format!("random:{model}") } else { model },
            method: Some(self.method.method().to_proto()),
            num_labels: self.task.num_labels() as u32,
            seed: self.seed,
            init_adapter: self.init_adapter.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            optimizer: Some(pb::OptimizerSpec {
                weight_decay: self.weight_decay as f32,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                max_grad_norm: self.max_grad_norm as f32,
            }),
            base_dtype: self.base_dtype.as_str().into(),
            padding: self.padding.as_str().into(),
        }
    }

    /// Every number of the run, checked for finiteness and range in one table before anything
    /// reads a file or starts a worker; the message names the flag.
    pub fn validate_values(&self) -> Result<(), String> {
        use peftrain_spec::check::{float, int, Interval, MAX_SECONDS};
        let seconds = Interval::above(0.0, MAX_SECONDS);
        if let Some(lr) = self.lr {
            float("--lr", lr, Interval::above(0.0, 10.0))?;
        }
        for (flag, v, range) in [
            ("--epochs", self.epochs, Interval::above(0.0, 1e6)),
            ("--weight-decay", self.weight_decay, Interval::closed(0.0, 10.0)),
            ("--warmup-ratio", self.warmup_ratio, Interval::closed(0.0, 1.0)),
            ("--max-grad-norm", self.max_grad_norm, Interval::above(0.0, 1e12)),
            ("--rpc-timeout", self.rpc_timeout, seconds),
            ("--register-timeout", self.register_timeout, seconds),
            ("--worker-timeout", self.worker_timeout, seconds),
        ] {
            float(flag, v, range)?;
        }
        self.method.method().validate()?;
        int("--batch-size", self.batch_size, 1..=MAX_BATCH)?;
        int("--eval-batch-size", self.eval_batch_size, 1..=MAX_BATCH)?;
        int("--max-length", self.max_length, 8..=MAX_LENGTH)?;
        int("--workers", self.workers, 1..=MAX_WORKERS)?;
        int("--max-skipped-steps", self.max_skipped_steps, 1..=1_000_000)?;
        Ok(())
    }

    /// Checks what can be checked before any worker starts; one message per problem.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_values()?;
        if self.min_workers > self.workers {
            return Err(format!("--min-workers {} exceeds --workers {}", self.min_workers, self.workers));
        }
        if self.save_steps == Some(0) || self.save_total_limit == Some(0) {
            return Err("--save-steps and --save-total-limit must be positive".into());
        }
        if self.train_limit == Some(0) || self.eval_limit == Some(0) {
            // Zero rows would train or evaluate nothing and still report success.
            return Err("--train-limit and --eval-limit must be positive (leave them out for the whole split)".into());
        }
        if self.logging_steps == 0 || self.eval_steps == Some(0) {
            return Err("--logging-steps and --eval-steps must be positive".into());
        }
        if !(self.epochs > 0.0) && self.max_steps.is_none() {
            return Err("--epochs must be positive (or give --max-steps)".into());
        }
        if !self.model.join("config.json").is_file() {
            return Err(format!("--model {}: config.json not found", self.model.display()));
        }
        Ok(())
    }
}

/// The model's config.json as the coordinator reads it: the same checked and bounded mirror
/// the workers build from (it never loads weights).
pub fn read_model_config(model_dir: &std::path::Path) -> Result<peftrain_spec::ModelConfig, String> {
    peftrain_spec::ModelConfig::from_file(&model_dir.join("config.json")).map_err(|e| e.to_string())
}
