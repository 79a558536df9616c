//! The torch.nn building blocks the encoders use (Linear with an optional adapter, LayerNorm,
//! Embedding, activations), holding parameters declared through the `Builder`.

use tch::{Kind, Tensor};

use crate::config::Activation;
use crate::error::ModelError;
use crate::params::{Builder, Init};
use crate::peft::{peft, LinearAdapter};

pub use crate::ops::as_kind;

/// `nn.Linear`, with an adapter (LoRA, IA3) when the method targets this module.
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// false: the bias is used but never receives a gradient (the key projection's).
    pub bias_grad: bool,
    pub adapter: Option<Box<dyn LinearAdapter>>,
    /// dtype the matmul runs in: the base dtype (bf16 or fp32). A trainable fp32 weight is cast
    /// for the op and its gradient flows back to the fp32 master, as under autocast.
    pub compute: Kind,
}

impl Linear {
    /// `name` is the module path (`roberta.encoder.layer.0.attention.self.query`); the
    /// parameters are `{name}.weight` and `{name}.bias`, as in the checkpoint.
    pub fn new(b: &mut Builder, name: &str, in_dim: i64, out_dim: i64, init_std: f64) -> Result<Linear, ModelError> {
        let weight = b.param(&format!("{name}.weight"), &[out_dim, in_dim], Init::Normal(init_std))?;
        let bias = Some(b.param(&format!("{name}.bias"), &[out_dim], Init::Zeros)?);
        let adapter = peft(b.method()).adapter(b, name, in_dim, out_dim)?;
        Ok(Linear { weight, bias, bias_grad: true, adapter, compute: b.compute_kind() })
    }

    /// The output is in the compute dtype (fp32 where an adapter's fp32 parameters touch it).
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        match &self.adapter {
            None => self.base(x),
            Some(a) => a.forward(x, &|x: &Tensor| self.base(x), train),
        }
    }

    /// The frozen (or trained) base Linear alone, in the compute dtype.
    fn base(&self, x: &Tensor) -> Tensor {
        let c = self.compute;
        let bias = self.bias.as_ref().map(|b| if self.bias_grad { as_kind(b, c) } else { as_kind(&b.detach(), c) });
        as_kind(x, c).linear(&as_kind(&self.weight, c), bias.as_ref())
    }
}

/// `nn.LayerNorm(hidden, eps=config.layer_norm_eps)`.
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(b: &mut Builder, name: &str, dim: i64, eps: f64) -> Result<LayerNorm, ModelError> {
        Ok(LayerNorm {
            weight: b.param(&format!("{name}.weight"), &[dim], Init::Ones)?,
            bias: b.param(&format!("{name}.bias"), &[dim], Init::Zeros)?,
            eps,
        })
    }

    /// Always fp32 out: normalisation statistics in fp32 whatever the storage dtype (autocast
    /// keeps layer_norm in fp32 too), and the residual stream it feeds stays fp32.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let dim = *self.weight.size().last().unwrap_or(&0);
        as_kind(x, Kind::Float).layer_norm([dim], Some(&as_kind(&self.weight, Kind::Float)), Some(&as_kind(&self.bias, Kind::Float)), self.eps, true)
    }
}

/// `nn.Embedding(num, dim, padding_idx)`: the padding row gets no gradient.
pub struct Embedding {
    pub weight: Tensor,
    pub padding_idx: Option<i64>,
}

impl Embedding {
    pub fn new(b: &mut Builder, name: &str, num: i64, dim: i64, init_std: f64, padding_idx: Option<i64>) -> Result<Embedding, ModelError> {
        Ok(Embedding { weight: b.param(&format!("{name}.weight"), &[num, dim], Init::Normal(init_std))?, padding_idx })
    }

    pub fn forward(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.weight, ids, self.padding_idx.unwrap_or(-1), false, false)
    }
}

pub fn activate(x: &Tensor, act: Activation) -> Tensor {
    match act {
        Activation::Gelu => x.gelu("none"),
        Activation::GeluTanh => x.gelu("tanh"),
        Activation::Relu => x.relu(),
        Activation::Silu => x.silu(),
    }
}
