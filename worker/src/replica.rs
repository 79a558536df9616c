//! One model replica and its optimizer: forward/backward on a shard, the fused gradient buffer,
//! clip and AdamW, evaluation, state export and import. No networking here (its weights on
//! disk are adapter_io.rs, its identity fingerprint.rs).

use std::collections::BTreeMap;
use std::path::PathBuf;

use peftrain_spec::torch_rng::Mt19937;
use tch::{Device, Kind, Reduction, Tensor};

pub use crate::collective::Gradient;
use crate::error::ModelError;
use crate::fingerprint::fingerprint;
pub use crate::fingerprint::Fingerprint;
use crate::model::{self, Inputs, LoadOptions, Loaded};
use crate::ops::dropout;
use crate::optim::{self, AdamW, AdamWConfig};
use crate::peft::Method;

/// Everything that defines a replica (the plain-data form of the wire `RunSpec`).
#[derive(Debug, Clone)]
pub struct ReplicaSpec {
    pub model_dir: PathBuf,
    pub method: Method,
    pub num_labels: i64,
    /// transformers' `problem_type="regression"`: one output, MSE against `Shard::scores`.
    pub regression: bool,
    pub seed: u64,
    pub init_adapter: Option<PathBuf>,
    pub optimizer: AdamWConfig,
    pub max_grad_norm: f64,
    pub base_kind: Kind,
    /// No checkpoint: random weights of the config's shape (speed measurements only).
    pub random_init: bool,
    /// Compute on the real tokens only ([`model::Packing`]) instead of the padded batch.
    pub padding_free: bool,
}

/// A shard of token ids, unpadded (example i is `ids[offset_i .. offset_i + lengths[i]]`).
#[derive(Debug, Clone, Default)]
pub struct Shard {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    pub lengths: Vec<u32>,
    pub labels: Vec<i64>,
    /// Regression targets, one per example (empty for a classification or unlabelled data).
    pub scores: Vec<f32>,
}

impl Shard {
    pub fn len(&self) -> usize {
        self.lengths.len()
    }
    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }
    pub fn tokens(&self) -> u64 {
        self.lengths.iter().map(|&l| l as u64).sum()
    }

    /// Examples `range` of a validated shard, as a shard of their own (a micro-batch).
    pub fn slice(&self, range: std::ops::Range<usize>) -> Shard {
        let start: usize = self.lengths[..range.start].iter().map(|&l| l as usize).sum();
        let len: usize = self.lengths[range.clone()].iter().map(|&l| l as usize).sum();
        let tokens = start..start + len;
        Shard {
            ids: self.ids[tokens.clone()].to_vec(),
            type_ids: if self.type_ids.is_empty() { Vec::new() } else { self.type_ids[tokens].to_vec() },
            lengths: self.lengths[range.clone()].to_vec(),
            labels: if self.labels.is_empty() { Vec::new() } else { self.labels[range.clone()].to_vec() },
            scores: if self.scores.is_empty() { Vec::new() } else { self.scores[range].to_vec() },
        }
    }
    /// Checks that the lengths account for every id, that labels and segment ids fit, and that
    /// no example is longer than the model has positions for.
    pub fn validate(&self, num_labels: i64, vocab: i64, type_vocab: i64, max_tokens: usize) -> Result<(), String> {
        if let Some(l) = self.lengths.iter().find(|&&l| l as usize > max_tokens) {
            return Err(format!("an example of {l} tokens exceeds the model's {max_tokens} positions"));
        }
        let n: u64 = self.tokens();
        if n != self.ids.len() as u64 {
            return Err(format!("lengths sum to {n} but {} token ids were sent", self.ids.len()));
        }
        if !self.type_ids.is_empty() && self.type_ids.len() != self.ids.len() {
            return Err(format!("{} segment ids for {} token ids", self.type_ids.len(), self.ids.len()));
        }
        if !self.labels.is_empty() && self.labels.len() != self.lengths.len() {
            return Err(format!("{} labels for {} examples", self.labels.len(), self.lengths.len()));
        }
        if let Some(l) = self.labels.iter().find(|&&l| l < 0 || l >= num_labels) {
            return Err(format!("label {l} outside 0..{num_labels}"));
        }
        if !self.scores.is_empty() && self.scores.len() != self.lengths.len() {
            return Err(format!("{} regression targets for {} examples", self.scores.len(), self.lengths.len()));
        }
        if let Some(s) = self.scores.iter().find(|s| !s.is_finite()) {
            return Err(format!("regression target {s} is not finite"));
        }
        if let Some(t) = self.ids.iter().find(|&&t| t as i64 >= vocab) {
            return Err(format!("token id {t} outside the vocabulary of {vocab}"));
        }
        // An index past an embedding table would abort inside libtorch's index_select.
        if let Some(t) = self.type_ids.iter().find(|&&t| t as i64 >= type_vocab) {
            return Err(format!("segment id {t} outside the model's {type_vocab} token types"));
        }
        if self.lengths.contains(&0) {
            return Err("an example has no tokens".into());
        }
        Ok(())
    }
}

/// What a forward/backward pass measured.
#[derive(Debug, Clone, Default)]
pub struct PassStats {
    pub loss_sum: f64,
    pub examples: u32,
    pub tokens: u64,
    /// loss_sum of each micro-batch.
    pub micro_loss_sums: Vec<f64>,
}

/// One micro-batch of a step's shard: its examples (consecutive, in order) and what its loss
/// sum is divided by before its backward (the global batch size without accumulation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Micro {
    pub examples: usize,
    pub divisor: f64,
}

/// Result of an evaluation shard.
#[derive(Debug, Clone, Default)]
pub struct EvalStats {
    pub loss_sum: f64,
    pub correct: u32,
    pub examples: u32,
    /// Row-major [examples, num_labels], when asked for.
    pub logits: Vec<f32>,
}

pub struct Replica {
    pub loaded: Loaded,
    pub optimizer: AdamW,
    pub device: Device,
    pub spec: ReplicaSpec,
    pub fingerprint: Fingerprint,
    /// Number of fp32 values in the fused gradient buffer.
    pub flat_len: usize,
    /// A reduced and clipped gradient waiting for its commit.
    held: Option<Held>,
    /// The last committed gradient buffer, reused for the next step's: a fresh 90 MB vector
    /// (full fine-tuning of MiniLM) costs more in page faults than copying into it.
    spare: Option<Vec<f32>>,
    /// One buffer holding every trainable parameter (each parameter's storage is a view of
    /// it), in sorted-name order: the fused buffer the all-reduce and AdamW work on.
    pub flat_params: Tensor,
    /// 1 where weight decay applies, 0 for biases and LayerNorm weights (flat layout).
    decay_mask: Option<Tensor>,
}

/// Moves every trainable parameter's storage into one flat buffer, keeping each parameter
/// (a leaf with its identity: the model's modules hold it) as a view of its slice.
fn flatten_storage(params: &BTreeMap<String, Tensor>, device: Device) -> Tensor {
    let n: i64 = params.values().map(|p| p.numel() as i64).sum();
    let flat = Tensor::zeros([n], (Kind::Float, device));
    let mut off = 0i64;
    tch::no_grad(|| {
        for p in params.values() {
            let k = p.numel() as i64;
            let mut slice = flat.narrow(0, off, k);
            slice.copy_(&p.reshape([-1]));
            let mut leaf = p.shallow_clone();
            leaf.set_data(&slice.view(p.size().as_slice()));
            off += k;
        }
    });
    flat
}

/// The 0/1 weight-decay mask in the flat layout (None when nothing decays).
fn flat_decay_mask(params: &BTreeMap<String, Tensor>, device: Device) -> Option<Tensor> {
    let parts: Vec<Tensor> =
        params.iter().map(|(n, p)| Tensor::full([p.numel() as i64], if optim::decays(n) { 1.0 } else { 0.0 }, (Kind::Float, device))).collect();
    (!parts.is_empty()).then(|| Tensor::cat(&parts, 0))
}

/// Phase one's result, waiting for phase two.
#[derive(Debug)]
struct Held {
    step: u64,
    lr: f64,
    finite: bool,
    grad: HeldGrad,
}

/// Where a held step's reduced gradient is, with its clip coefficient.
#[derive(Debug)]
enum HeldGrad {
    /// CPU fast path: the reduced gradient itself (the `.grad` tensors are not written back;
    /// the fused update reads this buffer).
    Flat(Vec<f32>, f32),
    /// CPU fast path for a group of one: the update reads `.grad`.
    Own(f32),
    /// Device path: the flat gradient on the device.
    Device(Tensor, f64),
}

impl Replica {
    pub fn build(spec: &ReplicaSpec, device: Device) -> Result<Replica, ModelError> {
        let opts = LoadOptions {
            method: &spec.method,
            device,
            base_kind: spec.base_kind,
            num_labels: Some(spec.num_labels),
            seed: spec.seed,
            shapes_only: false,
            random_init: spec.random_init,
        };
        let loaded = model::load(&spec.model_dir, &opts)?;
        let flat_params = flatten_storage(&loaded.params.trainable, device);
        let decay_mask = flat_decay_mask(&loaded.params.trainable, device);
        let mut replica = Replica {
            optimizer: AdamW::new(spec.optimizer, &loaded.params.trainable),
            flat_len: loaded.params.trainable.values().map(|t| t.numel()).sum(),
            flat_params,
            decay_mask,
            fingerprint: fingerprint(&loaded, &spec.method)?,
            loaded,
            device,
            spec: spec.clone(),
            held: None,
            spare: None,
        };
        if let Some(targets) = spec.method.rules().target_modules() {
            if replica.loaded.params.added.is_empty() {
                return Err(ModelError::Method(format!(
                    "{} target modules {targets:?} not found in the model (module names end in e.g. query, key, value, dense)",
                    spec.method.name()
                )));
            }
        }
        if let Some(dir) = &spec.init_adapter {
            replica.load_trainable(dir)?;
        }
        Ok(replica)
    }

    /// Longest sequence the position table allows (RoBERTa's positions start after padding_idx).
    pub fn max_tokens(&self) -> usize {
        self.loaded.config.max_tokens()
    }

    pub fn trainable(&self) -> &BTreeMap<String, Tensor> {
        &self.loaded.params.trainable
    }

    /// Pads a shard on the right to its longest example.
    pub fn inputs(&self, shard: &Shard) -> Inputs {
        let pad = self.loaded.config.pad_id();
        let b = shard.len();
        let l = shard.lengths.iter().copied().max().unwrap_or(0) as usize;
        let mut ids = vec![pad; b * l];
        let mut mask = vec![0i64; b * l];
        let mut types = vec![0i64; if shard.type_ids.is_empty() { 0 } else { b * l }];
        let mut off = 0usize;
        for (i, &len) in shard.lengths.iter().enumerate() {
            let len = len as usize;
            for j in 0..len {
                ids[i * l + j] = shard.ids[off + j] as i64;
                mask[i * l + j] = 1;
                if !types.is_empty() {
                    types[i * l + j] = shard.type_ids[off + j] as i64;
                }
            }
            off += len;
        }
        let dims = [b as i64, l as i64];
        let t = |v: &[i64]| Tensor::from_slice(v).view(dims).to_device(self.device);
        // Built on the host with the batch: a device-side nonzero() would stall a GPU's queue.
        let packing = self.spec.padding_free.then(|| {
            let lengths: Vec<usize> = shard.lengths.iter().map(|&n| n as usize).collect();
            model::Packing::from_lengths(&lengths, l, self.device)
        });
        Inputs { input_ids: t(&ids), token_type_ids: if types.is_empty() { None } else { Some(t(&types)) }, attention_mask: t(&mask), packing }
    }

    /// The shard's summed loss as transformers computes it per example: cross-entropy over the
    /// labels, or for a regression the squared error of the one output (MSELoss); None for a
    /// shard without targets.
    fn loss_sum(&self, logits: &Tensor, shard: &Shard) -> Option<Tensor> {
        let logits = logits.to_kind(Kind::Float);
        if self.spec.regression {
            if shard.scores.len() != shard.len() {
                return None;
            }
            let y = Tensor::from_slice(&shard.scores).to_device(self.device);
            return Some((logits.reshape([-1]) - y).square().sum(Kind::Float));
        }
        if shard.labels.len() != shard.len() {
            return None;
        }
        let labels = Tensor::from_slice(&shard.labels).to_device(self.device);
        Some(logits.cross_entropy_loss::<Tensor>(&labels, None, Reduction::Sum, -100, 0.0))
    }

    /// Whether every example of the shard has the target this head trains on.
    pub fn has_targets(&self, shard: &Shard) -> bool {
        if self.spec.regression {
            shard.scores.len() == shard.len()
        } else {
            shard.labels.len() == shard.len()
        }
    }

    /// Zeroes the gradients, then backpropagates sum(loss over the shard) / `global_batch`, so
    /// that the sum of all workers' gradients is the global-batch mean. Dropout draws from
    /// `stream`, micro-batch after micro-batch as the Trainer's do; returns where it left it.
    pub fn forward_backward(&mut self, shard: &Shard, micro: &[Micro], mut stream: Mt19937) -> (PassStats, Mt19937) {
        self.ensure_grads();
        for p in self.loaded.params.trainable.values() {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        let mut stats = PassStats::default();
        let mut start = 0;
        for mb in micro {
            // The engine checked that the micro-batches tile the shard; one is the shard itself.
            let sliced;
            let part = if micro.len() == 1 {
                shard
            } else {
                sliced = shard.slice(start..start + mb.examples);
                &sliced
            };
            start += mb.examples;
            if part.is_empty() {
                stats.micro_loss_sums.push(0.0);
                continue;
            }
            if self.device != Device::Cpu {
                // libtorch draws a GPU's masks: seeded from the stream, a function of it alone.
                tch::manual_seed(stream.next_u64() as i64);
            }
            let inputs = self.inputs(part);
            let (logits, next) = dropout::drawing(stream, inputs.mask_layout(), || self.loaded.model.forward(&inputs, true));
            stream = next;
            // The loss as transformers calls it, summed here and divided below (the engine
            // refuses a training shard without targets); backward accumulates into the grads.
            let Some(loss_sum) = self.loss_sum(&logits, part) else {
                stats.micro_loss_sums.push(0.0);
                continue;
            };
            (&loss_sum / mb.divisor).backward();
            let v = loss_sum.double_value(&[]);
            stats.loss_sum += v;
            stats.micro_loss_sums.push(v);
            stats.examples += part.len() as u32;
            stats.tokens += part.tokens();
        }
        (stats, stream)
    }

    /// Gives every trainable leaf a (zero) gradient tensor, so that the fused buffer can be
    /// written back even on a worker whose shard was empty or a parameter the graph skipped.
    fn ensure_grads(&self) {
        let missing: Vec<&Tensor> = self.trainable().values().filter(|p| !p.grad().defined()).collect();
        if missing.is_empty() {
            return;
        }
        let zero = missing.iter().map(|p| p.sum(Kind::Float) * 0.0).fold(Tensor::zeros([], (Kind::Float, self.device)), |a, b| a + b);
        zero.backward();
    }

    /// The gradients as one fp32 buffer in sorted-name order (zeros where a gradient is
    /// undefined, e.g. on an empty shard).
    pub fn flat_grads(&mut self) -> Vec<f32> {
        if optim::grads_fusable(self.trainable()) {
            // CPU: one copy straight from each gradient into the buffer.
            let mut out = self.spare.take().unwrap_or_else(|| Vec::with_capacity(self.flat_len));
            out.clear();
            for p in self.trainable().values() {
                let g = p.grad();
                // SAFETY: grads_fusable checked a contiguous fp32 CPU tensor; read only.
                out.extend_from_slice(unsafe { std::slice::from_raw_parts(g.data_ptr() as *const f32, g.numel()) });
            }
            return out;
        }
        let parts: Vec<Tensor> = self
            .trainable()
            .values()
            .map(|p| {
                let g = p.grad();
                if g.defined() {
                    g.detach().to_kind(Kind::Float).reshape([-1])
                } else {
                    Tensor::zeros([p.numel() as i64], (Kind::Float, p.device()))
                }
            })
            .collect();
        let flat = Tensor::cat(&parts, 0).to_device(Device::Cpu).contiguous();
        let mut out = vec![0f32; self.flat_len];
        flat.copy_data(&mut out, self.flat_len);
        out
    }

    /// Phase one's end: the reduced gradient and its clip coefficient are held until `commit`.
    /// Returns the norm before clipping (non-finite: commit skips the update).
    pub fn hold(&mut self, step: u64, buf: Vec<f32>, lr: f64) -> f64 {
        if optim::fusable(&self.loaded.params.trainable, &self.optimizer) {
            let (norm, coef) = optim::flat_clip(&self.loaded.params.trainable, &buf, self.spec.max_grad_norm);
            self.held = Some(Held { step, lr, finite: norm.is_finite(), grad: HeldGrad::Flat(buf, coef) });
            return norm;
        }
        let g = Tensor::from_slice(&buf).to_device(self.device);
        self.hold_device(step, g, lr)
    }

    /// The device path: one flat gradient on the device, its norm computed there.
    fn hold_device(&mut self, step: u64, g: Tensor, lr: f64) -> f64 {
        let norm = tch::no_grad(|| g.norm().double_value(&[]));
        let coef = optim::clip_coef(norm, self.spec.max_grad_norm);
        self.held = Some(Held { step, lr, finite: norm.is_finite(), grad: HeldGrad::Device(g, coef) });
        norm
    }

    /// This step's gradient, in host memory when `host` (for an exchange), else where it is.
    pub fn gradient(&mut self, host: bool) -> Gradient {
        if host {
            Gradient::Host(self.flat_grads())
        } else {
            Gradient::InPlace
        }
    }

    /// Phase one's end: clips the reduced gradient and holds it for the commit. Returns the
    /// norm before clipping.
    pub fn hold_gradient(&mut self, step: u64, grad: Gradient, lr: f64) -> f64 {
        match grad {
            Gradient::InPlace => self.hold_local(step, lr),
            Gradient::Host(buf) => self.hold(step, buf, lr),
        }
    }

    /// Test failpoint (`PEFTRAIN_FAILPOINT_NAN_STEP`): makes this step's local gradient
    /// non-finite, as an overflow would, before it is exchanged.
    pub fn poison(&mut self, grad: &mut Gradient) {
        match grad {
            Gradient::Host(buf) => {
                if let Some(v) = buf.first_mut() {
                    *v = f32::NAN;
                }
            }
            Gradient::InPlace => {
                if let Some(p) = self.loaded.params.trainable.values().next() {
                    let g = p.grad();
                    if g.defined() {
                        let _ = g.reshape([-1]).get(0).fill_(f64::NAN);
                    }
                }
            }
        }
    }

    /// Phase one's end for a group of one: the gradients are already the global ones and stay
    /// where they are (no trip through host memory).
    pub fn hold_local(&mut self, step: u64, lr: f64) -> f64 {
        if optim::fusable(&self.loaded.params.trainable, &self.optimizer) && optim::grads_fusable(&self.loaded.params.trainable) {
            let (norm, coef) = optim::grad_norm_coef(&self.loaded.params.trainable, self.spec.max_grad_norm);
            self.held = Some(Held { step, lr, finite: norm.is_finite(), grad: HeldGrad::Own(coef) });
            return norm;
        }
        let g = tch::no_grad(|| {
            let parts: Vec<Tensor> = self.trainable().values().map(|p| p.grad().reshape([-1]).to_kind(Kind::Float)).collect();
            Tensor::cat(&parts, 0)
        });
        self.hold_device(step, g, lr)
    }

    /// Phase two: AdamW with the held gradient. A non-finite gradient skips the update (as
    /// AMP's loss scaler does) and leaves weights and moments untouched. Returns whether the
    /// update was applied, or None when no step `step` is held.
    pub fn commit(&mut self, step: u64) -> Option<bool> {
        let held = self.held.take().filter(|h| h.step == step)?;
        if held.finite {
            let threads = tch::get_num_threads().max(1) as usize;
            let params = &self.loaded.params.trainable;
            match &held.grad {
                HeldGrad::Flat(buf, coef) => self.optimizer.step_flat(params, buf, *coef, held.lr, threads),
                HeldGrad::Own(coef) => self.optimizer.step_grads(params, *coef, held.lr, threads),
                HeldGrad::Device(g, coef) => self.optimizer.step_device(&self.flat_params, g, self.decay_mask.as_ref(), *coef, held.lr),
            }
        }
        if let HeldGrad::Flat(buf, _) = held.grad {
            self.spare = Some(buf);
        }
        Some(held.finite)
    }

    /// Clip then AdamW in one go (single-process use: benchmarks, examples).
    pub fn apply(&mut self, lr: f64) -> (f64, bool) {
        let g = self.flat_grads();
        let norm = self.hold(u64::MAX, g, lr);
        let applied = self.commit(u64::MAX).unwrap_or(false);
        (norm, !applied)
    }

    /// The state a peer or a checkpoint needs: weights, then first moments, then second
    /// moments, each in sorted-name order, as one fp32 vector; and the optimizer's step count.
    pub fn state(&self) -> (Vec<f32>, u64) {
        let mut parts: Vec<Tensor> = Vec::new();
        for (name, p) in self.trainable() {
            parts.push(p.detach().reshape([-1]));
            let _ = name;
        }
        for m in self.optimizer.state.values() {
            parts.push(m.exp_avg.reshape([-1]));
        }
        for m in self.optimizer.state.values() {
            parts.push(m.exp_avg_sq.reshape([-1]));
        }
        let flat = Tensor::cat(&parts, 0).to_kind(Kind::Float).to_device(Device::Cpu).contiguous();
        let n = flat.numel();
        let mut out = vec![0f32; n];
        flat.copy_data(&mut out, n);
        (out, self.optimizer.step)
    }

    /// Loads a state produced by `state` (same layout: the caller checked the fingerprint).
    pub fn set_state(&mut self, values: &[f32], optimizer_step: u64) -> Result<(), String> {
        if values.len() != 3 * self.flat_len {
            return Err(format!("state holds {} values, this replica needs {}", values.len(), 3 * self.flat_len));
        }
        let flat = Tensor::from_slice(values).to_device(self.device);
        let mut off = 0i64;
        tch::no_grad(|| {
            let mut copy_into = |t: &Tensor| {
                let n = t.numel() as i64;
                let mut t = t.shallow_clone();
                t.copy_(&flat.narrow(0, off, n).view(t.size().as_slice()));
                off += n;
            };
            for p in self.loaded.params.trainable.values() {
                copy_into(p);
            }
            for m in self.optimizer.state.values() {
                copy_into(&m.exp_avg);
            }
            for m in self.optimizer.state.values() {
                copy_into(&m.exp_avg_sq);
            }
        });
        self.optimizer.step = optimizer_step;
        self.held = None;
        Ok(())
    }

    /// Loss sum, correct count and (optionally) logits, without gradients, dropout off.
    pub fn evaluate(&self, shard: &Shard, want_logits: bool) -> EvalStats {
        if shard.is_empty() {
            return EvalStats::default();
        }
        tch::no_grad(|| {
            let inputs = self.inputs(shard);
            let logits = self.loaded.model.forward(&inputs, false).to_kind(Kind::Float);
            let mut stats = EvalStats { examples: shard.len() as u32, ..Default::default() };
            if let Some(loss) = self.loss_sum(&logits, shard) {
                stats.loss_sum = loss.double_value(&[]);
            }
            if !self.spec.regression && shard.labels.len() == shard.len() {
                let labels = Tensor::from_slice(&shard.labels).to_device(self.device);
                stats.correct = logits.argmax(-1, false).eq_tensor(&labels).sum(Kind::Int64).int64_value(&[]) as u32;
            }
            if want_logits {
                let flat = logits.to_device(Device::Cpu).contiguous().reshape([-1]);
                let n = flat.numel();
                let mut v = vec![0f32; n];
                flat.copy_data(&mut v, n);
                stats.logits = v;
            }
            stats
        })
    }
}
