//! PyTorch's CPU random stream (`torch.Generator().manual_seed(s)`: a 32-bit Mersenne Twister),
//! its `torch.randperm`, and its CPU `bernoulli_`, so that the coordinator, which has no
//! libtorch, orders data as the Trainer's sampler does, and a worker draws dropout masks as the
//! Trainer's default generator does, from one stream whose state travels on the wire.

use peftrain_proto::v1 as pb;
use serde::{Deserialize, Serialize};

/// Words of the generator's state.
pub const STATE_WORDS: usize = 624;
const SHIFT: usize = 397;

/// MT19937 as ATen's `at::mt19937` (seeded with the low 32 bits of torch's 64-bit seed, as
/// `CPUGeneratorImpl::set_current_seed` does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mt19937 {
    state: Box<[u32; STATE_WORDS]>,
    next: usize,
}

impl Mt19937 {
    pub fn new(seed: u64) -> Self {
        let mut state = Box::new([0u32; STATE_WORDS]);
        state[0] = seed as u32;
        for j in 1..STATE_WORDS {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(j as u32);
        }
        Mt19937 { state, next: STATE_WORDS }
    }

    /// The next 32-bit output (`CPUGeneratorImpl::random()`).
    #[inline]
    pub fn next_u32(&mut self) -> u32 {
        if self.next >= STATE_WORDS {
            self.twist();
        }
        let y = self.state[self.next];
        self.next += 1;
        temper(y)
    }

    /// `CPUGeneratorImpl::random64()`: two outputs, the first the high half.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let hi = self.next_u32() as u64;
        (hi << 32) | self.next_u32() as u64
    }

    /// Advances past `n` outputs without computing them (the state words are what a later
    /// output needs; tempering is per output).
    pub fn skip(&mut self, mut n: u64) {
        while n > 0 {
            if self.next >= STATE_WORDS {
                self.twist();
            }
            let take = n.min((STATE_WORDS - self.next) as u64);
            self.next += take as usize;
            n -= take;
        }
    }

    fn twist(&mut self) {
        // In place and in order, as the reference loop with `% 624` updates it.
        let s = &mut *self.state;
        let f = |a: u32, b: u32, c: u32| {
            let y = (a & 0x8000_0000) | (b & 0x7FFF_FFFF);
            c ^ (y >> 1) ^ ((y & 1).wrapping_neg() & 0x9908_B0DF)
        };
        for k in 0..STATE_WORDS - SHIFT {
            s[k] = f(s[k], s[k + 1], s[k + SHIFT]);
        }
        for k in STATE_WORDS - SHIFT..STATE_WORDS - 1 {
            s[k] = f(s[k], s[k + 1], s[k + SHIFT - STATE_WORDS]);
        }
        s[STATE_WORDS - 1] = f(s[STATE_WORDS - 1], s[0], s[SHIFT - 1]);
        self.next = 0;
    }

    /// The next `out.len()` values of `torch.empty(n).bernoulli_(keep)` times `scale`: each
    /// element a 53-bit double uniform from `random64()` (ATen's `uniform_real_distribution`),
    /// kept when below `keep`. This is ATen's serial CPU kernel, the one torch runs wherever it
    /// does not hand the draw to MKL (on x86 it does so only on Intel CPUs).
    pub fn bernoulli_fill(&mut self, out: &mut [f32], keep: f64, scale: f32) {
        // u * 2^-53 < keep <=> u < keep * 2^53 (scaling by a power of two is exact) <=> u <
        // ceil(keep * 2^53) for an integer u: one integer compare, which vectorises.
        let bound = (keep * 9_007_199_254_740_992.0).ceil().clamp(0.0, 9_007_199_254_740_992.0) as u64;
        let pick = |u: u64| scale * (((u & ((1u64 << 53) - 1)) < bound) as u32 as f32);
        let mut i = 0;
        while i < out.len() {
            if self.next >= STATE_WORDS {
                self.twist();
            }
            let pairs = ((STATE_WORDS - self.next) / 2).min(out.len() - i);
            if pairs == 0 {
                // A pair across a twist (the stream at an odd position).
                out[i] = pick(self.next_u64());
                i += 1;
                continue;
            }
            let words = &self.state[self.next..self.next + 2 * pairs];
            for (o, w) in out[i..i + pairs].iter_mut().zip(words.chunks_exact(2)) {
                *o = pick(((temper(w[0]) as u64) << 32) | temper(w[1]) as u64);
            }
            self.next += 2 * pairs;
            i += pairs;
        }
    }

    /// The state as words and a position, for the wire and checkpoints.
    pub fn to_state(&self) -> StreamState {
        StreamState { words: self.state.to_vec(), next: self.next as u32 }
    }

    /// A generator from `to_state`'s output, refused when it is not one a generator can be in.
    pub fn from_state(s: &StreamState) -> Result<Mt19937, String> {
        let words: [u32; STATE_WORDS] =
            s.words.as_slice().try_into().map_err(|_| format!("a random stream of {} words (a generator holds {STATE_WORDS})", s.words.len()))?;
        if s.next as usize > STATE_WORDS {
            return Err(format!("a random stream at position {} (0 to {STATE_WORDS})", s.next));
        }
        // Only the top bit of the first word and the other words enter the recurrence; all
        // zero, the generator would output zeros for ever.
        if words[0] & 0x8000_0000 == 0 && words[1..].iter().all(|&w| w == 0) {
            return Err("a random stream whose state is all zeros".into());
        }
        Ok(Mt19937 { state: Box::new(words), next: s.next as usize })
    }
}

#[inline(always)]
fn temper(mut y: u32) -> u32 {
    y ^= y >> 11;
    y ^= (y << 7) & 0x9D2C_5680;
    y ^= (y << 15) & 0xEFC6_0000;
    y ^ (y >> 18)
}

/// A generator's state in plain data (serde for checkpoints; the proto's `DropoutStream`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamState {
    pub words: Vec<u32>,
    pub next: u32,
}

impl StreamState {
    pub fn to_proto(&self) -> pb::DropoutStream {
        pb::DropoutStream { words: self.words.clone(), next: self.next }
    }

    /// The wire's stream as a generator, or the one line saying why it cannot be one.
    pub fn generator_from_proto(d: &pb::DropoutStream) -> Result<Mt19937, String> {
        Mt19937::from_state(&StreamState { words: d.words.clone(), next: d.next })
    }
}

/// `torch.randperm(n, generator=torch.Generator().manual_seed(seed))` on the CPU: ATen's
/// forward Fisher-Yates with `random() % (n - i)`. (ATen switches to another algorithm from
/// n = 2^32 / 20 rows; far beyond a data set held in memory, the same shuffle is kept there,
/// uniform but no longer torch's.)
pub fn randperm(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = Mt19937::new(seed);
    let mut r: Vec<usize> = (0..n).collect();
    for i in 0..n.saturating_sub(1) {
        let z = rng.next_u32() as usize % (n - i);
        r.swap(i, z + i);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The C++ standard's check of `std::mt19937` ([rand.predef]): default seed 5489, the
    /// 10000th output is 4123659995.
    #[test]
    fn mersenne_twister_meets_the_standards_check() {
        let mut g = Mt19937::new(5489);
        let v = (0..10_000).map(|_| g.next_u32()).last();
        assert_eq!(v, Some(4_123_659_995));
    }

    #[test]
    fn the_untempered_twist_and_skip_follow_the_outputs() {
        let mut a = Mt19937::new(42);
        let mut b = Mt19937::new(42);
        for _ in 0..1000 {
            a.next_u32();
        }
        b.skip(1000);
        assert_eq!(a.next_u32(), b.next_u32());
        b.skip(5000);
        (0..5000).for_each(|_| {
            a.next_u32();
        });
        assert_eq!(a, b);
    }

    #[test]
    fn a_state_round_trips_and_a_broken_one_is_refused() {
        let mut g = Mt19937::new(3);
        g.skip(700);
        let back = Mt19937::from_state(&g.to_state()).unwrap();
        assert_eq!(back, g);
        let short = StreamState { words: vec![1; 10], next: 0 };
        assert!(Mt19937::from_state(&short).unwrap_err().contains("10 words"));
        let past = StreamState { words: vec![1; STATE_WORDS], next: 625 };
        assert!(Mt19937::from_state(&past).unwrap_err().contains("position 625"));
        let zero = StreamState { words: vec![0; STATE_WORDS], next: 0 };
        assert!(Mt19937::from_state(&zero).is_err());
    }

    #[test]
    fn randperm_is_a_permutation() {
        for n in [0, 1, 2, 7, 1000] {
            let mut p = randperm(n, 42);
            p.sort_unstable();
            assert_eq!(p, (0..n).collect::<Vec<_>>());
        }
    }
}
