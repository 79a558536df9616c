//! The Transformer encoder BERT and RoBERTa share (transformers copies `RobertaEncoder` from
//! `BertEncoder` line for line), ported module by module with Hugging Face's names.

use tch::Tensor;

use super::layers::{activate, LayerNorm, Linear};
use crate::config::{Activation, Config};
use crate::error::ModelError;
use crate::params::Builder;

// https://github.com/huggingface/transformers/blob/main/src/transformers/models/roberta/modeling_roberta.py
// (RobertaSelfAttention, with the sdpa attention interface)
pub struct SelfAttention {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    num_heads: i64,
    head_dim: i64,
    dropout: f64,
}

impl SelfAttention {
    fn new(b: &mut Builder, name: &str, cfg: &Config) -> Result<Self, ModelError> {
        let h = cfg.hidden_size;
        let std = cfg.initializer_range;
        let mut key = Linear::new(b, &format!("{name}.key"), h, h, std)?;
        // The key bias adds q·b_k to every score of a query's row, and softmax is invariant to
        // such a shift: its gradient is exactly zero. Computed, it is float noise that AdamW
        // scales up to updates of arbitrary sign, so results would depend on how a batch was
        // sharded. The forward uses it as transformers does; no gradient flows to it.
        key.bias = key.bias.map(|t| t.detach());
        Ok(SelfAttention {
            query: Linear::new(b, &format!("{name}.query"), h, h, std)?,
            key,
            value: Linear::new(b, &format!("{name}.value"), h, h, std)?,
            num_heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
            dropout: cfg.attention_probs_dropout_prob,
        })
    }

    /// `mask`: boolean [batch, 1, 1, seq], true where a key may be attended to.
    fn forward(&self, x: &Tensor, mask: &Tensor, train: bool) -> Tensor {
        let (bsz, seq, _) = x.size3().unwrap_or((0, 0, 0));
        // Attention runs in the compute dtype (a LoRA-adapted projection comes back in fp32).
        let c = self.key.compute;
        let heads = |t: Tensor| t.to_kind(c).view([bsz, seq, self.num_heads, self.head_dim]).transpose(1, 2);
        let q = heads(self.query.forward(x, train));
        let k = heads(self.key.forward(x, train));
        let v = heads(self.value.forward(x, train));
        let p = if train { self.dropout } else { 0.0 };
        // transformers passes scaling = head_dim ** -0.5 explicitly; so do we.
        let scale = (self.head_dim as f64).powf(-0.5);
        let out = Tensor::scaled_dot_product_attention(&q, &k, &v, Some(mask), p, false, scale, false);
        out.transpose(1, 2).contiguous().view([bsz, seq, self.num_heads * self.head_dim])
    }
}

// RobertaSelfOutput / RobertaOutput: dense -> dropout -> LayerNorm(x + residual).
#[allow(non_snake_case)]
pub struct ResidualOutput {
    pub dense: Linear,
    pub LayerNorm: LayerNorm,
    dropout: f64,
}

impl ResidualOutput {
    fn new(b: &mut Builder, name: &str, in_dim: i64, cfg: &Config) -> Result<Self, ModelError> {
        Ok(ResidualOutput {
            dense: Linear::new(b, &format!("{name}.dense"), in_dim, cfg.hidden_size, cfg.initializer_range)?,
            LayerNorm: LayerNorm::new(b, &format!("{name}.LayerNorm"), cfg.hidden_size, cfg.layer_norm_eps)?,
            dropout: cfg.hidden_dropout_prob,
        })
    }

    fn forward(&self, x: &Tensor, residual: &Tensor, train: bool) -> Tensor {
        // The residual stream stays fp32 (LayerNorm's output); a bf16 sublayer output is
        // promoted by the addition.
        let h = self.dense.forward(x, train).dropout(self.dropout, train);
        self.LayerNorm.forward(&(h + residual))
    }
}

// RobertaAttention: self-attention then its output block.
pub struct Attention {
    pub self_: SelfAttention,
    pub output: ResidualOutput,
}

// RobertaIntermediate: dense -> activation.
pub struct Intermediate {
    pub dense: Linear,
    act: Activation,
}

// RobertaLayer
pub struct Layer {
    pub attention: Attention,
    pub intermediate: Intermediate,
    pub output: ResidualOutput,
}

impl Layer {
    fn new(b: &mut Builder, name: &str, cfg: &Config) -> Result<Self, ModelError> {
        Ok(Layer {
            attention: Attention {
                self_: SelfAttention::new(b, &format!("{name}.attention.self"), cfg)?,
                output: ResidualOutput::new(b, &format!("{name}.attention.output"), cfg.hidden_size, cfg)?,
            },
            intermediate: Intermediate {
                dense: Linear::new(
                    b,
                    &format!("{name}.intermediate.dense"),
                    cfg.hidden_size,
                    cfg.intermediate_size,
                    cfg.initializer_range,
                )?,
                act: cfg.hidden_act,
            },
            output: ResidualOutput::new(b, &format!("{name}.output"), cfg.intermediate_size, cfg)?,
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor, train: bool) -> Tensor {
        let a = self.attention.self_.forward(x, mask, train);
        let a = self.attention.output.forward(&a, x, train);
        let i = activate(&self.intermediate.dense.forward(&a, train), self.intermediate.act);
        self.output.forward(&i, &a, train)
    }
}

// RobertaEncoder / BertEncoder
pub struct Encoder {
    pub layer: Vec<Layer>,
}

impl Encoder {
    /// `name` is `roberta.encoder` or `bert.encoder`.
    pub fn new(b: &mut Builder, name: &str, cfg: &Config) -> Result<Self, ModelError> {
        let layer = (0..cfg.num_hidden_layers)
            .map(|i| Layer::new(b, &format!("{name}.layer.{i}"), cfg))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Encoder { layer })
    }

    /// `attention_mask`: [batch, seq], 1 for real tokens and 0 for padding.
    pub fn forward(&self, hidden: Tensor, attention_mask: &Tensor, train: bool) -> Tensor {
        let (bsz, seq) = attention_mask.size2().unwrap_or((0, 0));
        // transformers' sdpa path builds a boolean key-padding mask; a boolean mask makes SDPA
        // skip padded keys exactly (probability 0), as the additive finfo.min mask does.
        let mask = attention_mask.ne(0).view([bsz, 1, 1, seq]);
        self.layer.iter().fold(hidden, |h, l| l.forward(&h, &mask, train))
    }
}
