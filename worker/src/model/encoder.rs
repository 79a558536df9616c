//! The Transformer encoder BERT and RoBERTa share (transformers copies `RobertaEncoder` from
//! `BertEncoder` line for line), ported module by module with Hugging Face's names.

use crate::ops::dropout::dropout;
use tch::{Device, Kind, Tensor};

use super::layers::{activate, LayerNorm, Linear};
use super::packing::Group;
use super::Inputs;
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
        // sharded. The forward uses it as transformers does; no gradient flows to it. It stays
        // the parameter itself (detached at each use, not copied once at build time), so the
        // forward always reads the flat buffer a checkpoint or a peer's state was loaded into.
        key.bias_grad = false;
        Ok(SelfAttention {
            query: Linear::new(b, &format!("{name}.query"), h, h, std)?,
            key,
            value: Linear::new(b, &format!("{name}.value"), h, h, std)?,
            num_heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
            dropout: cfg.attention_probs_dropout_prob,
        })
    }

    fn forward(&self, x: &Tensor, layout: &Layout, train: bool) -> Tensor {
        // Attention runs in the compute dtype (a LoRA-adapted projection comes back in fp32).
        let c = self.key.compute;
        let q = self.query.forward(x, train).to_kind(c);
        let k = self.key.forward(x, train).to_kind(c);
        let v = self.value.forward(x, train).to_kind(c);
        let p = if train { self.dropout } else { 0.0 };
        // transformers passes scaling = head_dim ** -0.5 explicitly; so do we.
        let scale = (self.head_dim as f64).powf(-0.5);
        let (nh, hd) = (self.num_heads, self.head_dim);
        // On the CPU in training, the probabilities' dropout masks are the Trainer's (drawn
        // over the padded batch, one per part), applied as SDPA's math backend applies its own
        // (`_scaled_dot_product_attention_math`: q and k each scaled by sqrt(scale), the mask
        // added, softmax, dropout, times v), which is the backend SDPA picks with dropout.
        let masks = if p > 0.0 && x.device() == Device::Cpu { crate::ops::dropout::attention_masks(nh as usize, p) } else { None };
        let attend = |i: usize, part: &Part, q: &Tensor, k: &Tensor, v: &Tensor| {
            let heads = |t: &Tensor| t.view([part.rows, part.seq, nh, hd]).transpose(1, 2);
            let (q, k, v) = (heads(q), heads(k), heads(v));
            let out = match (&masks, &part.additive) {
                (Some(masks), additive) => {
                    let root = scale.sqrt();
                    let scores = (&q * root).matmul(&(&k * root).transpose(-2, -1));
                    let additive = match additive {
                        Some(a) => a.shallow_clone(),
                        None => Tensor::zeros(part.mask.size().as_slice(), (scores.kind(), scores.device()))
                            .masked_fill(&part.mask.logical_not(), f64::NEG_INFINITY),
                    };
                    let probs = (scores + additive).softmax(-1, c);
                    (probs * masks[i].to_kind(c)).matmul(&v)
                }
                (None, Some(additive)) => {
                    Tensor::internal_scaled_dot_product_attention_math(&q, &k, &v, Some(additive), p, false, None::<&Tensor>, scale, false).0
                }
                (None, None) => Tensor::scaled_dot_product_attention(&q, &k, &v, Some(&part.mask), p, false, scale, false),
            };
            out.transpose(1, 2).contiguous().view([part.rows * part.seq, nh * hd])
        };
        let mut outs: Vec<Tensor> = layout
            .parts
            .iter()
            .enumerate()
            .map(|(i, part)| match part.group {
                None => attend(i, part, &q, &k, &v).view([part.rows, part.seq, nh * hd]),
                Some(g) => g.unpad(&attend(i, part, &g.pad(&q), &g.pad(&k), &g.pad(&v))),
            })
            .collect();
        if outs.len() == 1 {
            outs.pop().unwrap_or(q)
        } else {
            Tensor::cat(&outs, 0)
        }
    }
}

/// How attention sees the batch, built once per forward: one part for the padded layout
/// ([rows, seq, hidden] as transformers computes), or one per length group of a packed one
/// ([tokens, hidden], padded per group around attention).
pub struct Layout<'a> {
    parts: Vec<Part<'a>>,
}

struct Part<'a> {
    /// None: the padded batch itself.
    group: Option<&'a Group>,
    rows: i64,
    seq: i64,
    /// Boolean [rows, 1, 1, seq], true where a key may be attended to. transformers' sdpa path
    /// builds such a key-padding mask; it makes SDPA skip padded keys exactly (probability 0),
    /// as the additive finfo.min mask does.
    mask: Tensor,
    /// bf16 on the CPU: the same mask made additive (0 / -inf), for SDPA's math backend, which
    /// is called directly. With dropout SDPA picks that backend anyway; without (evaluation, or
    /// attention dropout 0) it would pick the fused CPU kernel, which at these head sizes ran
    /// 3-7x slower in bf16 (forward + backward, measured; in fp32 the two are within 1.5x either
    /// way, and SDPA keeps its choice). The backend takes the additive mask SDPA's front end
    /// would have made of ours: given a boolean one it would add 1.0 where true.
    additive: Option<Tensor>,
}

impl<'a> Layout<'a> {
    /// `compute`: the dtype attention runs in.
    fn new(inputs: &'a Inputs, compute: Kind) -> Layout<'a> {
        let math = inputs.attention_mask.device() == Device::Cpu && compute == Kind::BFloat16;
        let part = |group: Option<&'a Group>, rows: i64, seq: i64, mask: Tensor| Part {
            group,
            rows,
            seq,
            additive: math
                .then(|| Tensor::zeros(mask.size().as_slice(), (compute, mask.device())).masked_fill(&mask.logical_not(), f64::NEG_INFINITY)),
            mask,
        };
        let parts = match &inputs.packing {
            Some(p) => p.groups.iter().map(|g| part(Some(g), g.rows, g.seq, g.mask.shallow_clone())).collect(),
            None => {
                let (rows, seq) = inputs.attention_mask.size2().unwrap_or((0, 0));
                vec![part(None, rows, seq, inputs.attention_mask.ne(0).view([rows, 1, 1, seq]))]
            }
        };
        Layout { parts }
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
        let h = dropout(&self.dense.forward(x, train), self.dropout, train);
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
                dense: Linear::new(b, &format!("{name}.intermediate.dense"), cfg.hidden_size, cfg.intermediate_size, cfg.initializer_range)?,
                act: cfg.hidden_act,
            },
            output: ResidualOutput::new(b, &format!("{name}.output"), cfg.intermediate_size, cfg)?,
        })
    }

    fn forward(&self, x: &Tensor, layout: &Layout, train: bool) -> Tensor {
        let a = self.attention.self_.forward(x, layout, train);
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
        let layer = (0..cfg.num_hidden_layers).map(|i| Layer::new(b, &format!("{name}.layer.{i}"), cfg)).collect::<Result<Vec<_>, _>>()?;
        Ok(Encoder { layer })
    }

    /// `hidden`: the embeddings, [batch, seq, hidden] or, packed, [tokens, hidden].
    pub fn forward(&self, hidden: Tensor, inputs: &Inputs, train: bool) -> Tensor {
        let compute = self.layer.first().map_or(Kind::Float, |l| l.attention.self_.key.compute);
        let layout = Layout::new(inputs, compute);
        self.layer.iter().fold(hidden, |h, l| l.forward(&h, &layout, train))
    }
}
