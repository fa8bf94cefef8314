//! The hashing and bucketing primitives of the allocation algorithm (docs/spec.md §2).
//!
//! These functions are the whole of allot's randomness: every answer the engine gives is a
//! function of them and the config. They are byte-exact and pinned by `testdata/vectors.json`;
//! changing any of them changes who is in which cell, which is a breaking change.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// The 64-bit seed of a salt: `xxh3_64(utf8(salt))` with seed 0.
///
/// The engine computes it once per salt when a config is compiled, never per request.
#[inline]
pub fn seed(salt: &str) -> u64 {
    xxh3_64(salt.as_bytes())
}

/// The hash of a unit under a salt's seed: `xxh3_64_with_seed(utf8(unit), seed)`.
#[inline]
pub fn hash(seed: u64, unit: &str) -> u64 {
    xxh3_64_with_seed(unit.as_bytes(), seed)
}

/// Maps a 64-bit hash uniformly onto `0..n` by multiply-shift: `(h * n) >> 64` in 128 bits.
///
/// Unlike `h % n` this has no modulo bias beyond one part in 2^64 / n and costs one multiply.
/// Returns 0 when `n` is 0 (the engine never asks for that: validation rejects zero totals).
#[inline]
pub fn scale(h: u64, n: u64) -> u64 {
    // The product of two u64 fits in u128 and its high half is < n, so the cast is lossless.
    ((u128::from(h) * u128::from(n)) >> 64) as u64
}

/// The bucket of `unit` in a layer (or holdout) of `buckets` buckets salted with `salt`.
///
/// Convenience for tools and tests; the engine uses precomputed seeds.
#[inline]
pub fn bucket(salt: &str, unit: &str, buckets: u32) -> u32 {
    // scale(_, n) < n <= u32::MAX, so the narrowing is lossless.
    scale(hash(seed(salt), unit), u64::from(buckets)) as u32
}

/// The index of the weighted choice for `unit` under `salt`: `p = scale(h, total)`, then the
/// first `i` whose cumulative weight `w[0] + .. + w[i]` exceeds `p`.
///
/// Returns `None` when the weights sum to 0. Cells, rollout splits and test vectors all use this
/// walk, so a zero-weight entry is never chosen.
pub fn pick(salt: &str, unit: &str, weights: &[u32]) -> Option<usize> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if total == 0 {
        return None;
    }
    let p = scale(hash(seed(salt), unit), total);
    let mut end = 0u64;
    weights.iter().position(|&w| {
        end += u64::from(w);
        p < end
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_covers_the_range_edges() {
        assert_eq!(scale(0, 10_000), 0);
        assert_eq!(scale(u64::MAX, 10_000), 9_999);
        assert_eq!(scale(1 << 63, 10_000), 5_000);
        assert_eq!(scale(u64::MAX, 1), 0);
        assert_eq!(scale(12345, 0), 0);
    }

    #[test]
    fn seed_is_plain_xxh3_of_the_salt() {
        // xxh3_64("") is a published constant of the XXH3 reference implementation.
        assert_eq!(seed(""), 0x2D06_8005_38D3_94C2);
    }

    #[test]
    fn spec_worked_example() {
        // docs/spec.md §3, computed there with an independent implementation.
        assert_eq!(seed("home-2026q4"), 0x3dec_20f9_7b89_be5f);
        assert_eq!(hash(seed("home-2026q4"), "m-123"), 0xa2cc_b3c2_0231_eeea);
        assert_eq!(bucket("home-2026q4", "m-123", 10_000), 6359);
        assert_eq!(seed("smarter-prefetch"), 0x15d5_35c0_c059_9dc3);
        assert_eq!(
            hash(seed("smarter-prefetch"), "m-123"),
            0xad69_32b3_a9cc_93a4
        );
        assert_eq!(pick("smarter-prefetch", "m-123", &[1, 1]), Some(1));
    }

    #[test]
    fn pick_never_chooses_zero_weight() {
        for i in 0..2_000 {
            let unit = format!("u{i}");
            let c = pick("s", &unit, &[0, 3, 0, 1, 0]).unwrap();
            assert!(c == 1 || c == 3, "{unit} -> {c}");
        }
        assert_eq!(pick("s", "u", &[0, 0]), None);
        assert_eq!(pick("s", "u", &[]), None);
    }
}
