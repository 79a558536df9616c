//! Which all-reduce a group runs (`--all-reduce`), and the alpha-beta cost model that picks one
//! by buffer size and worker count, as NCCL and MPI pick theirs: a pure function of both, so
//! the coordinator decides once per group and every worker follows the same schedule.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// `--all-reduce auto|ring|halving-doubling`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AllReduce {
    /// The model's cheaper one for this group and buffer ([`choose`]).
    #[default]
    Auto,
    /// Reduce-scatter then all-gather around the ring: 2(N-1) rounds, each moving S/N.
    Ring,
    /// Recursive halving (reduce-scatter) then recursive doubling (all-gather), Rabenseifner's
    /// algorithm: 2 log2(p) rounds for the largest power of two p <= N; the N - p extra
    /// workers first fold their buffer into a partner and get the result back at the end.
    HalvingDoubling,
}

impl AllReduce {
    pub fn as_str(self) -> &'static str {
        match self {
            AllReduce::Auto => "auto",
            AllReduce::Ring => "ring",
            AllReduce::HalvingDoubling => "halving-doubling",
        }
    }

    /// What a group of `world` workers runs on a buffer of `bytes`: the choice itself, or the
    /// model's for `Auto`.
    pub fn resolve(self, world: usize, bytes: u64) -> AllReduce {
        match self {
            AllReduce::Auto => choose(world, bytes, &LinkModel::default()),
            chosen => chosen,
        }
    }
}

impl fmt::Display for AllReduce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AllReduce {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(AllReduce::Auto),
            "ring" => Ok(AllReduce::Ring),
            "halving-doubling" => Ok(AllReduce::HalvingDoubling),
            other => Err(format!("{other:?}: expected auto, ring or halving-doubling")),
        }
    }
}

/// A link as the alpha-beta model sees it: each message costs `alpha_s` (latency and the
/// software on both ends), each byte `beta_s_per_byte`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkModel {
    pub alpha_s: f64,
    pub beta_s_per_byte: f64,
}

impl Default for LinkModel {
    /// A datacenter TCP link between pods: ~50 us per message (one-way latency plus a gRPC
    /// message's handling at both ends, as bench/allreduce.sh measures it on loopback with
    /// the proxy's latency subtracted) and ~1 GB/s per stream. The choice only flips where the
    /// two algorithms' costs cross, so the constants need to be right in order of magnitude.
    fn default() -> Self {
        LinkModel { alpha_s: 50e-6, beta_s_per_byte: 1e-9 }
    }
}

/// The largest power of two not above `n` (n >= 1).
pub fn power_of_two_below(n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    1 << (usize::BITS - 1 - n.leading_zeros())
}

/// Sequential message rounds and bytes on the critical path of an all-reduce of `bytes` over
/// `world` workers: (rounds, bytes). The lower bound of the algorithm is then
/// `rounds * alpha + bytes * beta`.
pub fn critical_path(alg: AllReduce, world: usize, bytes: u64) -> (u32, f64) {
    let n = world.max(1);
    if n == 1 {
        return (0, 0.0);
    }
    let s = bytes as f64;
    match alg {
        AllReduce::HalvingDoubling => {
            let p = power_of_two_below(n);
            let log = p.trailing_zeros();
            let core = 2.0 * (p as f64 - 1.0) / p as f64 * s;
            if p == n {
                (2 * log, core)
            } else {
                // The fold in and the result back out: one whole buffer each way.
                (2 * log + 2, core + 2.0 * s)
            }
        }
        _ => (2 * (n as u32 - 1), 2.0 * (n as f64 - 1.0) / n as f64 * s),
    }
}

/// The model's time for `alg`.
pub fn predicted_seconds(alg: AllReduce, world: usize, bytes: u64, link: &LinkModel) -> f64 {
    let (rounds, b) = critical_path(alg, world, bytes);
    rounds as f64 * link.alpha_s + b * link.beta_s_per_byte
}

/// The algorithm for a group of `world` and a buffer of `bytes`: halving-doubling where the
/// model says it saves at least a tenth of the ring's time (small buffers, many workers: it is
/// latency-optimal), else the ring (large buffers: equal bandwidth, neighbour links only, and
/// its chunks pipeline, which the model does not credit).
pub fn choose(world: usize, bytes: u64, link: &LinkModel) -> AllReduce {
    let ring = predicted_seconds(AllReduce::Ring, world, bytes, link);
    let hd = predicted_seconds(AllReduce::HalvingDoubling, world, bytes, link);
    if hd < 0.9 * ring {
        AllReduce::HalvingDoubling
    } else {
        AllReduce::Ring
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_it_prints() {
        for a in [AllReduce::Auto, AllReduce::Ring, AllReduce::HalvingDoubling] {
            assert_eq!(a.as_str().parse::<AllReduce>(), Ok(a));
        }
        assert!("tree".parse::<AllReduce>().is_err());
    }

    #[test]
    fn rounds_are_the_textbook_ones() {
        assert_eq!(critical_path(AllReduce::Ring, 32, 0).0, 62);
        assert_eq!(critical_path(AllReduce::HalvingDoubling, 32, 0).0, 10);
        assert_eq!(critical_path(AllReduce::HalvingDoubling, 5, 0).0, 6);
        assert_eq!(critical_path(AllReduce::HalvingDoubling, 1, 100), (0, 0.0));
        assert_eq!(power_of_two_below(33), 32);
        assert_eq!(power_of_two_below(1), 1);
    }

    #[test]
    fn small_buffers_on_many_workers_halve_and_double_large_ones_ring() {
        let l = LinkModel::default();
        assert_eq!(choose(32, 300_000, &l), AllReduce::HalvingDoubling);
        assert_eq!(choose(2, 300_000, &l), AllReduce::Ring, "two workers: the same two rounds");
        assert_eq!(choose(3, 300_000, &l), AllReduce::Ring, "three: the fold costs more than it saves");
        assert_eq!(choose(6, 90_000_000, &l), AllReduce::Ring);
        assert_eq!(AllReduce::Ring.resolve(32, 1), AllReduce::Ring);
    }
}
