//! Fast, seedable pseudo-random content.
//!
//! File *contents* are produced by xorshift64* filling whole 8-byte words: it
//! is several GB/s per core, so generating the 2 GiB `large` profile is bound
//! by the disk, not by the RNG (per-byte `rand` calls would be ~10x slower).
//! Sizes and per-file seeds come from `rand::rngs::StdRng`, which is
//! deterministic for a given seed within rand 0.8.

/// SplitMix64 step: turns arbitrary (even sequential) seeds into
/// well-distributed 64-bit values.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Derive an independent seed from a parent seed and an index (file number,
/// chunk number, ...). Used so any thread can produce any piece of content
/// without sharing RNG state, which keeps parallel generation deterministic.
pub fn mix(seed: u64, index: u64) -> u64 {
    let mut s = seed ^ index.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    splitmix64(&mut s)
}

/// xorshift64* generator (Vigna). Never seeded with 0 (its fixed point).
#[derive(Clone, Debug)]
pub struct XorShift64Star(u64);

impl XorShift64Star {
    pub fn new(seed: u64) -> Self {
        let mut s = seed;
        let v = splitmix64(&mut s);
        XorShift64Star(if v == 0 { 0x2545_F491_4F6C_DD1D } else { v })
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Fill `buf` with the pseudo-random stream for `seed`.
pub fn fill(buf: &mut [u8], seed: u64) {
    let mut rng = XorShift64Star::new(seed);
    let mut words = buf.chunks_exact_mut(8);
    for w in &mut words {
        w.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    let tail = words.into_remainder();
    if !tail.is_empty() {
        let last = rng.next_u64().to_le_bytes();
        tail.copy_from_slice(&last[..tail.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_is_deterministic_and_prefix_stable() {
        let mut a = vec![0u8; 1001];
        let mut b = vec![0u8; 1001];
        fill(&mut a, 7);
        fill(&mut b, 7);
        assert_eq!(a, b);
        // A shorter fill is a prefix of a longer one: small files and the
        // first chunk of big files share one definition of content.
        let mut c = vec![0u8; 13];
        fill(&mut c, 7);
        assert_eq!(&a[..13], &c[..]);
        fill(&mut b, 8);
        assert_ne!(a, b);
    }

    #[test]
    fn mix_separates_indices() {
        assert_ne!(mix(1, 0), mix(1, 1));
        assert_ne!(mix(1, 0), mix(2, 0));
    }
}
