//! Data order and sharding: a seeded shuffle per epoch, fixed-size global batches, and the split
//! of each global batch into per-worker shards balanced by what a shard costs its worker.

use peftrain_spec::torch_rng::randperm;

/// The order in which epoch `epoch` visits `n` examples: the Trainer's for the same seed
/// (accelerate's `SeedableRandomSampler`: `torch.randperm(n)` from a generator seeded with
/// `seed + epoch`), so that a seed draws the same batches on both stacks; or the file order when
/// `shuffle` is off.
pub fn epoch_order(n: usize, seed: u64, epoch: u64, shuffle: bool) -> Vec<usize> {
    if shuffle {
        randperm(n, seed.wrapping_add(epoch))
    } else {
        (0..n).collect()
    }
}

/// Length-grouped order: within mega-batches of 50 batches of the shuffled order, examples are
/// sorted by length, so batches pad less (transformers' `LengthGroupedSampler` idea).
pub fn group_by_length(order: Vec<usize>, lengths: &[usize], batch_size: usize) -> Vec<usize> {
    let mega = (batch_size * 50).max(1);
    order
        .chunks(mega)
        .flat_map(|c| {
            let mut c = c.to_vec();
            c.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
            c
        })
        .collect()
}

/// What a shard costs the worker computing it, as its layout decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardCost {
    /// Examples x the longest example: a padded layout computes every padded position.
    Padded,
    /// The real tokens: a padding-free layout's matmuls (the step's cost) see nothing else.
    /// Attention's per-group padding is a few per cent at GLUE lengths and is left out.
    RealTokens,
}

/// Splits a global batch (its examples' token lengths) into `n` shards so that the largest
/// shard's cost is as small as the split can make it: the step waits for the slowest worker.
/// Any split gives the same gradient (the loss is a sum over the global batch), so the split is
/// free to serve speed alone. Returns, per shard, positions into the batch in ascending order.
pub fn shard(lengths: &[usize], n: usize, cost: ShardCost) -> Vec<Vec<usize>> {
    match cost {
        ShardCost::Padded => shard_by_tokens(lengths, n),
        ShardCost::RealTokens => shard_by_real_tokens(lengths, n),
    }
}

/// Longest first, each example to the shard with the fewest real tokens so far (LPT: within
/// 4/3 of the best largest sum, and within one example of it for GLUE's many short ones).
/// Splitting the padded way instead left a padding-free 2-worker step waiting ~20 ms a step
/// (of ~100) for the shard holding the long examples: equal padded cost, unequal real tokens.
fn shard_by_real_tokens(lengths: &[usize], n: usize) -> Vec<Vec<usize>> {
    let n = n.max(1);
    let mut by_len: Vec<usize> = (0..lengths.len()).collect();
    by_len.sort_by_key(|&i| (std::cmp::Reverse(lengths[i]), i));
    let mut shards: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut load = vec![0usize; n];
    for i in by_len {
        // Ties go to the lower rank, so the assignment is a function of the lengths alone.
        let k = (0..n).min_by_key(|&k| (load[k], k)).unwrap_or(0);
        load[k] += lengths[i];
        shards[k].push(i);
    }
    for s in &mut shards {
        s.sort_unstable();
    }
    shards
}

/// Splits a global batch (its examples' token lengths) into `n` shards minimising the largest
/// shard's padded cost (examples x longest example).
/// An optimal split groups examples of similar length, i.e. cuts the length-sorted batch into
/// contiguous runs, so a small dynamic programme over cut points finds it exactly.
/// Returns, per shard, positions into the batch in ascending order. Shards may be empty when
/// the batch has fewer examples than workers.
fn shard_by_tokens(lengths: &[usize], n: usize) -> Vec<Vec<usize>> {
    let n = n.max(1);
    let mut by_len: Vec<usize> = (0..lengths.len()).collect();
    by_len.sort_by_key(|&i| (std::cmp::Reverse(lengths[i]), i));
    let b = by_len.len();
    // Cost of the run by_len[i..j]: its size times its first (longest) length.
    let cost = |i: usize, j: usize| if j > i { (j - i) * lengths[by_len[i]] } else { 0 };
    // best[k][j]: minimal largest cost of splitting the first j examples into k runs.
    let mut best = vec![vec![usize::MAX; b + 1]; n + 1];
    let mut cut = vec![vec![0usize; b + 1]; n + 1];
    best[0][0] = 0;
    for k in 1..=n {
        for j in 0..=b {
            for i in 0..=j {
                if best[k - 1][i] == usize::MAX {
                    continue;
                }
                let c = best[k - 1][i].max(cost(i, j));
                // Ties prefer the later cut, which gives earlier ranks the longer examples.
                if c < best[k][j] || (c == best[k][j] && i > cut[k][j]) {
                    best[k][j] = c;
                    cut[k][j] = i;
                }
            }
        }
    }
    let mut shards: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut j = b;
    for k in (1..=n).rev() {
        let i = cut[k][j];
        shards[k - 1] = by_len[i..j].to_vec();
        j = i;
    }
    for s in &mut shards {
        s.sort_unstable();
    }
    shards
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_is_a_seeded_permutation() {
        let a = epoch_order(100, 42, 0, true);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(100, 42, 0, true));
        assert_ne!(a, epoch_order(100, 42, 1, true));
        assert_ne!(a, epoch_order(100, 43, 0, true));
        assert_eq!(epoch_order(5, 1, 0, false), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn shards_cover_the_batch_and_balance_tokens() {
        let lengths = [50, 10, 10, 10, 10, 10, 48, 9];
        let shards = shard_by_tokens(&lengths, 2);
        let mut all: Vec<usize> = shards.concat();
        all.sort();
        assert_eq!(all, (0..8).collect::<Vec<_>>());
        let cost = |s: &Vec<usize>| s.len() * s.iter().map(|&i| lengths[i]).max().unwrap_or(0);
        let (a, b) = (cost(&shards[0]), cost(&shards[1]));
        // An even split by count costs 4*50 = 200 on one side; the two long examples together
        // cost 2*50 = 100 against 6*10 = 60.
        assert_eq!(a.max(b), 100, "{shards:?} costs {a} {b}");
        let three = shard_by_tokens(&[5, 5], 3);
        assert_eq!(three.iter().filter(|s| s.is_empty()).count(), 1);
    }

    #[test]
    fn padding_free_shards_balance_real_tokens() {
        // The padded split of this batch puts the two long examples alone (100 padded against
        // 60) but leaves 98 real tokens against 59; balanced by real tokens they hold 79 and 78.
        let lengths = [50, 10, 10, 10, 10, 10, 48, 9];
        let real = |s: &Vec<usize>| s.iter().map(|&i| lengths[i]).sum::<usize>();
        let padded = shard(&lengths, 2, ShardCost::Padded);
        assert_eq!(padded.iter().map(real).max(), Some(98));
        let free = shard(&lengths, 2, ShardCost::RealTokens);
        let mut all: Vec<usize> = free.concat();
        all.sort();
        assert_eq!(all, (0..8).collect::<Vec<_>>());
        assert_eq!(free.iter().map(real).collect::<Vec<_>>(), vec![79, 78]);
        for s in &free {
            assert!(s.windows(2).all(|w| w[0] < w[1]), "{s:?} in batch order");
        }
        assert_eq!(shard(&[5, 5], 3, ShardCost::RealTokens).iter().filter(|s| s.is_empty()).count(), 1);
        assert_eq!(shard(&[], 2, ShardCost::RealTokens), vec![Vec::<usize>::new(); 2]);
    }
}
