//! RoBERTa: `RobertaModel` and `RobertaForSequenceClassification`, ported from transformers with
//! its module names, so every parameter's path is its checkpoint key.

use crate::ops::dropout::dropout;
use tch::{Kind, Tensor};

use super::encoder::Encoder;
use super::layers::{Embedding, LayerNorm, Linear};
use super::Inputs;
use crate::config::Config;
use crate::error::ModelError;
use crate::params::Builder;

// https://github.com/huggingface/transformers/blob/main/src/transformers/models/roberta/modeling_roberta.py
// (RobertaEmbeddings)
#[allow(non_snake_case)]
pub struct RobertaEmbeddings {
    pub word_embeddings: Embedding,
    pub position_embeddings: Embedding,
    pub token_type_embeddings: Embedding,
    pub LayerNorm: LayerNorm,
    padding_idx: i64,
    dropout: f64,
}

impl RobertaEmbeddings {
    fn new(b: &mut Builder, name: &str, cfg: &Config) -> Result<Self, ModelError> {
        let (h, std, pad) = (cfg.hidden_size, cfg.initializer_range, cfg.pad_id());
        Ok(RobertaEmbeddings {
            word_embeddings: Embedding::new(b, &format!("{name}.word_embeddings"), cfg.vocab_size, h, std, Some(pad))?,
            position_embeddings: Embedding::new(b, &format!("{name}.position_embeddings"), cfg.max_position_embeddings, h, std, Some(pad))?,
            token_type_embeddings: Embedding::new(b, &format!("{name}.token_type_embeddings"), cfg.type_vocab_size, h, std, None)?,
            LayerNorm: LayerNorm::new(b, &format!("{name}.LayerNorm"), h, cfg.layer_norm_eps)?,
            padding_idx: pad,
            dropout: cfg.hidden_dropout_prob,
        })
    }

    /// fairseq's `make_positions`: non-pad tokens count up from padding_idx + 1, pads stay at
    /// padding_idx.
    pub fn position_ids(input_ids: &Tensor, padding_idx: i64) -> Tensor {
        let mask = input_ids.ne(padding_idx).to_kind(Kind::Int);
        (mask.cumsum(1, Kind::Int) * &mask).to_kind(Kind::Int64) + padding_idx
    }

    fn forward(&self, inputs: &Inputs, train: bool) -> Tensor {
        let positions = Self::position_ids(&inputs.input_ids, self.padding_idx);
        let e = inputs.embed(&self.word_embeddings, &self.token_type_embeddings, &self.position_embeddings, &positions);
        dropout(&self.LayerNorm.forward(&e), self.dropout, train)
    }
}

// RobertaModel(add_pooling_layer=False), as RobertaForSequenceClassification builds it.
pub struct RobertaModel {
    pub embeddings: RobertaEmbeddings,
    pub encoder: Encoder,
}

impl RobertaModel {
    pub fn new(b: &mut Builder, name: &str, cfg: &Config) -> Result<Self, ModelError> {
        Ok(RobertaModel {
            embeddings: RobertaEmbeddings::new(b, &format!("{name}.embeddings"), cfg)?,
            encoder: Encoder::new(b, &format!("{name}.encoder"), cfg)?,
        })
    }

    /// Last hidden state [batch, seq, hidden].
    pub fn forward(&self, inputs: &Inputs, train: bool) -> Tensor {
        let h = self.embeddings.forward(inputs, train);
        self.encoder.forward(h, inputs, train)
    }
}

// RobertaClassificationHead: dropout -> dense -> tanh -> dropout -> out_proj on the <s> token.
pub struct RobertaClassificationHead {
    pub dense: Linear,
    pub out_proj: Linear,
    dropout: f64,
}

impl RobertaClassificationHead {
    fn new(b: &mut Builder, cfg: &Config, num_labels: i64) -> Result<Self, ModelError> {
        let (h, std) = (cfg.hidden_size, cfg.initializer_range);
        Ok(RobertaClassificationHead {
            dense: Linear::new(b, "classifier.dense", h, h, std)?,
            out_proj: Linear::new(b, "classifier.out_proj", h, num_labels, std)?,
            dropout: cfg.head_dropout(),
        })
    }

    /// `first`: the encoder's output at each row's first token, [batch, hidden].
    fn forward(&self, first: &Tensor, train: bool) -> Tensor {
        let x = dropout(first, self.dropout, train);
        let x = dropout(&self.dense.forward(&x, train).tanh(), self.dropout, train);
        self.out_proj.forward(&x, train)
    }
}

// RobertaForSequenceClassification
pub struct RobertaForSequenceClassification {
    pub roberta: RobertaModel,
    pub classifier: RobertaClassificationHead,
}

impl RobertaForSequenceClassification {
    pub fn new(b: &mut Builder, cfg: &Config, num_labels: i64) -> Result<Self, ModelError> {
        Ok(RobertaForSequenceClassification {
            roberta: RobertaModel::new(b, "roberta", cfg)?,
            classifier: RobertaClassificationHead::new(b, cfg, num_labels)?,
        })
    }

    /// Logits [batch, num_labels].
    pub fn forward(&self, inputs: &Inputs, train: bool) -> Tensor {
        let h = self.roberta.forward(inputs, train);
        self.classifier.forward(&inputs.first_tokens(&h), train)
    }
}
