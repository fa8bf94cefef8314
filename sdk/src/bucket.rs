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

/// A unit prepared for hashing under many seeds: [`Prepared::hash`] is exactly
/// `xxh3_64_with_seed(unit, seed)`, as [`hash`] computes it, with the unit's words and XXH3's length dispatch read once.
///
/// `allocate` hashes one unit with every layer's seed and every owner's cell seed; only the seed
/// changes. XXH3 keys short inputs by adding the seed to secret words, so everything that depends
/// on the unit alone can be done here. Units up to 128 bytes (all but the longest a context
/// allows) take the prepared path; longer ones call `xxh3_64_with_seed` as [`hash`] does. Names
/// in comments are the XXH3 reference's (`xxhash.h`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Prepared<'u> {
    /// 0 bytes (`XXH3_len_0to16_64b`'s empty branch): nothing to read.
    Empty,
    /// 1 to 3 bytes (`XXH3_len_1to3_64b`): the `combined` word.
    Tiny(u64),
    /// 4 to 8 bytes (`XXH3_len_4to8_64b`): `input64` and the length.
    Small(u64, u64),
    /// 9 to 16 bytes (`XXH3_len_9to16_64b`): the first and last 8 bytes, and the length.
    Medium(u64, u64, u64),
    /// 17 to 128 bytes (`XXH3_len_17to128_64b`).
    Mid(Mid),
    /// Longer: not prepared.
    Long(&'u [u8]),
}

/// A 17- to 128-byte unit: `len * PRIME64_1`, the number of 32-byte rounds (1 to 4), and the
/// 16-byte chunks in the order of the secret chunks they meet (`chunks[i]` with `SECRET[i]`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mid {
    acc: u64,
    rounds: u8,
    chunks: [[u64; 2]; 8],
}

/// The first 128 bytes of `XXH3_kSecret` as little-endian 16-byte chunks (what
/// `XXH3_len_17to128_64b` reads), and the words the shorter lengths combine.
const SECRET: [[u64; 2]; 8] = [
    [0xbe4b_a423_396c_feb8, 0x1cad_21f7_2c81_017c],
    [0xdb97_9083_e96d_d4de, 0x1f67_b3b7_a4a4_4072],
    [0x78e5_c0cc_4ee6_79cb, 0x2172_ffcc_7dd0_5a82],
    [0x8e24_43f7_7446_08b8, 0x4c26_3a81_e690_35e0],
    [0xcb00_c391_bb52_283c, 0xa32e_531b_8b65_d088],
    [0x4ef9_0da2_9748_6471, 0xd8ac_dea9_46ef_1938],
    [0x3f34_9ce3_3f76_faa8, 0x1d4f_0bc7_c7bb_dcf9],
    [0x3159_b4cd_4be0_518a, 0x6473_78d9_c97e_9fc8],
];
/// `readLE32(secret) ^ readLE32(secret + 4)` (`XXH3_len_1to3_64b`).
const SECRET_1TO3: u64 = 0x8727_5a9b;
/// `readLE64(secret + 8) ^ readLE64(secret + 16)` (`XXH3_len_4to8_64b`).
const SECRET_4TO8: u64 = 0xc73a_b174_c5ec_d5a2;
/// `readLE64(secret + 24) ^ readLE64(secret + 32)` and `readLE64(secret + 40) ^
/// readLE64(secret + 48)` (`XXH3_len_9to16_64b`).
const SECRET_9TO16: [u64; 2] = [0x6782_737b_ea42_39b9, 0xaf56_bc3b_0996_523a];
/// `readLE64(secret + 56) ^ readLE64(secret + 64)` (`XXH3_len_0to16_64b`, empty input).
const SECRET_EMPTY: u64 = 0x8726_f910_5dc2_1ddc;

const PRIME64_1: u64 = 0x9E37_79B1_85EB_CA87;
const PRIME64_2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const PRIME64_3: u64 = 0x1656_67B1_9E37_79F9;
const PRIME_MX2: u64 = 0x9FB2_1C65_1E98_DF25;

impl<'u> Prepared<'u> {
    /// Reads `unit` once for [`Prepared::hash`].
    pub(crate) fn new(unit: &'u [u8]) -> Self {
        let b = unit;
        let len = b.len();
        // `len` <= 128 below, so the widening is lossless.
        let n = len as u64;
        match len {
            0 => Prepared::Empty,
            1..=3 => {
                let byte = |i: usize| u64::from(b.get(i).copied().unwrap_or(0));
                // XXH3_len_1to3_64b: c1 << 16 | c2 << 24 | c3 | len << 8.
                Prepared::Tiny(byte(0) << 16 | byte(len >> 1) << 24 | byte(len - 1) | n << 8)
            }
            4..=8 => {
                // XXH3_len_4to8_64b: input_lo + (input_hi << 32).
                let input1 = read32(b, 0);
                let input2 = read32(b, len - 4);
                Prepared::Small(input2.wrapping_add(input1 << 32), n)
            }
            9..=16 => Prepared::Medium(read64(b, 0), read64(b, len - 8), n),
            17..=128 => {
                // XXH3_len_17to128_64b: round r mixes input chunk r with secret chunk 2r and
                // the chunk r from the end with secret chunk 2r + 1.
                let rounds = len.div_ceil(32);
                let mut chunks = [[0; 2]; 8];
                for (r, pair) in chunks.chunks_exact_mut(2).take(rounds).enumerate() {
                    let (from_start, from_end) = (16 * r, len - 16 * (r + 1));
                    if let [a, z] = pair {
                        *a = [read64(b, from_start), read64(b, from_start + 8)];
                        *z = [read64(b, from_end), read64(b, from_end + 8)];
                    }
                }
                Prepared::Mid(Mid {
                    acc: n.wrapping_mul(PRIME64_1),
                    rounds: rounds as u8,
                    chunks,
                })
            }
            _ => Prepared::Long(b),
        }
    }

    /// `xxh3_64_with_seed(unit, seed)`.
    #[inline(always)]
    pub(crate) fn hash(&self, seed: u64) -> u64 {
        match self {
            Prepared::Mid(m) => match m.rounds {
                1 => m.hash::<1>(seed),
                2 => m.hash::<2>(seed),
                3 => m.hash::<3>(seed),
                _ => m.hash::<4>(seed),
            },
            Prepared::Medium(lo, hi, len) => {
                // XXH3_len_9to16_64b.
                let lo = lo ^ SECRET_9TO16[0].wrapping_add(seed);
                let hi = hi ^ SECRET_9TO16[1].wrapping_sub(seed);
                let acc = len
                    .wrapping_add(lo.swap_bytes())
                    .wrapping_add(hi)
                    .wrapping_add(mul128_fold64(lo, hi));
                avalanche(acc)
            }
            Prepared::Small(input64, len) => {
                // XXH3_len_4to8_64b.
                let seed = seed ^ (u64::from((seed as u32).swap_bytes()) << 32);
                rrmxmx(input64 ^ SECRET_4TO8.wrapping_sub(seed), *len)
            }
            Prepared::Tiny(combined) => {
                // XXH3_len_1to3_64b.
                xxh64_avalanche(combined ^ SECRET_1TO3.wrapping_add(seed))
            }
            Prepared::Empty => xxh64_avalanche(seed ^ SECRET_EMPTY),
            Prepared::Long(b) => xxh3_64_with_seed(b, seed),
        }
    }
}

impl Mid {
    /// The number of 32-byte rounds: 1 for 17 to 32 bytes, .., 4 for 97 to 128.
    #[inline(always)]
    pub(crate) fn rounds(&self) -> u8 {
        self.rounds
    }

    /// XXH3_len_17to128_64b for a unit of `ROUNDS` 32-byte rounds. The reference adds the
    /// rounds' `XXH3_mix16B` from the last to the first; wrapping addition does not care.
    #[inline(always)]
    pub(crate) fn hash<const ROUNDS: usize>(&self, seed: u64) -> u64 {
        let mut acc = self.acc;
        for (input, secret) in self.chunks.iter().zip(&SECRET).take(2 * ROUNDS) {
            // XXH3_mix16B.
            let lo = input[0] ^ secret[0].wrapping_add(seed);
            let hi = input[1] ^ secret[1].wrapping_sub(seed);
            acc = acc.wrapping_add(mul128_fold64(lo, hi));
        }
        avalanche(acc)
    }
}

fn read32(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 4)
        .and_then(|w| w.try_into().ok())
        .map_or(0, |w| u64::from(u32::from_le_bytes(w)))
}

fn read64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|w| w.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// XXH3_mul128_fold64.
#[inline(always)]
fn mul128_fold64(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    // The low and high halves, folded.
    (p as u64) ^ ((p >> 64) as u64)
}

/// XXH3_avalanche.
#[inline(always)]
fn avalanche(h: u64) -> u64 {
    let h = (h ^ (h >> 37)).wrapping_mul(0x1656_6791_9E37_79F9);
    h ^ (h >> 32)
}

/// XXH64_avalanche.
#[inline(always)]
fn xxh64_avalanche(h: u64) -> u64 {
    let h = (h ^ (h >> 33)).wrapping_mul(PRIME64_2);
    let h = (h ^ (h >> 29)).wrapping_mul(PRIME64_3);
    h ^ (h >> 32)
}

/// XXH3_rrmxmx.
#[inline(always)]
fn rrmxmx(h: u64, len: u64) -> u64 {
    let h = h ^ h.rotate_left(49) ^ h.rotate_left(24);
    let h = h.wrapping_mul(PRIME_MX2);
    let h = h ^ ((h >> 35).wrapping_add(len));
    let h = h.wrapping_mul(PRIME_MX2);
    h ^ (h >> 28)
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
    use proptest::prelude::*;

    /// Every length a prepared unit distinguishes (and the unprepared ones past 128), with
    /// bytes and seeds from a fixed xorshift stream, against xxhash-rust.
    #[test]
    fn prepared_hash_is_xxh3_for_every_length() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for len in 0..=300 {
            for _ in 0..20 {
                let unit: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                let prepared = Prepared::new(&unit);
                for seed in [0, 1, u64::MAX, 1 << 63, u64::from(u32::MAX), next(), next()] {
                    assert_eq!(
                        prepared.hash(seed),
                        xxh3_64_with_seed(&unit, seed),
                        "len {len} seed {seed:#x} unit {unit:?}"
                    );
                }
            }
        }
    }

    proptest! {
        #[test]
        fn prepared_hash_matches_xxh3(
            unit in proptest::collection::vec(any::<u8>(), 0..=300),
            seeds in proptest::collection::vec(any::<u64>(), 1..8),
        ) {
            let prepared = Prepared::new(&unit);
            for seed in seeds {
                prop_assert_eq!(prepared.hash(seed), xxh3_64_with_seed(&unit, seed));
            }
        }
    }

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
