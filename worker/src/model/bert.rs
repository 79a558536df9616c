//! BERT: `BertModel` and `BertForSequenceClassification`, ported from transformers with its
//! module names. Here because it is the encoder RoBERTa copies, and because the only real
//! pretrained checkpoint reachable offline (all-MiniLM-L6-v2) is BERT-family.

use crate::ops::dropout::dropout;
use tch::{Kind, Tensor};

use super::encoder::Encoder;
use super::layers::{Embedding, LayerNorm, Linear};
use super::Inputs;
use crate::config::Config;
use crate::error::ModelError;
use crate::params::Builder;

// https://github.com/huggingface/transformers/blob/main/src/transformers/models/bert/modeling_bert.py
// (BertEmbeddings)
#[allow(non_snake_case)]
pub struct BertEmbeddings {
    pub word_embeddings: Embedding,
    pub position_embeddings: Embedding,
    pub token_type_embeddings: Embedding,
    pub LayerNorm: LayerNorm,
    dropout: f64,
}

impl BertEmbeddings {
    fn new(b: &mut Builder, name: &str, cfg: &Config) -> Result<Self, ModelError> {
        let (h, std) = (cfg.hidden_size, cfg.initializer_range);
        Ok(BertEmbeddings {
            word_embeddings: Embedding::new(b, &format!("{name}.word_embeddings"), cfg.vocab_size, h, std, Some(cfg.pad_id()))?,
            position_embeddings: Embedding::new(b, &format!("{name}.position_embeddings"), cfg.max_position_embeddings, h, std, None)?,
            token_type_embeddings: Embedding::new(b, &format!("{name}.token_type_embeddings"), cfg.type_vocab_size, h, std, None)?,
            LayerNorm: LayerNorm::new(b, &format!("{name}.LayerNorm"), h, cfg.layer_norm_eps)?,
            dropout: cfg.hidden_dropout_prob,
        })
    }

    fn forward(&self, inputs: &Inputs, train: bool) -> Tensor {
        let seq = inputs.input_ids.size().get(1).copied().unwrap_or(0);
        // Absolute positions 0..seq, whatever the padding (BERT pads on the right).
        let positions = Tensor::arange(seq, (Kind::Int64, inputs.input_ids.device())).unsqueeze(0);
        let e = inputs.embed(&self.word_embeddings, &self.token_type_embeddings, &self.position_embeddings, &positions);
        dropout(&self.LayerNorm.forward(&e), self.dropout, train)
    }
}

// BertPooler: dense -> tanh on the [CLS] token.
pub struct BertPooler {
    pub dense: Linear,
}

// BertModel
pub struct BertModel {
    pub embeddings: BertEmbeddings,
    pub encoder: Encoder,
    pub pooler: BertPooler,
}

impl BertModel {
    pub fn new(b: &mut Builder, name: &str, cfg: &Config) -> Result<Self, ModelError> {
        Ok(BertModel {
            embeddings: BertEmbeddings::new(b, &format!("{name}.embeddings"), cfg)?,
            encoder: Encoder::new(b, &format!("{name}.encoder"), cfg)?,
            pooler: BertPooler { dense: Linear::new(b, &format!("{name}.pooler.dense"), cfg.hidden_size, cfg.hidden_size, cfg.initializer_range)? },
        })
    }

    /// Pooled output [batch, hidden].
    pub fn forward(&self, inputs: &Inputs, train: bool) -> Tensor {
        let h = self.embeddings.forward(inputs, train);
        let h = self.encoder.forward(h, inputs, train);
        self.pooler.dense.forward(&inputs.first_tokens(&h), train).tanh()
    }
}

// BertForSequenceClassification: pooler output -> dropout -> classifier.
pub struct BertForSequenceClassification {
    pub bert: BertModel,
    pub classifier: Linear,
    dropout: f64,
}

impl BertForSequenceClassification {
    pub fn new(b: &mut Builder, cfg: &Config, num_labels: i64) -> Result<Self, ModelError> {
        Ok(BertForSequenceClassification {
            bert: BertModel::new(b, "bert", cfg)?,
            classifier: Linear::new(b, "classifier", cfg.hidden_size, num_labels, cfg.initializer_range)?,
            dropout: cfg.head_dropout(),
        })
    }

    pub fn forward(&self, inputs: &Inputs, train: bool) -> Tensor {
        let pooled = dropout(&self.bert.forward(inputs, train), self.dropout, train);
        self.classifier.forward(&pooled, train)
    }
}
