//! Flag key → flag index: the first step of every `resolve`, so its latency is what matters.
//!
//! An open-addressing table of flag indices, at most half full, probed linearly. A key of up to
//! 16 bytes is read as two overlapping words and placed by one multiply (XXH3's and foldhash's
//! short-input reads, without their second multiply); a longer key is hashed with `xxh3_64`.
//! The multiplier is chosen when the config is compiled: the first of a fixed list under which
//! no key is more than [`MAX_PROBE`] slots from its home, so the result is deterministic and a
//! config cannot make a lookup walk a long cluster. Candidates are confirmed by comparing the
//! whole key.

use xxhash_rust::xxh3::xxh3_64;

/// An empty slot.
const EMPTY: u32 = u32::MAX;
/// The longest probe a compiled table is built to need (slots past the key's home), if one of
/// the candidate multipliers achieves it; otherwise the multiplier with the shortest is kept.
const MAX_PROBE: usize = 4;
/// Odd 64-bit multipliers tried in order (the first are XXH3's and the golden ratio's primes).
const MULTIPLIERS: [u64; 8] = [
    0x9E37_79B1_85EB_CA87,
    0xC2B2_AE3D_27D4_EB4F,
    0x1656_6791_9E37_79F9,
    0x85EB_CA77_C2B2_AE63,
    0x27D4_EB2F_1656_67C5,
    0x9FB2_1C65_1E98_DF25,
    0xD6E8_FEB8_6659_FD93,
    0xA076_1D64_78BD_642F,
];

/// Flag key → index into `Snapshot::flags`.
#[derive(Debug, Clone)]
pub(crate) struct KeyIndex {
    /// Flag indices by slot, [`EMPTY`] where none; a power of two at least twice the key count.
    slots: Box<[u32]>,
    multiplier: u64,
    /// `64 - log2(slots.len())`: a key's home slot is the top bits of its product.
    shift: u32,
}

impl KeyIndex {
    /// The index of `keys` (flag `i` has key `keys[i]`; keys are distinct).
    pub(crate) fn new<'k>(keys: impl ExactSizeIterator<Item = &'k str> + Clone) -> Self {
        // At least 2 slots, so `shift` stays below 64.
        let len = (keys.len() * 2).next_power_of_two().max(2);
        let shift = 64 - len.trailing_zeros();
        let mut best: Option<(usize, KeyIndex)> = None;
        for multiplier in MULTIPLIERS {
            let mut index = KeyIndex {
                slots: vec![EMPTY; len].into(),
                multiplier,
                shift,
            };
            let mut longest = 0;
            for (i, key) in keys.clone().enumerate() {
                longest = longest.max(index.insert(key, i as u32));
            }
            if best.as_ref().is_none_or(|(b, _)| longest < *b) {
                best = Some((longest, index));
            }
            if longest <= MAX_PROBE {
                break;
            }
        }
        best.map_or_else(
            || KeyIndex {
                slots: vec![EMPTY; len].into(),
                multiplier: MULTIPLIERS[0],
                shift,
            },
            |(_, index)| index,
        )
    }

    /// Places flag `index` at the first free slot from `key`'s home; returns how far that is.
    fn insert(&mut self, key: &str, index: u32) -> usize {
        let mask = self.slots.len() - 1;
        let home = self.home(key);
        for probe in 0..self.slots.len() {
            if let Some(slot) = self.slots.get_mut((home + probe) & mask)
                && *slot == EMPTY
            {
                *slot = index;
                return probe;
            }
        }
        // Unreachable: the table is at most half full.
        self.slots.len()
    }

    /// The flag index stored for `key`, confirmed by `is` (whether flag `i` has this key).
    #[inline(always)]
    pub(crate) fn find(&self, key: &str, is: impl Fn(u32) -> bool) -> Option<u32> {
        let mask = self.slots.len() - 1;
        let mut slot = self.home(key);
        // At most every slot once; the table always has an empty one, which ends the probe.
        for _ in 0..self.slots.len() {
            let i = *self.slots.get(slot & mask)?;
            if i == EMPTY {
                return None;
            }
            if is(i) {
                return Some(i);
            }
            slot = (slot & mask) + 1;
        }
        None
    }

    #[inline(always)]
    fn home(&self, key: &str) -> usize {
        (fingerprint(key.as_bytes()).wrapping_mul(self.multiplier) >> self.shift) as usize
    }
}

/// 64 bits that tell keys apart: for up to 16 bytes a function of the bytes read as (at most)
/// two overlapping words and the length; longer keys by `xxh3_64`.
#[inline(always)]
fn fingerprint(key: &[u8]) -> u64 {
    let n = key.len();
    let len = n as u64;
    if let (Some(a), Some(b)) = (key.first_chunk::<8>(), key.last_chunk::<8>()) {
        if n > 16 {
            return xxh3_64(key);
        }
        let (a, b) = (u64::from_le_bytes(*a), u64::from_le_bytes(*b));
        return a ^ b.rotate_left(29) ^ (len << 59);
    }
    if let (Some(a), Some(b)) = (key.first_chunk::<4>(), key.last_chunk::<4>()) {
        let (a, b) = (u32::from_le_bytes(*a), u32::from_le_bytes(*b));
        return (u64::from(a) | (u64::from(b) << 32)) ^ (len << 59);
    }
    // 0 to 3 bytes: first, middle and last byte and the length, as XXH3 reads them.
    match (key.first(), key.get(n / 2), key.last()) {
        (Some(&x), Some(&y), Some(&z)) => {
            u64::from(x) | (u64::from(y) << 8) | (u64::from(z) << 16) | (len << 24)
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index_of(keys: &[String]) -> KeyIndex {
        KeyIndex::new(keys.iter().map(String::as_str))
    }

    fn find(index: &KeyIndex, keys: &[String], key: &str) -> Option<u32> {
        index.find(key, |i| keys.get(i as usize).is_some_and(|k| k == key))
    }

    #[test]
    fn finds_every_key_and_no_other() {
        // Every length 0..=40 (both word paths, the byte path and xxh3), near misses, and keys
        // that share their first and last 8 bytes.
        let mut keys: Vec<String> = (0..=40).map(|n| "k".repeat(n)).collect();
        keys.extend((0..200).map(|i| format!("feature_{i:03}_enabled")));
        keys.extend((0..50).map(|i| format!("f{i}")));
        let index = index_of(&keys);
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(find(&index, &keys, k), Some(i as u32), "{k:?}");
        }
        for miss in [
            "k".repeat(41),
            "feature_200_enabled".into(),
            "f50".into(),
            "K".into(),
        ] {
            assert_eq!(find(&index, &keys, &miss), None, "{miss:?}");
        }
    }

    #[test]
    fn empty_and_single() {
        let none: Vec<String> = Vec::new();
        assert_eq!(find(&index_of(&none), &none, "x"), None);
        let one = vec!["prefetch".to_owned()];
        let index = index_of(&one);
        assert_eq!(find(&index, &one, "prefetch"), Some(0));
        assert_eq!(find(&index, &one, "prefetcH"), None);
        assert_eq!(find(&index, &one, ""), None);
    }

    #[test]
    fn probes_stay_short_for_sequential_keys() {
        // Keys that differ in one byte in the middle, the shape a weak hash clusters.
        let keys: Vec<String> = (0..5_000).map(|i| format!("flag-{i:05}")).collect();
        let index = index_of(&keys);
        let longest = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let mask = index.slots.len() - 1;
                let home = index.home(k);
                (0..index.slots.len())
                    .position(|p| index.slots[(home + p) & mask] == i as u32)
                    .expect("every key is in the table")
            })
            .max()
            .unwrap_or(0);
        assert!(longest <= MAX_PROBE, "longest probe {longest}");
    }
}
