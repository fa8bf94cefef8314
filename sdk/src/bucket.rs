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

/// A unit of 17 to 128 bytes prepared for hashing under many seeds: [`Prepared::hash`] is
/// exactly `xxh3_64_with_seed(unit, seed)`, as [`hash`] computes it, with the unit's words and
/// XXH3's length dispatch read once.
///
/// `allocate` hashes one unit with every layer's seed and every owner's cell seed; only the seed
/// changes. `ROUNDS` is the number of 32-byte rounds of `XXH3_len_17to128_64b` (1 for 17 to 32
/// bytes, up to 4 for 97 to 128), fixed at compile time so a hash is straight-line code.
/// Names in comments are the XXH3 reference's (`xxhash.h`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Prepared<const ROUNDS: usize> {
    /// `len * PRIME64_1`.
    acc: u64,
    /// The 16-byte chunks in the order of the secret chunks they meet: `chunks[i]` is mixed
    /// with `SECRET[i]`. Only the first `2 * ROUNDS` are used.
    chunks: [[u64; 2]; 8],
}

/// The first 128 bytes of `XXH3_kSecret` as little-endian 16-byte chunks.
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

const PRIME64_1: u64 = 0x9E37_79B1_85EB_CA87;

impl<const ROUNDS: usize> Prepared<ROUNDS> {
    /// Reads `unit` once for [`Prepared::hash`]; `None` unless its length takes `ROUNDS` rounds
    /// (`17 + 32 * (ROUNDS - 1)` to `32 * ROUNDS` bytes).
    pub(crate) fn new(unit: &[u8]) -> Option<Self> {
        let len = unit.len();
        if !(17..=128).contains(&len) || len.div_ceil(32) != ROUNDS {
            return None;
        }
        // XXH3_len_17to128_64b: round r mixes input chunk r with secret chunk 2r, and the chunk
        // r from the end with secret chunk 2r + 1.
        let mut chunks = [[0; 2]; 8];
        for (r, pair) in chunks.chunks_exact_mut(2).take(ROUNDS).enumerate() {
            let (from_start, from_end) = (16 * r, len - 16 * (r + 1));
            if let [a, z] = pair {
                *a = [read64(unit, from_start), read64(unit, from_start + 8)];
                *z = [read64(unit, from_end), read64(unit, from_end + 8)];
            }
        }
        Some(Prepared {
            // `len` <= 128, so the widening is lossless.
            acc: (len as u64).wrapping_mul(PRIME64_1),
            chunks,
        })
    }

    /// `xxh3_64_with_seed(unit, seed)`: XXH3_len_17to128_64b. The reference adds the rounds'
    /// `XXH3_mix16B` from the last round to the first; wrapping addition does not care.
    #[inline(always)]
    pub(crate) fn hash(&self, seed: u64) -> u64 {
        let mut acc = self.acc;
        for (input, secret) in self.chunks.iter().zip(&SECRET).take(2 * ROUNDS) {
            acc = acc.wrapping_add(mix16(*input, *secret, seed));
        }
        avalanche(acc)
    }
}

/// Two seeds prepared for hashing one unit under both: [`SeedPair::hash`] is exactly
/// `(hash(a, unit), hash(b, unit))`.
///
/// `resolve` hashes the unit with a flag's layer seed and its experiment's cell seed. For units
/// of 17 to 128 bytes (UUIDs, ULIDs, hex ids) XXH3 keys each 16-byte chunk of the unit with the
/// secret plus or minus the seed; those keys are computed here once per seed, when a config is
/// compiled, so a hash reads each word of the unit once and keys it with one load. Other lengths
/// hash through xxhash-rust.
#[derive(Debug, Clone)]
pub(crate) struct SeedPair {
    seeds: [u64; 2],
    /// For secret chunk `i`: `[lo_a, hi_a, lo_b, hi_b]`, `lo = SECRET[i][0] + seed` and
    /// `hi = SECRET[i][1] - seed`, so a unit of one round reads only the first two lines.
    keys: [[u64; 4]; 8],
}

impl SeedPair {
    pub(crate) fn new(a: u64, b: u64) -> Self {
        let mut keys = [[0; 4]; 8];
        for (k, secret) in keys.iter_mut().zip(&SECRET) {
            *k = [
                secret[0].wrapping_add(a),
                secret[1].wrapping_sub(a),
                secret[0].wrapping_add(b),
                secret[1].wrapping_sub(b),
            ];
        }
        SeedPair {
            seeds: [a, b],
            keys,
        }
    }

    /// `(hash(a, unit), hash(b, unit))`.
    #[inline(always)]
    pub(crate) fn hash(&self, unit: &str) -> (u64, u64) {
        let bytes = unit.as_bytes();
        match bytes.len() {
            17..=32 => self.keyed::<1>(bytes),
            33..=64 => self.keyed::<2>(bytes),
            65..=96 => self.keyed::<3>(bytes),
            97..=128 => self.keyed::<4>(bytes),
            _ => (hash(self.seeds[0], unit), hash(self.seeds[1], unit)),
        }
    }

    /// XXH3_len_17to128_64b (as [`Prepared::hash`]) under both seeds, for a unit of
    /// `17 + 32 * (ROUNDS - 1)` to `32 * ROUNDS` bytes.
    #[inline(always)]
    fn keyed<const ROUNDS: usize>(&self, unit: &[u8]) -> (u64, u64) {
        let len = unit.len();
        // `len` <= 128, so the widening is lossless.
        let mut acc = [(len as u64).wrapping_mul(PRIME64_1); 2];
        for (r, keys) in self.keys.chunks_exact(2).take(ROUNDS).enumerate() {
            let (from_start, from_end) = (16 * r, len - 16 * (r + 1));
            let chunks = [from_start, from_end].map(|at| [read64(unit, at), read64(unit, at + 8)]);
            for (c, k) in chunks.iter().zip(keys) {
                acc[0] = acc[0].wrapping_add(fold(c[0] ^ k[0], c[1] ^ k[1]));
                acc[1] = acc[1].wrapping_add(fold(c[0] ^ k[2], c[1] ^ k[3]));
            }
        }
        (avalanche(acc[0]), avalanche(acc[1]))
    }
}

/// XXH3_mix16B: XXH3_mul128_fold64 of a 16-byte chunk's words keyed by the seeded secret.
#[inline(always)]
fn mix16(input: [u64; 2], secret: [u64; 2], seed: u64) -> u64 {
    fold(
        input[0] ^ secret[0].wrapping_add(seed),
        input[1] ^ secret[1].wrapping_sub(seed),
    )
}

/// XXH3_mul128_fold64.
#[inline(always)]
fn fold(lo: u64, hi: u64) -> u64 {
    let product = u128::from(lo) * u128::from(hi);
    (product as u64) ^ ((product >> 64) as u64)
}

/// XXH3_avalanche.
#[inline(always)]
fn avalanche(acc: u64) -> u64 {
    let h = (acc ^ (acc >> 37)).wrapping_mul(0x1656_6791_9E37_79F9);
    h ^ (h >> 32)
}

fn read64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|w| w.try_into().ok())
        .map_or(0, u64::from_le_bytes)
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

    /// `Prepared::<R>::new(unit).map(|p| p.hash(seed))` for the `R` the unit's length takes.
    fn prepared_hash(unit: &[u8], seed: u64) -> Option<u64> {
        let hashes = [
            Prepared::<1>::new(unit).map(|p| p.hash(seed)),
            Prepared::<2>::new(unit).map(|p| p.hash(seed)),
            Prepared::<3>::new(unit).map(|p| p.hash(seed)),
            Prepared::<4>::new(unit).map(|p| p.hash(seed)),
        ];
        // At most one `ROUNDS` takes a unit.
        assert!(hashes.iter().flatten().count() <= 1, "{unit:?}");
        hashes.into_iter().flatten().next()
    }

    /// A fixed pseudo-random stream (xorshift64) for test inputs.
    fn xorshift(mut x: u64) -> impl FnMut() -> u64 {
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    /// Every length from 0 to 300, with bytes and seeds from a fixed xorshift stream, against
    /// xxhash-rust: prepared exactly for 17 to 128 bytes, and then bit-identical.
    #[test]
    fn prepared_hash_is_xxh3_for_every_length() {
        let mut next = xorshift(0x9E37_79B9_7F4A_7C15);
        for len in 0..=300 {
            for _ in 0..20 {
                let unit: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                for seed in [0, 1, u64::MAX, 1 << 63, u64::from(u32::MAX), next(), next()] {
                    let got = prepared_hash(&unit, seed);
                    if (17..=128).contains(&len) {
                        assert_eq!(
                            got,
                            Some(xxh3_64_with_seed(&unit, seed)),
                            "len {len} seed {seed:#x} unit {unit:?}"
                        );
                    } else {
                        assert_eq!(got, None, "len {len}");
                    }
                }
            }
        }
    }

    /// `SeedPair::hash` against two calls of xxhash-rust, for every length from 0 to 300.
    #[test]
    fn seed_pair_is_two_hashes_for_every_length() {
        let mut next = xorshift(0x2545_F491_4F6C_DD1D);
        for len in 0..=300 {
            for _ in 0..20 {
                // ASCII, so every byte string is a `str`; XXH3 reads bytes either way.
                let unit: String = (0..len)
                    .map(|_| char::from(b'!' + next() as u8 % 94))
                    .collect();
                let (a, b) = (next(), next());
                for (a, b) in [(a, b), (0, u64::MAX), (1 << 63, 1), (a, a)] {
                    assert_eq!(
                        SeedPair::new(a, b).hash(&unit),
                        (
                            xxh3_64_with_seed(unit.as_bytes(), a),
                            xxh3_64_with_seed(unit.as_bytes(), b)
                        ),
                        "len {len} seeds {a:#x} {b:#x} unit {unit:?}"
                    );
                }
            }
        }
    }

    proptest! {
        #[test]
        fn seed_pair_matches_xxh3(unit in ".{0,200}", a in any::<u64>(), b in any::<u64>()) {
            prop_assert_eq!(SeedPair::new(a, b).hash(&unit), (hash(a, &unit), hash(b, &unit)));
        }

        #[test]
        fn prepared_hash_matches_xxh3(
            unit in proptest::collection::vec(any::<u8>(), 0..=300),
            seeds in proptest::collection::vec(any::<u64>(), 1..8),
        ) {
            for seed in seeds {
                if let Some(got) = prepared_hash(&unit, seed) {
                    prop_assert_eq!(got, xxh3_64_with_seed(&unit, seed));
                } else {
                    prop_assert!(!(17..=128).contains(&unit.len()));
                }
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
