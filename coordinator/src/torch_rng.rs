//! PyTorch's CPU random stream (`torch.Generator().manual_seed(s)`: a 32-bit Mersenne Twister)
//! and its `torch.randperm`, so that the coordinator, which has no libtorch, orders data exactly
//! as the Trainer's sampler does for the same seed.

/// MT19937 as ATen's `at::mt19937` (seeded with the low 32 bits of torch's 64-bit seed, as
/// `CPUGeneratorImpl::set_current_seed` does).
#[derive(Debug, Clone)]
pub struct Mt19937 {
    state: Box<[u32; 624]>,
    next: usize,
}

impl Mt19937 {
    pub fn new(seed: u64) -> Self {
        let mut state = Box::new([0u32; 624]);
        state[0] = seed as u32;
        for j in 1..624 {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(j as u32);
        }
        Mt19937 { state, next: 624 }
    }

    /// The next 32-bit output (`CPUGeneratorImpl::random()`).
    pub fn next_u32(&mut self) -> u32 {
        if self.next >= 624 {
            self.twist();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9D2C_5680;
        y ^= (y << 15) & 0xEFC6_0000;
        y ^ (y >> 18)
    }

    fn twist(&mut self) {
        for k in 0..624 {
            let y = (self.state[k] & 0x8000_0000) | (self.state[(k + 1) % 624] & 0x7FFF_FFFF);
            let mag = if y & 1 == 1 { 0x9908_B0DF } else { 0 };
            self.state[k] = self.state[(k + 397) % 624] ^ (y >> 1) ^ mag;
        }
        self.next = 0;
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
    fn randperm_is_a_permutation() {
        for n in [0, 1, 2, 7, 1000] {
            let mut p = randperm(n, 42);
            p.sort_unstable();
            assert_eq!(p, (0..n).collect::<Vec<_>>());
        }
    }
}
