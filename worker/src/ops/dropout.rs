//! Dropout as `torch.nn.Dropout` computes it (zero with probability p, scale the rest by
//! 1/(1-p)), with the masks the Trainer's default CPU generator draws on this rank.
//!
//! A seed should mean the Trainer's run, and after the head, LoRA A and the batches, dropout's
//! masks were the one draw left different (a plateau on STS-B escaped on one stack and not the
//! other for the same seed). torch's CPU dropout is `empty_like(x).bernoulli_(1 - p)`, one
//! `random64()` of the generator per element in row-major order over the padded batch the
//! collator built, and one stream for the whole run: the Trainer seeds it once and draws the
//! DataLoader's base seed from it at each epoch and each evaluation. So a step draws here from
//! the stream the coordinator hands over, over the padded layout's shapes, whatever layout the
//! worker computes in: a packed tensor takes its real tokens' part of the padded mask, and the
//! padding's part is skipped over (untempered, nearly free).
//!
//! On a GPU libtorch's own kernel is used (a host mask would be a copy per call, and the
//! Trainer's CUDA masks come from Philox, another stream).

use std::cell::RefCell;

use peftrain_spec::torch_rng::Mt19937;
use tch::{Device, Kind, Tensor};

/// Marks a padded position in `MaskLayout::packed`.
const PADDING: u32 = u32::MAX;

/// Where torch's masks fall in the tensors of one forward: the padded [rows, seq] batch the
/// Trainer's collator builds, and the layout this worker computes in.
pub struct MaskLayout {
    rows: usize,
    seq: usize,
    /// Packed: for each padded position (row * seq + column), its packed token or PADDING.
    packed: Option<Vec<u32>>,
    tokens: usize,
    /// The parts attention runs in (length groups, or the one padded batch): rows and length.
    parts: Vec<(usize, usize)>,
    /// For each batch row: its part and its place in the part.
    row_part: Vec<(usize, usize)>,
}

impl MaskLayout {
    /// The padded layout itself: [rows, seq] as torch holds it.
    pub fn padded(rows: usize, seq: usize) -> MaskLayout {
        MaskLayout { rows, seq, packed: None, tokens: rows * seq, parts: vec![(rows, seq)], row_part: (0..rows).map(|r| (0, r)).collect() }
    }

    /// A padding-free layout of a [rows, seq] batch: `index` holds each packed token's padded
    /// position (row * seq + column), `groups` each attention group's batch rows and length.
    pub fn packed<'a>(rows: usize, seq: usize, index: &[i64], groups: impl Iterator<Item = (&'a [usize], usize)>) -> MaskLayout {
        let mut packed = vec![PADDING; rows * seq];
        for (t, &pos) in index.iter().enumerate() {
            if let Some(slot) = packed.get_mut(pos.max(0) as usize) {
                *slot = t as u32;
            }
        }
        let mut row_part = vec![(0, 0); rows];
        let mut parts = Vec::new();
        for (g, (batch_rows, group_seq)) in groups.enumerate() {
            for (place, &r) in batch_rows.iter().enumerate() {
                if let Some(slot) = row_part.get_mut(r) {
                    *slot = (g, place);
                }
            }
            parts.push((batch_rows.len(), group_seq));
        }
        MaskLayout { rows, seq, packed: Some(packed), tokens: index.len(), parts, row_part }
    }
}

struct Draw {
    stream: Mt19937,
    layout: MaskLayout,
}

thread_local! {
    static DRAW: RefCell<Option<Draw>> = const { RefCell::new(None) };
}

/// Runs `forward` with its dropout drawn from `stream` over `layout`; returns its result and the
/// stream where the draws left it.
pub fn drawing<R>(stream: Mt19937, layout: MaskLayout, forward: impl FnOnce() -> R) -> (R, Mt19937) {
    DRAW.with(|d| *d.borrow_mut() = Some(Draw { stream, layout }));
    let out = forward();
    let draw = DRAW.with(|d| d.borrow_mut().take());
    // Always set above; a forward cannot take it (only `drawing` does).
    let stream = draw.map(|d| d.stream).unwrap_or_else(|| Mt19937::new(0));
    (out, stream)
}

/// torch's mask values: 1/(1-p) as float32 computes it (`noise.div_(1 - p)`), and the keep
/// probability its `bernoulli_` takes.
fn keep_and_scale(p: f64) -> (f64, f32) {
    let keep = 1.0 - p;
    (keep, 1.0f32 / keep as f32)
}

/// `x` with dropout `p` when `train`. On the CPU the result is fp32 whatever `x`'s dtype (the
/// mask multiplies in fp32; every caller adds it to the fp32 residual stream or feeds an fp32
/// adapter next).
pub fn dropout(x: &Tensor, p: f64, train: bool) -> Tensor {
    if !train || p <= 0.0 || x.numel() == 0 {
        return x.shallow_clone();
    }
    if x.device() != Device::Cpu || p >= 1.0 {
        return x.dropout(p, train);
    }
    let m = DRAW.with(|d| d.borrow_mut().as_mut().map(|draw| draw.mask_like(x, p)));
    let Some(m) = m else {
        // No stream (a forward outside a training step): libtorch's own generator.
        return x.dropout(p, train);
    };
    if x.kind() == Kind::Float {
        x * m
    } else {
        x.to_kind(Kind::Float) * m
    }
}

/// Attention probabilities' masks for the next attention of the forward, one [rows, heads,
/// seq, seq] fp32 tensor per part, as torch draws one [batch, heads, seq, seq] mask over the
/// padded batch; None outside a training step's CPU forward.
pub fn attention_masks(heads: usize, p: f64) -> Option<Vec<Tensor>> {
    DRAW.with(|d| d.borrow_mut().as_mut().map(|draw| draw.attention(heads, p)))
}

/// Fresh fp32 CPU tensors of `shapes`, their values filled by `fill` (all at once: the attention
/// masks of a packed batch are drawn row by row, each row into its group's tensor). Left
/// unzeroed: every fill writes every value (a mask covers its tensor; attention's parts
/// partition the batch's rows and are no longer than it), so zeroing would be a pass over every
/// mask of every step for nothing.
fn host_tensors(shapes: &[Vec<i64>], fill: impl FnOnce(&mut [&mut [f32]])) -> Vec<Tensor> {
    let tensors: Vec<Tensor> = shapes.iter().map(|s| Tensor::empty(s.as_slice(), (Kind::Float, Device::Cpu))).collect();
    // SAFETY: fresh contiguous fp32 CPU tensors, distinct, held only here; the slices live only
    // inside `fill`, before the tensors are handed on.
    let mut values: Vec<&mut [f32]> =
        tensors.iter().map(|t| unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, t.numel()) }).collect();
    fill(&mut values);
    tensors
}

impl Draw {
    fn mask_like(&mut self, x: &Tensor, p: f64) -> Tensor {
        let (keep, scale) = keep_and_scale(p);
        let size = x.size();
        let l = &self.layout;
        let stream = &mut self.stream;
        let mut fill = |out: &mut [f32]| match &l.packed {
            // A packed [tokens, width] tensor: torch's mask is over [rows, seq, width].
            Some(packed) if size.len() == 2 && size[0] as usize == l.tokens => {
                let width = size[1].max(0) as usize;
                for &t in packed.iter() {
                    if t == PADDING {
                        stream.skip(2 * width as u64);
                    } else {
                        let at = t as usize * width;
                        stream.bernoulli_fill(&mut out[at..at + width], keep, scale);
                    }
                }
            }
            // Padded, or [batch, width] (the head): the tensor is laid out as torch's.
            _ => stream.bernoulli_fill(out, keep, scale),
        };
        let mut masks = host_tensors(std::slice::from_ref(&size), |values| fill(&mut *values[0]));
        masks.remove(0)
    }

    fn attention(&mut self, heads: usize, p: f64) -> Vec<Tensor> {
        let (keep, scale) = keep_and_scale(p);
        let l = &self.layout;
        let stream = &mut self.stream;
        // Drawn straight into the tensors attention multiplies by (no copy of heads x seq^2 a row).
        let shapes: Vec<Vec<i64>> = l.parts.iter().map(|&(rows, seq)| vec![rows as i64, heads as i64, seq as i64, seq as i64]).collect();
        host_tensors(&shapes, |bufs| {
            let t = l.seq;
            for r in 0..l.rows {
                let (g, place) = l.row_part[r];
                let s = l.parts[g].1.min(t);
                let buf = &mut *bufs[g];
                for h in 0..heads {
                    for i in 0..t {
                        if i < s {
                            let at = ((place * heads + h) * s + i) * s;
                            stream.bernoulli_fill(&mut buf[at..at + s], keep, scale);
                            stream.skip(2 * (t - s) as u64);
                        } else {
                            stream.skip(2 * t as u64);
                        }
                    }
                }
            }
        })
    }
}
