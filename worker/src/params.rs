//! Parameters split by construction into the trainable set (fp32, requires_grad) and the frozen
//! set (base dtype, no grad), each loaded strictly from the checkpoint under its HF key.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use crate::config::ModelType;
use crate::error::ModelError;
use peftrain_spec::Method;

/// The named tensors of a checkpoint file, as stored (any dtype), with the keys it used.
pub struct Checkpoint {
    pub path: PathBuf,
    tensors: HashMap<String, Tensor>,
}

/// Weights are floats: an integer or boolean tensor under a weight's name (I64 values of 2^62,
/// say) would be converted silently and trained on.
pub fn check_float(path: &Path, name: &str, t: &Tensor) -> Result<(), ModelError> {
    match t.kind() {
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16 => Ok(()),
        other => Err(ModelError::Checkpoint { path: path.to_path_buf(), why: format!("tensor `{name}` is {other:?}, not a float dtype") }),
    }
}

impl Checkpoint {
    /// Reads `model.safetensors`, or a `pytorch_model.bin` zip archive (what `torch.save`
    /// writes), into host memory.
    pub fn read(path: &Path) -> Result<Checkpoint, ModelError> {
        let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
        let list = if is_safetensors { Tensor::read_safetensors(path) } else { Tensor::loadz_multi(path) }.map_err(|e| {
            let msg = e.to_string();
            let why = if msg.contains("GenericDict") {
                // libtorch's pickle reader takes a plain dict of tensors, not an OrderedDict.
                "libtorch cannot read this pickle (an OrderedDict state_dict?); convert it to model.safetensors \
                 (safetensors.torch.save_file(dict(torch.load(path)), 'model.safetensors'))"
                    .to_string()
            } else {
                first_line(&msg)
            };
            ModelError::Checkpoint { path: path.to_path_buf(), why }
        })?;
        Ok(Checkpoint { path: path.to_path_buf(), tensors: list.into_iter().collect() })
    }

    pub fn from_tensors(path: &Path, tensors: Vec<(String, Tensor)>) -> Checkpoint {
        Checkpoint { path: path.to_path_buf(), tensors: tensors.into_iter().collect() }
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }

    pub fn get(&self, key: &str) -> Option<&Tensor> {
        self.tensors.get(key)
    }

    /// Finds `name` (a key of the `*ForSequenceClassification` model) under the spellings
    /// checkpoints use: with or without the family prefix (`roberta.`/`bert.`), and the
    /// `gamma`/`beta` names of old LayerNorm checkpoints.
    fn find(&self, name: &str, prefix: &str) -> Option<(&String, &Tensor)> {
        let mut candidates = vec![name.to_string()];
        if let Some(rest) = name.strip_prefix(&format!("{prefix}.")) {
            candidates.push(rest.to_string());
        }
        let legacy: Vec<String> = candidates
            .iter()
            .filter_map(|c| {
                c.strip_suffix("LayerNorm.weight")
                    .map(|s| format!("{s}LayerNorm.gamma"))
                    .or_else(|| c.strip_suffix("LayerNorm.bias").map(|s| format!("{s}LayerNorm.beta")))
            })
            .collect();
        candidates.extend(legacy);
        candidates.iter().find_map(|c| self.tensors.get_key_value(c))
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

/// How a parameter without a checkpoint entry is initialised (transformers' `_init_weights`,
/// peft's layer constructors), drawn as torch draws it so that a seed gives the values
/// transformers + peft give for the same `torch.manual_seed`.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    /// `normal_(0, initializer_range)`: Linear and Embedding weights.
    Normal(f64),
    Zeros,
    Ones,
    /// peft's LoRA A of a module with `out_dim` outputs, drawn as `lora.Linear`'s constructor
    /// draws: `nn.Linear(in, r)` (Kaiming-uniform, a = sqrt 5), `nn.Linear(r, out)` for B (then
    /// zeroed), and A's reset, Kaiming-uniform again: the third draw is A.
    LoraA {
        out_dim: i64,
    },
}

impl Init {
    /// Whether the value takes draws from the generator (and so waits for its turn).
    fn draws(self) -> bool {
        matches!(self, Init::Normal(_) | Init::LoraA { .. })
    }
}

/// Where parameter values come from.
pub enum Source<'a> {
    /// A checkpoint; keys absent from it may only be newly initialised head parameters.
    Checkpoint(&'a Checkpoint),
    /// A checkpoint-free model with every parameter initialised as transformers would
    /// (used to create random models of a real shape).
    Random,
    /// Shapes only, values undefined (parameter counting).
    ShapesOnly,
}

/// The model's parameters, split by construction.
#[derive(Default)]
pub struct ParamStore {
    /// Parameters the method trains: fp32 leaves with requires_grad, in sorted-name order.
    pub trainable: BTreeMap<String, Tensor>,
    /// Everything else, in the base dtype, never requiring grad.
    pub frozen: BTreeMap<String, Tensor>,
    /// Names of the parameters the method added beside the base model (never in a base
    /// checkpoint, never in a merged one).
    pub added: BTreeSet<String>,
}

impl ParamStore {
    pub fn trainable_count(&self) -> i64 {
        self.trainable.values().map(|t| t.numel() as i64).sum()
    }
    pub fn total_count(&self) -> i64 {
        self.trainable_count() + self.frozen.values().map(|t| t.numel() as i64).sum::<i64>()
    }
    pub fn is_added(&self, name: &str) -> bool {
        self.added.contains(name)
    }
}

/// Declares parameters while the model is built: each is looked up in the source under its HF
/// key, checked for shape, and put in the trainable or frozen set as the method decides.
pub struct Builder<'a> {
    source: Source<'a>,
    method: &'a Method,
    family: ModelType,
    device: Device,
    base_kind: Kind,
    store: ParamStore,
    newly_initialized: Vec<String>,
    used_keys: BTreeSet<String>,
    /// Parameters waiting for their random initial values, in declaration order.
    draws: Vec<Draw>,
}

/// A parameter whose initial values are drawn when the build finishes.
struct Draw {
    target: Tensor,
    init: Init,
    /// Added by the method (LoRA): drawn after every base parameter, as peft wraps a model
    /// transformers has already initialised.
    added: bool,
}

/// What a finished build hands back besides the model.
pub struct Built {
    pub store: ParamStore,
    /// Head parameters absent from the checkpoint and initialised afresh.
    pub newly_initialized: Vec<String>,
    /// Checkpoint keys the model did not use (e.g. roberta-base's MLM head).
    pub unused_keys: Vec<String>,
}

impl<'a> Builder<'a> {
    pub fn new(source: Source<'a>, method: &'a Method, family: ModelType, device: Device, base_kind: Kind) -> Self {
        Builder {
            source,
            method,
            family,
            device,
            base_kind,
            store: ParamStore::default(),
            newly_initialized: Vec::new(),
            used_keys: BTreeSet::new(),
            draws: Vec::new(),
        }
    }

    pub fn method(&self) -> &'a Method {
        self.method
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// dtype of the base model's matmuls: the frozen weights' storage dtype.
    pub fn compute_kind(&self) -> Kind {
        self.base_kind
    }

    /// Whether `name` may be missing from a base checkpoint and be initialised afresh, as
    /// transformers does for a task head (roberta-base ships only its MLM head).
    fn may_be_new(&self, name: &str) -> bool {
        name.starts_with("classifier.") || name.starts_with(&format!("{}.pooler.", self.family.prefix()))
    }

    /// Declares a base-model parameter under its checkpoint key.
    pub fn param(&mut self, name: &str, shape: &[i64], init: Init) -> Result<Tensor, ModelError> {
        let trainable = self.method.rules().trains_base(name);
        self.declare(name, shape, init, trainable, true)
    }

    /// Declares a parameter the method adds (LoRA matrices): never in the base checkpoint, always
    /// trainable.
    pub fn added(&mut self, name: &str, shape: &[i64], init: Init) -> Result<Tensor, ModelError> {
        self.store.added.insert(name.to_string());
        self.declare(name, shape, init, true, false)
    }

    fn declare(&mut self, name: &str, shape: &[i64], init: Init, trainable: bool, from_checkpoint: bool) -> Result<Tensor, ModelError> {
        let kind = if trainable { Kind::Float } else { self.base_kind };
        let mut drawn = false;
        let value = match (&self.source, from_checkpoint) {
            (Source::ShapesOnly, _) => Tensor::empty(shape, (kind, Device::Cpu)),
            (Source::Checkpoint(ckpt), true) => match ckpt.find(name, self.family.prefix()) {
                Some((key, t)) => {
                    if t.size() != shape {
                        return Err(ModelError::ShapeMismatch {
                            path: ckpt.path.clone(),
                            name: key.clone(),
                            expected: shape.to_vec(),
                            found: t.size(),
                        });
                    }
                    check_float(&ckpt.path, key, t)?;
                    self.used_keys.insert(key.clone());
                    t.to_kind(kind)
                }
                None if self.may_be_new(name) => {
                    self.newly_initialized.push(name.to_string());
                    drawn = init.draws();
                    constant(shape, init, kind)
                }
                None => return Err(ModelError::MissingTensor { path: ckpt.path.clone(), name: name.to_string() }),
            },
            _ => {
                drawn = init.draws();
                constant(shape, init, kind)
            }
        };
        let value = value.to_device(self.device).detach();
        let value = if trainable { value.set_requires_grad(true) } else { value };
        if drawn {
            self.draws.push(Draw { target: value.shallow_clone(), init, added: !from_checkpoint });
        }
        let set = if trainable { &mut self.store.trainable } else { &mut self.store.frozen };
        if set.insert(name.to_string(), value.shallow_clone()).is_some() {
            return Err(ModelError::Method(format!("parameter {name} declared twice")));
        }
        Ok(value)
    }

    /// Draws the random initial values in the order transformers + peft draw them from the
    /// generator `tch::manual_seed` seeded: the base model's new parameters (the task head) in
    /// module order, then the method's, module by module. The values are drawn on the CPU and
    /// copied, so every worker builds the same replica whatever its device.
    pub fn finish(self) -> Built {
        tch::no_grad(|| {
            let (base, added): (Vec<&Draw>, Vec<&Draw>) = self.draws.iter().partition(|d| !d.added);
            for d in base.into_iter().chain(added) {
                let mut target = d.target.shallow_clone();
                target.copy_(&drawn(&d.target.size(), d.init));
            }
        });
        let unused_keys = match &self.source {
            Source::Checkpoint(ckpt) => {
                let mut v: Vec<String> = ckpt.keys().filter(|k| !self.used_keys.contains(*k)).cloned().collect();
                v.sort();
                v
            }
            _ => Vec::new(),
        };
        Built { store: self.store, newly_initialized: self.newly_initialized, unused_keys }
    }
}

/// A value that needs no draw (a placeholder, filled by `finish`, for one that does).
fn constant(shape: &[i64], init: Init, kind: Kind) -> Tensor {
    match init {
        Init::Ones => Tensor::ones(shape, (kind, Device::Cpu)),
        _ => Tensor::zeros(shape, (kind, Device::Cpu)),
    }
}

/// fp32 values drawn as torch's initialisers draw them (`normal_`, `kaiming_uniform_`).
fn drawn(shape: &[i64], init: Init) -> Tensor {
    let empty = |s: &[i64]| Tensor::empty(s, (Kind::Float, Device::Cpu));
    match init {
        Init::Normal(std) => empty(shape).normal_(0.0, std),
        Init::LoraA { out_dim } => {
            let r = shape.first().copied().unwrap_or(1);
            let _ctor_a = kaiming_uniform(empty(shape));
            let _ctor_b = kaiming_uniform(empty(&[out_dim, r]));
            kaiming_uniform(empty(shape))
        }
        Init::Zeros | Init::Ones => constant(shape, init, Kind::Float),
    }
}

/// `torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5))` (nn.Linear's default), the bound
/// computed in torch's steps: U(-b, b), b = sqrt(3) * gain / sqrt(fan_in), gain = sqrt(2 / (1 + a^2)).
fn kaiming_uniform(mut w: Tensor) -> Tensor {
    let fan_in = w.size().get(1).copied().unwrap_or(1).max(1) as f64;
    let a = 5f64.sqrt();
    let gain = (2.0 / (1.0 + a * a)).sqrt();
    let bound = 3f64.sqrt() * (gain / fan_in.sqrt());
    let _ = w.uniform_(-bound, bound);
    w
}
