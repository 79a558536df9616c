//! The all-reduce algorithms as schedules: for one rank, the rounds of sends and receives over
//! element ranges of the fused buffer. Pure functions of (algorithm, rank, world, length),
//! simulated here without sockets; `mod.rs` runs a schedule over the workers' streams.
//!
//! Every element's sum is formed at exactly one rank and copied to the others, so every
//! rank ends with the same bits whatever the algorithm (IEEE addition is commutative, and no
//! element is summed twice in different orders).

use std::ops::Range;

use peftrain_spec::collective::power_of_two_below;
use peftrain_spec::AllReduce;

/// What a received range does to ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Reduce: add the peer's partial sums into ours.
    Add,
    /// Gather: the peer's values are the final sums.
    Copy,
}

/// One message's worth of the buffer, to or from `peer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub peer: u32,
    pub range: Range<usize>,
}

/// One round: what this rank sends (from its buffer as the previous rounds left it), then
/// what it waits for. Every rank's schedule has the same number of rounds, some empty, so a
/// chunk's round number means the same on both ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    pub send: Vec<Transfer>,
    pub recv: Vec<(Transfer, Op)>,
}

/// Elements of segment `i` of `n` over a buffer of `len`.
pub fn segment(len: usize, n: usize, i: usize) -> Range<usize> {
    i * len / n..(i + 1) * len / n
}

/// Segments `a..b` of `n` as one element range.
fn segments(len: usize, n: usize, a: usize, b: usize) -> Range<usize> {
    segment(len, n, a).start..segment(len, n, b - 1).end
}

/// The rounds of `alg` (Ring or HalvingDoubling; Auto is resolved before) for `rank` of
/// `world` on a buffer of `len` elements.
pub fn schedule(alg: AllReduce, rank: usize, world: usize, len: usize) -> Vec<Round> {
    if world <= 1 {
        return Vec::new();
    }
    match alg {
        AllReduce::HalvingDoubling => halving_doubling(rank, world, len),
        AllReduce::Ring | AllReduce::Auto => ring(rank, world, len),
    }
}

/// Reduce-scatter around the ring (N-1 rounds, each adding the predecessor's segment into
/// ours), then all-gather (N-1 rounds, each copying a finished segment).
fn ring(r: usize, n: usize, len: usize) -> Vec<Round> {
    let next = ((r + 1) % n) as u32;
    let prev = ((r + n - 1) % n) as u32;
    (0..2 * (n - 1))
        .map(|round| {
            let (send, recv, op) = if round < n - 1 {
                ((r + n - round) % n, (r + 2 * n - round - 1) % n, Op::Add)
            } else {
                let k = round - (n - 1);
                ((r + 1 + n - k) % n, (r + n - k) % n, Op::Copy)
            };
            Round {
                send: vec![Transfer { peer: next, range: segment(len, n, send) }],
                recv: vec![(Transfer { peer: prev, range: segment(len, n, recv) }, op)],
            }
        })
        .collect()
}

/// Rabenseifner's all-reduce over the largest power of two p <= N: recursive halving (each of
/// log2 p rounds exchanges half of the block still being reduced with the partner across one
/// bit, keeping the other half), then recursive doubling (the blocks gathered back in the
/// reverse order). With N - p = e > 0, ranks 0, 2, .., 2e-2 first fold their whole buffer into
/// the next odd rank, sit out, and receive the result from it in a last round.
fn halving_doubling(r: usize, n: usize, len: usize) -> Vec<Round> {
    let p = power_of_two_below(n);
    let extra = n - p;
    let bits = p.trailing_zeros() as usize;
    let real = |v: usize| (if v < extra { 2 * v + 1 } else { v + extra }) as u32;
    let whole = 0..len;
    let mut rounds = Vec::new();
    // Some(v): this rank's place among the p; None: folded into rank r + 1.
    let virtual_rank = if r < 2 * extra { (r % 2 == 1).then_some(r / 2) } else { Some(r - extra) };
    if extra > 0 {
        let mut fold = Round::default();
        if r < 2 * extra {
            if r.is_multiple_of(2) {
                fold.send.push(Transfer { peer: r as u32 + 1, range: whole.clone() });
            } else {
                fold.recv.push((Transfer { peer: r as u32 - 1, range: whole.clone() }, Op::Add));
            }
        }
        rounds.push(fold);
    }
    match virtual_rank {
        None => rounds.extend((0..2 * bits).map(|_| Round::default())),
        Some(v) => {
            // The block [lo, lo + size) of the p segments this rank is still reducing.
            let (mut lo, mut size) = (0usize, p);
            for j in 0..bits {
                let d = p >> (j + 1);
                let half = size / 2;
                let (keep, give) = if v & d == 0 { (lo, lo + half) } else { (lo + half, lo) };
                let peer = real(v ^ d);
                rounds.push(Round {
                    send: vec![Transfer { peer, range: segments(len, p, give, give + half) }],
                    recv: vec![(Transfer { peer, range: segments(len, p, keep, keep + half) }, Op::Add)],
                });
                lo = keep;
                size = half;
            }
            // Now segment v alone, summed over every rank; gather the others back.
            for j in 0..bits {
                let d = 1 << j;
                let theirs = lo ^ d;
                let peer = real(v ^ d);
                rounds.push(Round {
                    send: vec![Transfer { peer, range: segments(len, p, lo, lo + size) }],
                    recv: vec![(Transfer { peer, range: segments(len, p, theirs, theirs + size) }, Op::Copy)],
                });
                lo = lo.min(theirs);
                size *= 2;
            }
        }
    }
    if extra > 0 {
        let mut unfold = Round::default();
        if r < 2 * extra {
            if r % 2 == 1 {
                unfold.send.push(Transfer { peer: r as u32 - 1, range: whole.clone() });
            } else {
                unfold.recv.push((Transfer { peer: r as u32 + 1, range: whole }, Op::Copy));
            }
        }
        rounds.push(unfold);
    }
    rounds
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs every rank's schedule in lock step (a rank's round-k sends read its buffer as round
    /// k-1 left it, which is what the streams deliver), checking that each send meets the
    /// matching receive.
    fn simulate(alg: AllReduce, world: usize, inputs: &[Vec<f32>]) -> Vec<Vec<f32>> {
        let len = inputs[0].len();
        let plans: Vec<Vec<Round>> = (0..world).map(|r| schedule(alg, r, world, len)).collect();
        let rounds = plans.first().map_or(0, |p| p.len());
        assert!(plans.iter().all(|p| p.len() == rounds), "{alg} {world}: unequal round counts");
        let mut bufs = inputs.to_vec();
        for k in 0..rounds {
            let mut sent = Vec::new();
            for (from, plan) in plans.iter().enumerate() {
                for t in &plan[k].send {
                    sent.push((from as u32, t.peer, t.range.clone(), bufs[from][t.range.clone()].to_vec()));
                }
            }
            let mut expected = 0;
            for (to, plan) in plans.iter().enumerate() {
                for (t, op) in &plan[k].recv {
                    expected += 1;
                    let (_, _, _, data) = sent
                        .iter()
                        .find(|(f, p, range, _)| *f == t.peer && *p as usize == to && *range == t.range)
                        .unwrap_or_else(|| panic!("{alg} {world} round {k}: rank {to} waits for {t:?}, never sent"));
                    for (dst, src) in bufs[to][t.range.clone()].iter_mut().zip(data) {
                        match op {
                            Op::Add => *dst += src,
                            Op::Copy => *dst = *src,
                        }
                    }
                }
            }
            assert_eq!(sent.len(), expected, "{alg} {world} round {k}: sends nobody receives");
        }
        bufs
    }

    #[test]
    fn every_rank_ends_with_the_same_bits_of_the_sum() {
        for alg in [AllReduce::Ring, AllReduce::HalvingDoubling] {
            for world in (1..=17).chain([31, 32, 33]) {
                for len in [0, 1, 3, 17, 100, 1001] {
                    let inputs: Vec<Vec<f32>> =
                        (0..world).map(|r| (0..len).map(|i| ((i * 7919 + r * 104_729) % 1013) as f32 * 1e-3 - 0.5).collect()).collect();
                    let out = simulate(alg, world, &inputs);
                    for (r, b) in out.iter().enumerate() {
                        assert!(
                            b.iter().zip(&out[0]).all(|(x, y)| x.to_bits() == y.to_bits()),
                            "{alg} world {world} len {len}: rank {r} differs from rank 0"
                        );
                    }
                    for i in 0..len {
                        let exact: f64 = inputs.iter().map(|b| b[i] as f64).sum();
                        assert!((out[0][i] as f64 - exact).abs() <= 1e-5 * world as f64, "{alg} world {world} len {len} element {i}");
                    }
                }
            }
        }
    }

    #[test]
    fn round_counts_are_the_cost_model_s() {
        for world in [2, 3, 5, 8, 32, 33] {
            for alg in [AllReduce::Ring, AllReduce::HalvingDoubling] {
                let busy = schedule(alg, 0, world, 1000).len() as u32;
                assert_eq!(busy, peftrain_spec::collective::critical_path(alg, world, 0).0, "{alg} {world}");
            }
        }
    }

    #[test]
    fn segments_tile_the_buffer() {
        for (len, n) in [(10, 3), (7, 7), (2, 3), (1000, 4)] {
            let mut covered = 0;
            for i in 0..n {
                let s = segment(len, n, i);
                assert_eq!(s.start, covered);
                covered = s.end;
            }
            assert_eq!(covered, len);
        }
    }
}
