//! A run's configuration as plain data (what the CLI, a config file or the environment fill
//! in), and the derived quantities every part reads the same way.

use std::path::PathBuf;

use peftrain_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use peftrain_spec::{AllReduce, BaseDtype, MethodArgs, Padding};

use crate::data::{Labels, Split, Task, UserColumns};
use crate::schedule::{warmup_steps, Schedule, SchedulerType};
use crate::strategy::Strategy;
use peftrain_spec::task::Metric;

/// Everything a run is, as plain data: the flags of `peftrain train` (clap derives them from
/// this struct, so each default is written once, in its `#[arg]`), `run_config.json`, and what
/// `--print-config` shows. A config file and PEFTRAIN_* variables reach it through clap too.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
pub struct TrainConfig {
    /// Model directory (config.json and model.safetensors / pytorch_model.bin) on every
    /// worker's disk, or a Hugging Face repo id.
    #[arg(long, env = "PEFTRAIN_MODEL")]
    pub model: PathBuf,
    /// The Hugging Face Hub id `--model` named, when it was one (resolved to a local
    /// directory in `model`): what peft's `base_model_name_or_path` records.
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
    /// Tokenizer directory (default: the model directory).
    #[arg(long, env = "PEFTRAIN_TOKENIZER")]
    pub tokenizer: Option<PathBuf>,
    /// A GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte or wnli (default sst2; with
    /// --train-file, the task whose labels and metrics the files have, if any).
    #[arg(long, value_parser = peftrain_spec::flag::<Task>, env = "PEFTRAIN_TASK")]
    pub task: Option<Task>,
    /// Directory with the GLUE layout (SST-2/, RTE/) or the HF parquet layout (sst2/, rte/).
    /// Default: ../shared/data/glue where it exists, else the Hugging Face Hub's `glue` dataset.
    #[arg(long, env = "GLUE_DIR")]
    pub glue_dir: Option<PathBuf>,
    /// Your own training data instead of GLUE (CSV, TSV, JSON Lines or parquet, by extension),
    /// as run_glue.py's --train_file.
    #[arg(long, env = "PEFTRAIN_TRAIN_FILE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_file: Option<PathBuf>,
    #[arg(long, env = "PEFTRAIN_VALIDATION_FILE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_file: Option<PathBuf>,
    /// Data to predict (`predict --split test`); it may lack the label column.
    #[arg(long, env = "PEFTRAIN_TEST_FILE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_file: Option<PathBuf>,
    /// The text column of your files (default: `sentence`, or `sentence1` with `sentence2`).
    #[arg(long, env = "PEFTRAIN_TEXT_COLUMN")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_column: Option<String>,
    /// The second text of a pair (default: `sentence2` when `sentence1` is the first).
    #[arg(long, env = "PEFTRAIN_TEXT_PAIR_COLUMN")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_pair_column: Option<String>,
    /// The label column of your files: strings or integers are classes (their names sorted,
    /// as run_glue.py sorts them), floats a regression.
    #[arg(long, env = "PEFTRAIN_LABEL_COLUMN", default_value = "label")]
    #[serde(default = "default_label_column")]
    pub label_column: String,
    /// What the head predicts, resolved from the task, the training file or the trained
    /// weights (`run_config.json` records it).
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Labels>,
    #[command(flatten)]
    #[serde(flatten)]
    pub method: MethodArgs,
    /// Training epochs (TrainingArguments' `num_train_epochs`).
    #[arg(long, visible_alias = "num-train-epochs", env = "PEFTRAIN_EPOCHS", default_value_t = 3.0)]
    #[serde(alias = "num_train_epochs")]
    pub epochs: f64,
    #[arg(long, env = "PEFTRAIN_MAX_STEPS")]
    pub max_steps: Option<u64>,
    /// Global batch size of an optimizer step (split across workers, and into
    /// --gradient-accumulation-steps micro-batches).
    #[arg(long, env = "PEFTRAIN_BATCH_SIZE", default_value_t = 16)]
    pub batch_size: usize,
    #[arg(long, env = "PEFTRAIN_EVAL_BATCH_SIZE", default_value_t = 64)]
    pub eval_batch_size: usize,
    /// The batch of one worker in one micro-batch, as the Trainer's: the global batch is then
    /// this x --workers x --gradient-accumulation-steps (instead of --batch-size).
    #[arg(long, env = "PEFTRAIN_PER_DEVICE_TRAIN_BATCH_SIZE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_device_train_batch_size: Option<usize>,
    /// One worker's evaluation batch (the evaluation chunk is this x --workers, instead of
    /// --eval-batch-size).
    #[arg(long, env = "PEFTRAIN_PER_DEVICE_EVAL_BATCH_SIZE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_device_eval_batch_size: Option<usize>,
    /// Micro-batches whose gradients add up before each optimizer step (one all-reduce per
    /// step): the Trainer's gradient accumulation.
    #[arg(long, env = "PEFTRAIN_GRADIENT_ACCUMULATION_STEPS", default_value_t = 1)]
    #[serde(default = "one")]
    pub gradient_accumulation_steps: usize,
    /// Peak learning rate (default per method: full 2e-5, bitfit 1e-3, lora 5e-4).
    #[arg(long, visible_alias = "learning-rate", env = "PEFTRAIN_LR")]
    #[serde(alias = "learning_rate")]
    pub lr: Option<f64>,
    /// The schedule of the learning rate: linear, cosine, cosine_with_restarts, polynomial,
    /// constant or constant_with_warmup (transformers' `get_scheduler`).
    #[arg(long, value_parser = peftrain_spec::flag::<SchedulerType>, env = "PEFTRAIN_LR_SCHEDULER_TYPE", default_value_t = SchedulerType::Linear)]
    #[serde(default)]
    pub lr_scheduler_type: SchedulerType,
    #[arg(long, env = "PEFTRAIN_ADAM_BETA1", default_value_t = default_adam_beta1())]
    #[serde(default = "default_adam_beta1")]
    pub adam_beta1: f64,
    #[arg(long, env = "PEFTRAIN_ADAM_BETA2", default_value_t = default_adam_beta2())]
    #[serde(default = "default_adam_beta2")]
    pub adam_beta2: f64,
    #[arg(long, env = "PEFTRAIN_ADAM_EPSILON", default_value_t = default_adam_epsilon())]
    #[serde(default = "default_adam_epsilon")]
    pub adam_epsilon: f64,
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
    /// When to log the training loss: steps (every --logging-steps), epoch, or no.
    #[arg(long, value_parser = peftrain_spec::flag::<Strategy>, env = "PEFTRAIN_LOGGING_STRATEGY", default_value_t = Strategy::Steps)]
    #[serde(default = "default_logging_strategy")]
    pub logging_strategy: Strategy,
    /// Evaluate every N steps (default: at the end of each epoch); always at the end.
    #[arg(long, env = "PEFTRAIN_EVAL_STEPS")]
    pub eval_steps: Option<u64>,
    /// When to evaluate: steps (every --eval-steps, default --logging-steps), epoch, or no
    /// (only the final evaluation). Default: steps with --eval-steps, else epoch.
    #[arg(long, value_parser = peftrain_spec::flag::<Strategy>, env = "PEFTRAIN_EVAL_STRATEGY")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_strategy: Option<Strategy>,
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
    /// How long to wait for all --workers to register, seconds; then training starts with
    /// the --min-workers or more that did (torchrun's --nnodes MIN:MAX), and the rest join at
    /// a step boundary when they register.
    #[arg(long, env = "PEFTRAIN_REGISTER_TIMEOUT", default_value_t = 600.0)]
    pub register_timeout: f64,
    /// Seconds without a heartbeat after which a worker is lost (also bounds ring waits).
    #[arg(long, default_value_t = 30.0, env = "PEFTRAIN_WORKER_TIMEOUT")]
    pub worker_timeout: f64,
    /// Fewest workers the run may start with (once --register-timeout has passed) and carry
    /// on with.
    #[arg(long, default_value_t = 1, env = "PEFTRAIN_MIN_WORKERS")]
    pub min_workers: usize,
    /// The workers' all-reduce: ring (2(N-1) rounds), halving-doubling (2 log2 N rounds,
    /// latency-optimal), or auto — the alpha-beta model's pick for the group's size and the
    /// gradient's bytes, chosen again whenever the group changes (docs/performance.md).
    #[arg(long, value_parser = peftrain_spec::flag::<AllReduce>, env = "PEFTRAIN_ALL_REDUCE", default_value_t = AllReduce::Auto)]
    #[serde(default)]
    pub all_reduce: AllReduce,
    /// Write a checkpoint every N steps (one is always written at the end).
    #[arg(long, env = "PEFTRAIN_SAVE_STEPS")]
    pub save_steps: Option<u64>,
    /// When to checkpoint: steps (every --save-steps), epoch, or no (only the last step's,
    /// which `--resume` and the outputs come from). Default: steps with --save-steps, else no.
    #[arg(long, value_parser = peftrain_spec::flag::<Strategy>, env = "PEFTRAIN_SAVE_STRATEGY")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub save_strategy: Option<Strategy>,
    /// Where logs go besides metrics.jsonl: tensorboard (event files under --logging-dir) or
    /// none (TrainingArguments' `report_to`).
    #[arg(long, value_parser = peftrain_spec::flag::<ReportTo>, env = "PEFTRAIN_REPORT_TO", default_value_t = ReportTo::None)]
    #[serde(default)]
    pub report_to: ReportTo,
    /// TensorBoard's log directory (default: <output-dir>/runs/<date>_<host>, the Trainer's).
    #[arg(long, env = "PEFTRAIN_LOGGING_DIR")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logging_dir: Option<PathBuf>,
    /// Keep only the newest N checkpoints (never deleting the best one with
    /// --load-best-model-at-end).
    #[arg(long, env = "PEFTRAIN_SAVE_TOTAL_LIMIT")]
    pub save_total_limit: Option<usize>,
    /// The evaluation metric that chooses the model: `loss` or a metric of the task (`f1`,
    /// `eval_matthews_correlation`, ...; default: the task's main metric).
    #[arg(long, env = "PEFTRAIN_METRIC_FOR_BEST_MODEL")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_for_best_model: Option<String>,
    /// Whether a larger --metric-for-best-model is better (default: false for loss and mse,
    /// true otherwise).
    #[arg(long, env = "PEFTRAIN_GREATER_IS_BETTER")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub greater_is_better: Option<bool>,
    /// Write a checkpoint at each evaluation that improves the metric, and leave the best
    /// evaluation's weights (not the last step's) in the output directory.
    #[arg(long, env = "PEFTRAIN_LOAD_BEST_MODEL_AT_END")]
    #[serde(default)]
    pub load_best_model_at_end: bool,
    /// Stop after this many evaluations in a row without improving the metric by more than
    /// --early-stopping-threshold (transformers' EarlyStoppingCallback).
    #[arg(long, env = "PEFTRAIN_EARLY_STOPPING_PATIENCE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping_patience: Option<u64>,
    #[arg(long, env = "PEFTRAIN_EARLY_STOPPING_THRESHOLD", default_value_t = 0.0)]
    #[serde(default)]
    pub early_stopping_threshold: f64,
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
    /// At the end, push the output directory to the Hugging Face Hub (HF_ENDPOINT, HF_TOKEN)
    /// as Trainer.push_to_hub does (what `peftrain push` sends).
    #[arg(long, env = "PEFTRAIN_PUSH_TO_HUB")]
    #[serde(default)]
    pub push_to_hub: bool,
    /// The repo --push-to-hub pushes to: ORG/NAME, or NAME in the token owner's namespace
    /// (default: the output directory's name, the Trainer's).
    #[arg(long, env = "PEFTRAIN_HUB_MODEL_ID")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub_model_id: Option<String>,
    /// Create the --push-to-hub repo private.
    #[arg(long, env = "PEFTRAIN_HUB_PRIVATE_REPO")]
    #[serde(default)]
    pub hub_private_repo: bool,
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

fn one() -> usize {
    1
}

fn default_logging_strategy() -> Strategy {
    Strategy::Steps
}

// TrainingArguments' AdamW defaults, from the one place that holds them.
fn default_adam_beta1() -> f64 {
    peftrain_spec::optimizer::AdamW::default().beta1
}

fn default_adam_beta2() -> f64 {
    peftrain_spec::optimizer::AdamW::default().beta2
}

fn default_adam_epsilon() -> f64 {
    peftrain_spec::optimizer::AdamW::default().eps
}

/// `--report-to`: the integrations logs are also sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportTo {
    #[default]
    None,
    Tensorboard,
}

impl ReportTo {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportTo::None => "none",
            ReportTo::Tensorboard => "tensorboard",
        }
    }
}

impl std::fmt::Display for ReportTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ReportTo {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(ReportTo::None),
            "tensorboard" => Ok(ReportTo::Tensorboard),
            other => Err(format!("{other:?}: expected tensorboard or none")),
        }
    }
}

fn default_label_column() -> String {
    "label".into()
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

    /// Whether the data is the user's own files rather than a GLUE task's.
    pub fn uses_files(&self) -> bool {
        self.train_file.is_some() || self.validation_file.is_some() || self.test_file.is_some()
    }

    /// The GLUE task the data comes from (sst2 unless --task names another), when it is not
    /// the user's own files.
    pub fn glue_task(&self) -> Option<Task> {
        if self.uses_files() {
            None
        } else {
            Some(self.task.unwrap_or(Task::Sst2))
        }
    }

    /// The run's name of its data: the task, or `custom` for files without one.
    pub fn task_name(&self) -> String {
        self.glue_task().or(self.task).map_or_else(|| "custom".to_string(), |t| t.name().to_string())
    }

    /// The user's columns, as the flags name them.
    pub fn user_columns(&self) -> UserColumns {
        UserColumns { text: self.text_column.clone(), text_pair: self.text_pair_column.clone(), label: self.label_column.clone() }
    }

    /// The file of a split of the user's data, naming its flag.
    pub fn split_file(&self, split: Split) -> Result<&std::path::Path, String> {
        let (f, flag) = match split {
            Split::Train => (&self.train_file, "--train-file"),
            Split::Dev | Split::DevMismatched => (&self.validation_file, "--validation-file"),
            Split::Test | Split::TestMismatched => (&self.test_file, "--test-file"),
        };
        f.as_deref().ok_or_else(|| format!("the {split} split of your data needs {flag}"))
    }

    /// The resolved labels (the task's until resolved otherwise).
    pub fn labels(&self) -> Labels {
        self.labels.clone().unwrap_or_else(|| Labels::of_task(self.task.unwrap_or(Task::Sst2)))
    }

    /// The metrics evaluations report, the first the main one: the task's, or for the user's
    /// own data run_glue.py's (accuracy, or mse for a regression).
    pub fn metrics(&self) -> Vec<Metric> {
        match self.glue_task().or(self.task) {
            Some(t) => t.info().metrics.to_vec(),
            None if self.labels().is_regression() => vec![Metric::Mse],
            None => vec![Metric::Accuracy],
        }
    }

    /// The metrics keys an evaluation reports, in order: each metric of each evaluation set
    /// (MNLI's mismatched one suffixed `_mm`).
    pub fn metric_keys(&self) -> Vec<String> {
        let metrics = self.metrics();
        self.eval_splits().iter().flat_map(|(_, suffix)| metrics.iter().map(move |m| format!("{}{suffix}", m.key()))).collect()
    }

    /// The evaluation sets of a run and the suffix of their metrics keys: MNLI's matched and
    /// mismatched validation sets, else the one.
    pub fn eval_splits(&self) -> Vec<(Split, &'static str)> {
        match self.glue_task() {
            Some(t) => t.info().dev.iter().zip([Split::Dev, Split::DevMismatched]).map(|(e, s)| (s, e.suffix)).collect(),
            None => vec![(Split::Dev, "")],
        }
    }

    /// The metric that chooses the model, checked against what evaluations report.
    pub fn best_model_metric(&self) -> BestMetric {
        let keys = self.metric_keys();
        let key = match &self.metric_for_best_model {
            Some(m) => m.strip_prefix("eval_").unwrap_or(m).to_string(),
            None => keys.first().cloned().unwrap_or_else(|| "loss".into()),
        };
        let lower = key == "loss" || key.starts_with("loss_") || key.starts_with("mse");
        BestMetric { greater_is_better: self.greater_is_better.unwrap_or(!lower), key }
    }

    pub fn lr(&self) -> f64 {
        self.lr.unwrap_or_else(|| self.method.kind.default_lr())
    }

    /// The learning rate of every step of a run of `total` optimizer steps.
    pub fn schedule(&self, total: u64) -> Schedule {
        Schedule { kind: self.lr_scheduler_type, peak: self.lr(), warmup: warmup_steps(total, self.warmup_steps, self.warmup_ratio), total }
    }

    /// When evaluations run: --eval-strategy, else steps with --eval-steps, else epoch; and
    /// the interval of `steps` (--eval-steps, else --logging-steps, as TrainingArguments).
    pub fn eval_every(&self) -> (Strategy, u64) {
        let s = self.eval_strategy.unwrap_or(if self.eval_steps.is_some() { Strategy::Steps } else { Strategy::Epoch });
        (s, self.eval_steps.unwrap_or(self.logging_steps))
    }

    /// When checkpoints are written during training: --save-strategy, else steps with
    /// --save-steps, else none (the last step's is always written).
    pub fn save_every(&self) -> (Strategy, u64) {
        let s = self.save_strategy.unwrap_or(if self.save_steps.is_some() { Strategy::Steps } else { Strategy::No });
        (s, self.save_steps.unwrap_or(0))
    }

    /// AdamW and clipping as the workers apply them.
    pub fn optimizer(&self) -> peftrain_spec::optimizer::Optimizer {
        peftrain_spec::optimizer::Optimizer {
            adamw: peftrain_spec::optimizer::AdamW {
                beta1: self.adam_beta1,
                beta2: self.adam_beta2,
                eps: self.adam_epsilon,
                weight_decay: self.weight_decay,
            },
            max_grad_norm: self.max_grad_norm,
        }
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
        for (flag, f) in [("--train-file", &self.train_file), ("--validation-file", &self.validation_file), ("--test-file", &self.test_file)] {
            if let Some(f) = f {
                v.push((flag, f));
            }
        }
        v
    }

    /// The base model as peft and the hub name it: the hub id `--model` gave, else its directory.
    pub fn base_model_name(&self) -> String {
        self.model_id.clone().unwrap_or_else(|| self.model.display().to_string())
    }

    pub fn tokenizer_dir(&self) -> PathBuf {
        self.tokenizer.clone().unwrap_or_else(|| self.model.clone())
    }

    /// Examples of one optimizer step: --per-device-train-batch-size x --workers x
    /// --gradient-accumulation-steps, else --batch-size (saturating; validate bounds it).
    pub fn global_batch(&self) -> usize {
        match self.per_device_train_batch_size {
            Some(pd) => pd.saturating_mul(self.workers).saturating_mul(self.gradient_accumulation_steps),
            None => self.batch_size,
        }
    }

    /// Examples of one micro-batch, all workers together.
    pub fn micro_batch(&self) -> usize {
        self.global_batch() / self.gradient_accumulation_steps.max(1)
    }

    /// One worker's share of a micro-batch (TrainerState's `train_batch_size`).
    pub fn per_worker_batch(&self) -> usize {
        self.micro_batch().div_ceil(self.workers.max(1))
    }

    /// Examples of one evaluation call, all workers together.
    pub fn eval_batch(&self) -> usize {
        match self.per_device_eval_batch_size {
            Some(pd) => pd.saturating_mul(self.workers),
            None => self.eval_batch_size,
        }
    }

    /// Optimizer steps per epoch (the last batch may be short, as with drop_last=False: with
    /// accumulation, ceil(micro-batches / accumulation), the Trainer's count).
    pub fn steps_per_epoch(&self, n_train: usize) -> u64 {
        n_train.div_ceil(self.global_batch().max(1)) as u64
    }

    /// Total optimizer steps: `--max-steps` if set, else ceil(epochs x steps per epoch).
    pub fn total_steps(&self, n_train: usize) -> u64 {
        let per_epoch = self.steps_per_epoch(n_train);
        self.max_steps.unwrap_or_else(|| (self.epochs * per_epoch as f64).ceil() as u64)
    }

    /// The replica every worker builds.
    pub fn run_spec(&self) -> pb::RunSpec {
        let model = self.model.display().to_string();
        pb::RunSpec {
            model_dir: if self.random_weights { format!("random:{model}") } else { model },
            method: Some(self.method.method().to_proto()),
            num_labels: self.labels().num_labels() as u32,
            regression: self.labels().is_regression(),
            seed: self.seed,
            init_adapter: self.init_adapter.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            optimizer: Some(self.optimizer().to_proto()),
            base_dtype: self.base_dtype.as_str().into(),
            padding: self.padding.as_str().into(),
            task: self.task_name(),
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
            ("--adam-beta1", self.adam_beta1, Interval::below(0.0, 1.0)),
            ("--adam-beta2", self.adam_beta2, Interval::below(0.0, 1.0)),
            ("--adam-epsilon", self.adam_epsilon, Interval::above(0.0, 1.0)),
            ("--rpc-timeout", self.rpc_timeout, seconds),
            ("--register-timeout", self.register_timeout, seconds),
            ("--worker-timeout", self.worker_timeout, seconds),
        ] {
            float(flag, v, range)?;
        }
        self.method.method().validate()?;
        int("--batch-size", self.batch_size, 1..=MAX_BATCH)?;
        int("--eval-batch-size", self.eval_batch_size, 1..=MAX_BATCH)?;
        int("--gradient-accumulation-steps", self.gradient_accumulation_steps, 1..=MAX_BATCH)?;
        if let Some(pd) = self.per_device_train_batch_size {
            int("--per-device-train-batch-size", pd, 1..=MAX_BATCH)?;
            int("the global batch (--per-device-train-batch-size x --workers x --gradient-accumulation-steps)", self.global_batch(), 1..=MAX_BATCH)?;
        } else if !self.batch_size.is_multiple_of(self.gradient_accumulation_steps) {
            return Err(format!(
                "--batch-size {} is not a multiple of --gradient-accumulation-steps {} (or give --per-device-train-batch-size)",
                self.batch_size, self.gradient_accumulation_steps
            ));
        }
        if let Some(pd) = self.per_device_eval_batch_size {
            int("--per-device-eval-batch-size", pd, 1..=MAX_BATCH)?;
            int("the evaluation batch (--per-device-eval-batch-size x --workers)", self.eval_batch(), 1..=MAX_BATCH)?;
        }
        int("--max-length", self.max_length, 8..=MAX_LENGTH)?;
        int("--workers", self.workers, 1..=MAX_WORKERS)?;
        int("--max-skipped-steps", self.max_skipped_steps, 1..=1_000_000)?;
        float("--early-stopping-threshold", self.early_stopping_threshold, Interval::closed(0.0, 1e12))?;
        if let Some(p) = self.early_stopping_patience {
            int("--early-stopping-patience", p, 1..=1_000_000)?;
        }
        Ok(())
    }

    /// The repo --push-to-hub pushes to: --hub-model-id, else the output directory's name.
    pub fn hub_repo_id(&self) -> String {
        self.hub_model_id
            .clone()
            .unwrap_or_else(|| crate::outdir::canonical(&self.output_dir).file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default())
    }

    /// Checks what can be checked before any worker starts; one message per problem.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_values()?;
        if self.push_to_hub {
            // Refused before training, as the Trainer creates its repo at start: a run
            // whose push could not happen is found out in seconds, not hours.
            let id = self.hub_repo_id();
            if !crate::hub::is_repo_id(&id) {
                return Err(format!("--hub-model-id {id:?} is not a Hugging Face repo id (NAME or ORG/NAME)"));
            }
        }
        if self.min_workers > self.workers {
            return Err(format!("--min-workers {} exceeds --workers {}", self.min_workers, self.workers));
        }
        if self.save_steps == Some(0) || self.save_total_limit == Some(0) {
            return Err("--save-steps and --save-total-limit must be positive".into());
        }
        if self.save_strategy == Some(Strategy::Steps) && self.save_steps.is_none() {
            return Err("--save-strategy steps needs --save-steps".into());
        }
        self.schedule(1).check()?;
        if self.train_limit == Some(0) || self.eval_limit == Some(0) {
            // Zero rows would train or evaluate nothing and still report success.
            return Err("--train-limit and --eval-limit must be positive (leave them out for the whole split)".into());
        }
        if self.logging_steps == 0 || self.eval_steps == Some(0) {
            return Err("--logging-steps and --eval-steps must be positive".into());
        }
        if !(self.epochs.is_finite() && self.epochs > 0.0) && self.max_steps.is_none() {
            return Err("--epochs must be positive (or give --max-steps)".into());
        }
        let best = self.best_model_metric();
        let keys = self.metric_keys();
        if self.metric_for_best_model.is_some() && best.key != "loss" && !keys.contains(&best.key) {
            return Err(format!(
                "--metric-for-best-model {:?}: not a metric of this run (loss, {})",
                self.metric_for_best_model.as_deref().unwrap_or_default(),
                keys.join(", ")
            ));
        }
        if !self.model.join("config.json").is_file() {
            return Err(format!("--model {}: config.json not found", self.model.display()));
        }
        Ok(())
    }
}

/// The evaluation metric that chooses the model, and which way is better.
#[derive(Debug, Clone, PartialEq)]
pub struct BestMetric {
    /// `loss`, or a metrics key (`f1`, `accuracy_mm`).
    pub key: String,
    pub greater_is_better: bool,
}

impl BestMetric {
    /// Its value in an evaluation of `loss` and `metrics` (by key).
    pub fn value(&self, loss: f64, metrics: &[(String, f64)]) -> f64 {
        if self.key == "loss" {
            loss
        } else {
            metrics.iter().find(|(k, _)| *k == self.key).map_or(f64::NAN, |(_, v)| *v)
        }
    }

    /// Whether `value` beats `best` by more than `threshold` (the Trainer's comparison; a NaN
    /// never improves).
    pub fn improves_by(&self, value: f64, best: Option<f64>, threshold: f64) -> bool {
        match best {
            _ if value.is_nan() => false,
            None => true,
            Some(b) if b.is_nan() => true,
            Some(b) => {
                let better = if self.greater_is_better { value > b } else { value < b };
                better && (value - b).abs() > threshold
            }
        }
    }

    pub fn improves(&self, value: f64, best: Option<f64>) -> bool {
        self.improves_by(value, best, 0.0)
    }
}

/// The model's config.json as the coordinator reads it: the same checked and bounded mirror
/// the workers build from (it never loads weights).
pub fn read_model_config(model_dir: &std::path::Path) -> Result<peftrain_spec::ModelConfig, String> {
    peftrain_spec::ModelConfig::from_file(&model_dir.join("config.json")).map_err(|e| e.to_string())
}
