//! A run's configuration as plain data (what the CLI, a config file or the environment fill
//! in), and the derived quantities every part reads the same way.

use std::path::PathBuf;

use peftrain_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::data::Task;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Model directory (config.json + weights) on every worker's disk.
    pub model: PathBuf,
    /// Tokenizer directory (default: the model directory).
    pub tokenizer: Option<PathBuf>,
    pub task: Task,
    /// GLUE directory; None: the Hugging Face Hub's `glue` dataset (cached like a model).
    pub glue_dir: Option<PathBuf>,
    pub method: String,
    pub bitfit_scope: String,
    pub lora_r: u32,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub lora_targets: Vec<String>,
    pub epochs: f64,
    pub max_steps: Option<u64>,
    pub batch_size: usize,
    pub eval_batch_size: usize,
    /// None: the method's default (`default_lr`).
    pub lr: Option<f64>,
    pub weight_decay: f64,
    pub warmup_ratio: f64,
    pub warmup_steps: Option<u64>,
    pub max_grad_norm: f64,
    pub max_length: usize,
    pub seed: u64,
    pub train_limit: Option<usize>,
    pub eval_limit: Option<usize>,
    pub logging_steps: u64,
    /// None: evaluate at the end of every epoch (and always at the end of training).
    pub eval_steps: Option<u64>,
    pub output_dir: PathBuf,
    pub shuffle: bool,
    pub group_by_length: bool,
    /// Trainable weights to start from (peftrain's or peft's adapter layout).
    pub init_adapter: Option<PathBuf>,
    /// dtype of the frozen base weights on workers: fp32 or bf16.
    pub base_dtype: String,
    /// auto, free or padded: whether workers compute on the real tokens alone.
    #[serde(default)]
    pub padding: String,
    /// Initialise the model randomly from its config instead of loading weights (speed runs).
    pub random_weights: bool,
    pub workers: usize,
    /// Deadline of every coordinator -> worker RPC, in seconds.
    pub rpc_timeout: f64,
    /// How long to wait for all workers to register, in seconds.
    pub register_timeout: f64,
    /// A worker silent (no heartbeat) this many seconds is lost; also bounds ring waits.
    pub worker_timeout: f64,
    /// Fewest workers the run may carry on with after losing some.
    pub min_workers: usize,
    /// Write a checkpoint every N steps (and always at the end).
    pub save_steps: Option<u64>,
    /// Keep only the newest N checkpoints.
    pub save_total_limit: Option<usize>,
    /// Resume: Some(dir) from that checkpoint; Some("latest") from the newest in the output dir.
    pub resume: Option<PathBuf>,
    /// No progress display.
    #[serde(default)]
    pub quiet: bool,
    /// Train into an output directory that already holds another run's outputs (as
    /// run_glue.py's `--overwrite_output_dir`); without it such a directory is refused.
    #[serde(default)]
    pub overwrite_output_dir: bool,
    /// Stop with an error after this many consecutive steps skipped as non-finite.
    #[serde(default = "default_max_skipped_steps")]
    pub max_skipped_steps: u64,
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

/// Learning rates that suit each method (full fine-tuning wants a small one; adapters and
/// biases, having few parameters that start at or near zero, want larger ones).
pub fn default_lr(method: &str) -> f64 {
    match method {
        "full" => 2e-5,
        "bitfit" => 1e-3,
        _ => 5e-4,
    }
}

impl TrainConfig {
    /// The defaults of `peftrain train` for `model` (the flags' defaults and PEFTRAIN_* values).
    pub fn for_model(model: PathBuf) -> Result<TrainConfig, String> {
        use clap::Parser;
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            train: crate::cli::TrainArgs,
        }
        // Parsing an empty command line gives exactly the documented defaults.
        let mut c = Only::try_parse_from(["peftrain", "--model", &model.display().to_string()])
            .map(|o| o.train.to_config())
            .map_err(|e| e.to_string().lines().next().unwrap_or("").to_string())?;
        c.model = model;
        Ok(c)
    }

    pub fn lr(&self) -> f64 {
        self.lr.unwrap_or_else(|| default_lr(&self.method))
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
            method: Some(pb::MethodSpec {
                kind: self.method.clone(),
                bitfit_scope: self.bitfit_scope.clone(),
                lora_r: self.lora_r,
                lora_alpha: self.lora_alpha as f32,
                lora_dropout: self.lora_dropout as f32,
                lora_targets: self.lora_targets.clone(),
            }),
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
            base_dtype: self.base_dtype.clone(),
            padding: self.padding.clone(),
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
            ("--lora-alpha", self.lora_alpha, Interval::above(0.0, 1e6)),
            ("--lora-dropout", self.lora_dropout, Interval::below(0.0, 1.0)),
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
        int("--lora-r", self.lora_r, 1..=4096)?;
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
        if !matches!(self.method.as_str(), "full" | "bitfit" | "lora") {
            return Err(format!("--method {:?}: expected full, bitfit or lora", self.method));
        }
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
        if let Err(why) = self.padding.parse::<peftrain_spec::Padding>() {
            return Err(format!("--padding {why}"));
        }
        if !matches!(self.base_dtype.as_str(), "auto" | "fp32" | "bf16") {
            return Err(format!("--base-dtype {:?}: expected auto, fp32 or bf16", self.base_dtype));
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
