//! The simulated population: which unit each request is for, and that unit's context.
//!
//! Everything here is a pure function of the seed: unit `i` is `member-{i}` on device
//! `device-{i}` and always has the same country, platform and app version, and the sequence of
//! units drawn from a [`Sampler`] is the same on every run. Owns no I/O and no clock.

use std::fmt::Write as _;

use serde_json::{Map, Value};

/// Countries a unit may be in (the demo config targets some of them).
pub const COUNTRIES: [&str; 8] = ["US", "CA", "SE", "NO", "DE", "BR", "JP", "IN"];

/// Platforms a unit may be on.
pub const PLATFORMS: [&str; 4] = ["tv", "web", "ios", "android"];

/// App versions a unit may run.
pub const APP_VERSIONS: [&str; 5] = ["4.9.0", "5.0.0", "5.2.1", "6.0.0", "7.1.0"];

/// One step of splitmix64: advances `state` and returns the next 64 random bits.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A population of `units` members whose ids are drawn uniformly (`zipf == 0`) or by a Zipf
/// law of exponent `zipf` (member 0 the most frequent).
#[derive(Debug, Clone)]
pub struct Population {
    seed: u64,
    units: u64,
    /// Normalised cumulative weights of ranks `1..=units`; empty for the uniform law.
    cdf: Vec<f64>,
}

/// A deterministic stream of unit indexes drawn from a [`Population`].
#[derive(Debug, Clone)]
pub struct Sampler<'p> {
    population: &'p Population,
    state: u64,
}

// === impl Population ===

impl Population {
    /// A population of `units` (at least 1) with Zipf exponent `zipf` (0 = uniform).
    ///
    /// The Zipf law keeps one `f64` per unit (8 MB for a million units) so that each draw is a
    /// binary search over the inverse CDF.
    pub fn new(units: u64, zipf: f64, seed: u64) -> Self {
        let units = units.max(1);
        let cdf = if zipf > 0.0 {
            let mut acc = 0.0;
            let mut cdf: Vec<f64> = (1..=units)
                .map(|k| {
                    acc += (k as f64).powf(-zipf);
                    acc
                })
                .collect();
            for c in &mut cdf {
                *c /= acc;
            }
            cdf
        } else {
            Vec::new()
        };
        Self { seed, units, cdf }
    }

    /// How many distinct units there are.
    pub fn units(&self) -> u64 {
        self.units
    }

    /// A sampler over this population; distinct `stream`s give independent sequences.
    pub fn sampler(&self, stream: u64) -> Sampler<'_> {
        let mut state = self.seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
        splitmix64(&mut state);
        Sampler {
            population: self,
            state,
        }
    }

    /// The attributes of `unit`: `(country, platform, app_version)`, fixed by the seed.
    pub fn attributes(&self, unit: u64) -> (&'static str, &'static str, &'static str) {
        let mut s = self.seed ^ unit.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let bits = splitmix64(&mut s);
        let pick = |n: usize, shift: u32| ((bits >> shift) % n as u64) as usize;
        (
            COUNTRIES[pick(COUNTRIES.len(), 0)],
            PLATFORMS[pick(PLATFORMS.len(), 16)],
            APP_VERSIONS[pick(APP_VERSIONS.len(), 32)],
        )
    }

    /// The `/v1/allocate` request body for `unit`: `{"context": {...}}`.
    pub fn http_body(&self, unit: u64) -> String {
        let (country, platform, app_version) = self.attributes(unit);
        let mut s = String::with_capacity(128);
        // The attribute values are fixed ASCII identifiers, so no JSON escaping is needed.
        let _ = write!(
            s,
            r#"{{"context":{{"targetingKey":"member-{unit}","device_id":"device-{unit}","country":"{country}","platform":"{platform}","app_version":"{app_version}"}}}}"#
        );
        s
    }

    /// The evaluation context of `unit` as a JSON map (for the gRPC request).
    pub fn context(&self, unit: u64) -> Map<String, Value> {
        let (country, platform, app_version) = self.attributes(unit);
        let mut m = Map::new();
        m.insert("targetingKey".into(), format!("member-{unit}").into());
        m.insert("device_id".into(), format!("device-{unit}").into());
        m.insert("country".into(), country.into());
        m.insert("platform".into(), platform.into());
        m.insert("app_version".into(), app_version.into());
        m
    }
}

// === impl Sampler ===

impl Sampler<'_> {
    /// The next unit index, in `0..units`.
    pub fn next_unit(&mut self) -> u64 {
        let bits = splitmix64(&mut self.state);
        let p = self.population;
        if p.cdf.is_empty() {
            // Lemire's multiply-shift: uniform in 0..units without a division.
            ((u128::from(bits) * u128::from(p.units)) >> 64) as u64
        } else {
            // 53 random bits as a float in [0, 1).
            let u = (bits >> 11) as f64 / (1u64 << 53) as f64;
            let rank = p.cdf.partition_point(|&c| c <= u);
            (rank as u64).min(p.units - 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let p = Population::new(1000, 1.1, 7);
        let a: Vec<u64> = {
            let mut s = p.sampler(0);
            (0..100).map(|_| s.next_unit()).collect()
        };
        let mut s = p.sampler(0);
        let b: Vec<u64> = (0..100).map(|_| s.next_unit()).collect();
        assert_eq!(a, b);
        let mut other = p.sampler(1);
        let c: Vec<u64> = (0..100).map(|_| other.next_unit()).collect();
        assert_ne!(a, c);
    }

    #[test]
    fn uniform_covers_all_units() {
        let p = Population::new(10, 0.0, 1);
        let mut counts = [0u32; 10];
        let mut s = p.sampler(0);
        for _ in 0..100_000 {
            counts[s.next_unit() as usize] += 1;
        }
        // Each count is Binomial(100000, 0.1): sd ≈ 95, so ±600 is over 6 sd.
        for c in counts {
            assert!((9_400..=10_600).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn zipf_follows_the_law() {
        // s = 1 over 4 units: weights 1, 1/2, 1/3, 1/4 (sum 25/12).
        let p = Population::new(4, 1.0, 3);
        let mut counts = [0u32; 4];
        let mut s = p.sampler(0);
        let n = 120_000;
        for _ in 0..n {
            counts[s.next_unit() as usize] += 1;
        }
        for (k, &c) in counts.iter().enumerate() {
            let expected = f64::from(n) * (1.0 / (k + 1) as f64) / (25.0 / 12.0);
            let sd = (expected * (1.0 - expected / f64::from(n))).sqrt();
            assert!(
                (f64::from(c) - expected).abs() < 6.0 * sd,
                "rank {k}: {c} vs {expected}"
            );
        }
    }

    #[test]
    fn first_unit_body_is_pinned() {
        // scripts/compare-oha.sh computes this body for oha; keep the two in step.
        assert_eq!(
            Population::new(1, 0.0, 1).http_body(0),
            r#"{"context":{"targetingKey":"member-0","device_id":"device-0","country":"CA","platform":"ios","app_version":"5.0.0"}}"#
        );
    }

    #[test]
    fn bodies_are_valid_json_and_match_the_context() {
        let p = Population::new(100, 0.0, 9);
        for unit in 0..100 {
            let body: Value = serde_json::from_str(&p.http_body(unit)).unwrap();
            assert_eq!(body["context"], Value::Object(p.context(unit)));
        }
    }
}
