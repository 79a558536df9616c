//! Padding-free layout: a right-padded batch's real tokens, packed, and the length groups
//! attention pads them into.
//!
//! Every module of the encoder but attention works token by token, so the matmuls, LayerNorms
//! and dropout can run on the real tokens alone, [tokens, hidden]. Attention needs rows: the
//! packed tokens are padded again around it, but per group of rows of similar length rather
//! than to the batch's longest row. The result for each real token is what the padded layout
//! gives (padding is masked out of attention and never reaches a real token); the work is not:
//! SST-2 sentences average 13 tokens while a batch of 16 pads to about 36, so the padded layout
//! spends about 2.7x the matmul work and, in attention's [rows, heads, seq, seq] scores (softmax,
//! dropout and their backward), an order of magnitude more.

use tch::{Device, Kind, Tensor};

/// Rows of similar length that attention pads together; their tokens are contiguous in the
/// packed order.
pub struct Group {
    /// First packed token of the group, and how many tokens it holds.
    pub offset: i64,
    pub tokens: i64,
    /// Rows and the padded length of the group.
    pub rows: i64,
    pub seq: i64,
    /// [tokens] int64: each token's place in the group's flattened [rows * seq] layout.
    pub slots: Tensor,
    /// Boolean [rows, 1, 1, seq], true where a key is a real token.
    pub mask: Tensor,
    /// The batch rows this group holds, in its order.
    pub batch_rows: Vec<usize>,
}

/// Where a right-padded batch's real tokens are, in the order the encoder computes them.
pub struct Packing {
    /// [tokens] int64: each packed token's position in the flattened padded [batch * seq] batch.
    pub index: Tensor,
    /// [batch] int64: packed position of each row's first token, in the batch's row order.
    pub starts: Tensor,
    pub groups: Vec<Group>,
    /// `index` on the host, where dropout lays its masks out as the padded batch's.
    pub host_index: Vec<i64>,
}

impl Packing {
    /// For a right-padded batch of `seq` columns whose rows hold `lengths` real tokens.
    pub fn from_lengths(lengths: &[usize], seq: usize, device: Device) -> Packing {
        // Rows longest first, so that each group is a run of this order.
        let mut order: Vec<usize> = (0..lengths.len()).collect();
        order.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]).then(a.cmp(&b)));
        let sorted: Vec<usize> = order.iter().map(|&r| lengths[r]).collect();
        let sizes = attention_groups(&sorted);

        let total: usize = lengths.iter().sum();
        let mut index = Vec::with_capacity(total);
        let mut starts = vec![0i64; lengths.len()];
        let mut groups = Vec::with_capacity(sizes.len());
        let mut at = 0usize;
        for n in sizes {
            let rows = &order[at..at + n];
            at += n;
            let g_seq = rows.iter().map(|&r| lengths[r]).max().unwrap_or(0).max(1);
            let offset = index.len();
            let mut slots = Vec::new();
            let mut mask = vec![false; n * g_seq];
            for (i, &r) in rows.iter().enumerate() {
                starts[r] = index.len() as i64;
                for j in 0..lengths[r] {
                    index.push((r * seq + j) as i64);
                    slots.push((i * g_seq + j) as i64);
                    mask[i * g_seq + j] = true;
                }
            }
            groups.push(Group {
                offset: offset as i64,
                tokens: (index.len() - offset) as i64,
                rows: n as i64,
                seq: g_seq as i64,
                slots: Tensor::from_slice(&slots).to_device(device),
                mask: Tensor::from_slice(&mask).view([n as i64, 1, 1, g_seq as i64]).to_device(device),
                batch_rows: rows.to_vec(),
            });
        }
        Packing {
            index: Tensor::from_slice(&index).to_device(device),
            starts: Tensor::from_slice(&starts).to_device(device),
            groups,
            host_index: index,
        }
    }

    /// From a right-padded [batch, seq] attention mask (1 for real tokens).
    pub fn from_mask(attention_mask: &Tensor) -> Packing {
        let (_, seq) = attention_mask.size2().unwrap_or((0, 0));
        let lengths: Vec<i64> = Vec::try_from(attention_mask.sum_dim_intlist(1, false, Kind::Int64)).unwrap_or_default();
        let lengths: Vec<usize> = lengths.into_iter().map(|l| l.max(0) as usize).collect();
        Packing::from_lengths(&lengths, seq as usize, attention_mask.device())
    }
}

impl Group {
    /// This group's rows of packed [tokens, width] `t`, padded: [rows * seq, width] with zeros at
    /// the padding (masked out as keys; as queries, dropped again by `unpad`).
    pub fn pad(&self, t: &Tensor) -> Tensor {
        let width = t.size().last().copied().unwrap_or(0);
        let mine = t.narrow(0, self.offset, self.tokens);
        if self.tokens == self.rows * self.seq {
            return mine; // no padding in this group: the slots are the identity
        }
        Tensor::zeros([self.rows * self.seq, width], (t.kind(), t.device())).index_copy(0, &self.slots, &mine)
    }

    /// Padded [rows * seq, width] back to this group's packed tokens.
    pub fn unpad(&self, t: &Tensor) -> Tensor {
        if self.tokens == self.rows * self.seq {
            return t.shallow_clone();
        }
        t.index_select(0, &self.slots)
    }
}

/// Attention's cost for a group of `rows` rows padded to `seq`, in units of one score (a query–
/// key pair across the heads): the scores themselves, the padding and unpadding of the group's
/// q, k, v and output (about 20 scores' worth per token), and the fixed cost of the group's
/// dozen-odd extra ops (about 2,000).
fn group_cost(rows: usize, seq: usize) -> usize {
    rows * seq * (seq + 20) + 2000
}

/// Splits rows sorted longest first into runs that minimise the summed attention cost (an exact
/// dynamic programme over the run boundaries). Returns the run lengths.
pub fn attention_groups(sorted_lengths: &[usize]) -> Vec<usize> {
    let n = sorted_lengths.len();
    if n == 0 {
        return Vec::new();
    }
    // best[i]: the cheapest split of the first i rows; from[i]: where its last run starts.
    let mut best = vec![usize::MAX; n + 1];
    let mut from = vec![0usize; n + 1];
    best[0] = 0;
    for i in 1..=n {
        for j in 0..i {
            // Rows j..i padded to the longest of them, which is row j.
            let c = best[j].saturating_add(group_cost(i - j, sorted_lengths[j]));
            if c < best[i] {
                best[i] = c;
                from[i] = j;
            }
        }
    }
    let mut sizes = Vec::new();
    let mut i = n;
    while i > 0 {
        sizes.push(i - from[i]);
        i = from[i];
    }
    sizes.reverse();
    sizes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_lengths_form_one_group_and_outliers_their_own() {
        assert_eq!(attention_groups(&[13; 16]), vec![16]);
        assert_eq!(attention_groups(&[]), Vec::<usize>::new());
        let mut l = vec![66];
        l.extend([12; 15]);
        assert_eq!(attention_groups(&l), vec![1, 15]);
    }

    #[test]
    fn packing_covers_every_real_token_once() {
        let lengths = [3usize, 7, 1, 7, 4];
        let p = Packing::from_lengths(&lengths, 7, Device::Cpu);
        let mut index: Vec<i64> = Vec::try_from(&p.index).unwrap();
        let starts: Vec<i64> = Vec::try_from(&p.starts).unwrap();
        let packed = index.clone();
        for (r, &s) in starts.iter().enumerate() {
            assert_eq!(packed[s as usize], (r * 7) as i64, "row {r} starts at its first token");
        }
        index.sort();
        let want: Vec<i64> = lengths.iter().enumerate().flat_map(|(r, &l)| (0..l).map(move |j| (r * 7 + j) as i64)).collect();
        assert_eq!(index, want);
        let tokens: i64 = p.groups.iter().map(|g| g.tokens).sum();
        assert_eq!(tokens, 22);
        for g in &p.groups {
            let real: i64 = Vec::<bool>::try_from(&g.mask.flatten(0, -1)).unwrap().iter().filter(|m| **m).count() as i64;
            assert_eq!(real, g.tokens);
        }
    }
}
