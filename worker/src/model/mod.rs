//! Sequence classifiers (RoBERTa and BERT families) and how a replica is built from a model
//! directory, a method and a seed.

pub mod bert;
pub mod encoder;
pub mod layers;
pub mod packing;
pub mod roberta;

use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::config::{Config, ModelFiles, ModelType};
use crate::error::ModelError;
use crate::ops::dropout::MaskLayout;
use crate::params::{Builder, Checkpoint, ParamStore, Source};
use crate::peft::Method;
use bert::BertForSequenceClassification;
use layers::Embedding;
pub use packing::Packing;
use roberta::RobertaForSequenceClassification;

/// A right-padded batch on the model's device.
pub struct Inputs {
    /// [batch, seq] int64.
    pub input_ids: Tensor,
    /// [batch, seq] int64 segment ids; None means all zero.
    pub token_type_ids: Option<Tensor>,
    /// [batch, seq] int64, 1 for real tokens.
    pub attention_mask: Tensor,
    /// Set: compute padding-free (see [`Packing`]); None: on the padded [batch, seq] layout,
    /// as transformers does.
    pub packing: Option<Packing>,
}

impl Inputs {
    /// The same batch, computed padding-free.
    pub fn packed(mut self) -> Inputs {
        self.packing = Some(Packing::from_mask(&self.attention_mask));
        self
    }

    /// A per-token [batch, seq, ...] tensor in the layout the encoder computes on: unchanged
    /// when padded, [tokens, ...] when packed.
    pub(crate) fn tokens(&self, t: &Tensor) -> Tensor {
        match &self.packing {
            Some(p) => t.flatten(0, 1).index_select(0, &p.index),
            None => t.shallow_clone(),
        }
    }

    /// Word + token type + position embeddings, summed in fp32 whatever the tables' storage
    /// dtype, in the layout the encoder computes on. `positions` is [batch, seq] or broadcasts
    /// to it; it is taken on the padded layout (RoBERTa's count the padding).
    pub(crate) fn embed(&self, word: &Embedding, token_type: &Embedding, position: &Embedding, positions: &Tensor) -> Tensor {
        let ids = self.tokens(&self.input_ids);
        let types = match &self.token_type_ids {
            Some(t) => self.tokens(t),
            None => ids.zeros_like(),
        };
        let positions = match self.packing {
            Some(_) => self.tokens(&positions.expand_as(&self.input_ids)),
            None => positions.shallow_clone(),
        };
        word.forward(&ids).to_kind(Kind::Float) + token_type.forward(&types).to_kind(Kind::Float) + position.forward(&positions).to_kind(Kind::Float)
    }

    /// Where torch's dropout masks fall in this batch's tensors (ops/dropout.rs).
    pub fn mask_layout(&self) -> MaskLayout {
        let (rows, seq) = self.attention_mask.size2().unwrap_or((0, 0));
        let (rows, seq) = (rows.max(0) as usize, seq.max(0) as usize);
        match &self.packing {
            None => MaskLayout::padded(rows, seq),
            Some(p) => MaskLayout::packed(rows, seq, &p.host_index, p.groups.iter().map(|g| (g.batch_rows.as_slice(), g.seq.max(0) as usize))),
        }
    }

    /// Each row's first token ([CLS] / <s>) of the encoder's output: [batch, hidden].
    pub(crate) fn first_tokens(&self, h: &Tensor) -> Tensor {
        match &self.packing {
            Some(p) => h.index_select(0, &p.starts),
            None => h.select(1, 0),
        }
    }
}

pub enum SequenceClassifier {
    Roberta(RobertaForSequenceClassification),
    Bert(BertForSequenceClassification),
}

impl SequenceClassifier {
    /// Logits [batch, num_labels]; dropout is active only when `train`.
    pub fn forward(&self, inputs: &Inputs, train: bool) -> Tensor {
        match self {
            SequenceClassifier::Roberta(m) => m.forward(inputs, train),
            SequenceClassifier::Bert(m) => m.forward(inputs, train),
        }
    }
}

/// A built replica: the module tree, its parameters and what loading found.
pub struct Loaded {
    pub model: SequenceClassifier,
    pub params: ParamStore,
    pub config: Config,
    pub files: ModelFiles,
    pub num_labels: i64,
    pub newly_initialized: Vec<String>,
    pub unused_keys: Vec<String>,
    /// Number of parameters in the task head (peft counts a frozen copy of it for LoRA).
    pub head_params: i64,
}

/// How to build a replica.
pub struct LoadOptions<'a> {
    pub method: &'a Method,
    pub device: Device,
    /// dtype of the frozen parameters (fp32 or bf16); trainable ones are always fp32.
    pub base_kind: Kind,
    /// Overrides the config's label count (the task decides it).
    pub num_labels: Option<i64>,
    /// Seeds newly initialised parameters (head, LoRA A).
    pub seed: u64,
    /// Build shapes only (parameter counting: no weights needed).
    pub shapes_only: bool,
    /// No checkpoint: initialise every parameter as transformers does (random models of a real
    /// shape, for speed measurements).
    pub random_init: bool,
}

/// Builds a replica from `dir` (config.json plus model.safetensors / pytorch_model.bin).
pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Loaded, ModelError> {
    let files = ModelFiles::locate(dir)?;
    let config = Config::from_file(&files.config)?;
    let family = config.family();
    let num_labels = opts.num_labels.unwrap_or_else(|| config.labels());
    let checkpoint = if opts.shapes_only || opts.random_init {
        None
    } else {
        let path = files.weights.clone().ok_or_else(|| ModelError::NoWeights { path: dir.to_path_buf() })?;
        Some(Checkpoint::read(&path)?)
    };
    let source = match &checkpoint {
        Some(c) => Source::Checkpoint(c),
        None if opts.shapes_only => Source::ShapesOnly,
        None => Source::Random,
    };
    tch::manual_seed(opts.seed as i64);
    let mut b = Builder::new(source, opts.method, family, opts.device, opts.base_kind);
    let model = tch::no_grad(|| -> Result<SequenceClassifier, ModelError> {
        Ok(match family {
            ModelType::Roberta => SequenceClassifier::Roberta(RobertaForSequenceClassification::new(&mut b, &config, num_labels)?),
            ModelType::Bert => SequenceClassifier::Bert(BertForSequenceClassification::new(&mut b, &config, num_labels)?),
        })
    })?;
    let built = b.finish();
    let head_params = built
        .store
        .trainable
        .iter()
        .chain(built.store.frozen.iter())
        .filter(|(n, _)| n.starts_with(crate::peft::HEAD_PREFIX) && !built.store.is_added(n))
        .map(|(_, t)| t.numel() as i64)
        .sum();
    Ok(Loaded {
        model,
        params: built.store,
        config,
        files,
        num_labels,
        newly_initialized: built.newly_initialized,
        unused_keys: built.unused_keys,
        head_params,
    })
}

impl Loaded {
    /// Parameters peft counts in "all params" beyond the model's own: `modules_to_save` keeps a
    /// frozen original of the head beside the trained copy.
    pub fn peft_extra_params(&self, method: &Method) -> i64 {
        if method.rules().keeps_head_copy() {
            self.head_params
        } else {
            0
        }
    }

    /// Parameters outside the embedding tables, as transformers'
    /// `num_parameters(exclude_embeddings=True)` counts them (used for total_flos).
    pub fn non_embedding_params(&self) -> i64 {
        self.params
            .trainable
            .iter()
            .chain(self.params.frozen.iter())
            .filter(|(n, _)| !(n.contains("embeddings.") && n.ends_with("_embeddings.weight")))
            .map(|(_, t)| t.numel() as i64)
            .sum()
    }

    pub fn class_name(&self) -> &'static str {
        match self.model {
            SequenceClassifier::Roberta(_) => "RobertaForSequenceClassification",
            SequenceClassifier::Bert(_) => "BertForSequenceClassification",
        }
    }
}
