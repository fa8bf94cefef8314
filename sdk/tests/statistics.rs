//! Statistical quality of the allocation, through the public API, with fixed inputs and
//! chi-square tests at p = 0.001 (STYLE §5: principled bounds, never "looks about right").
//!
//! Critical values of the chi-square distribution, upper tail 0.001, from the standard table
//! (NIST/SEMATECH e-Handbook of Statistical Methods, §1.3.6.7.4, "Critical Values of the
//! Chi-Square Distribution"), re-derived for this file by numerically inverting the regularized
//! upper incomplete gamma function Q(df/2, x/2) = 0.001:
//!   df = 1: 10.828, df = 2: 13.816, df = 6: 22.458, df = 81: 126.083, df = 99: 148.230.
//!
//! The inputs are fixed (sequential `member-{i}` ids, and hex ids from a splitmix64 with a fixed
//! seed), so each test either always passes or always fails: a pass is a property of the hash,
//! not of luck. Each statistic is far below its critical value when the hash is uniform and
//! independent, and far above it for the classic mistakes (a modulo of a weak hash, a shared salt
//! across layers, a biased walk over the weights).

use allot::{Context, Snapshot, TARGETING_KEY, compile_str};

/// Units per test.
const N: u64 = 1_000_000;

const CRIT_DF1: f64 = 10.828;
const CRIT_DF2: f64 = 13.816;
const CRIT_DF6: f64 = 22.458;
const CRIT_DF81: f64 = 126.083;
const CRIT_DF99: f64 = 148.230;

/// The two kinds of unit ids: sequential, and random hex from a fixed-seed splitmix64.
#[derive(Debug, Clone, Copy)]
enum Ids {
    Sequential,
    Random,
}

struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Calls `f` with a context holding each of `N` units of the given kind.
fn for_each_unit(ids: Ids, mut f: impl FnMut(&Context)) {
    let mut rng = SplitMix64(0x5EED_A110);
    let mut ctx = Context::new();
    for i in 1..=N {
        let unit = match ids {
            Ids::Sequential => format!("member-{i}"),
            Ids::Random => format!("{:016x}{:08x}", rng.next(), rng.next() >> 32),
        };
        ctx.insert(TARGETING_KEY, unit);
        f(&ctx);
    }
}

/// Pearson's goodness-of-fit statistic of `observed` against `expected` proportions.
fn chi_square(observed: &[u64], weights: &[f64]) -> f64 {
    let total: u64 = observed.iter().sum();
    let wsum: f64 = weights.iter().sum();
    observed
        .iter()
        .zip(weights)
        .map(|(&o, &w)| {
            let e = total as f64 * w / wsum;
            (o as f64 - e).powi(2) / e
        })
        .sum()
}

/// Pearson's statistic of independence of an r x c contingency table; df = (r-1)(c-1).
fn chi_square_independence<const R: usize, const C: usize>(table: &[[u64; C]; R]) -> f64 {
    let rows: Vec<u64> = table.iter().map(|r| r.iter().sum()).collect();
    let cols: Vec<u64> = (0..C).map(|j| table.iter().map(|r| r[j]).sum()).collect();
    let n: u64 = rows.iter().sum();
    let mut x = 0.0;
    for (i, row) in table.iter().enumerate() {
        for (j, &o) in row.iter().enumerate() {
            let e = rows[i] as f64 * cols[j] as f64 / n as f64;
            x += (o as f64 - e).powi(2) / e;
        }
    }
    x
}

/// Three layers over all their buckets, with 2, 3 and 7 cells of uneven weights.
fn cells_config() -> Snapshot {
    compile_str(
        r#"
layers: [{ id: two }, { id: three }, { id: seven }]
experiments:
  - id: e2
    layer: two
    ranges: ["0..10000"]
    cells: [{ id: a, weight: 1 }, { id: b, weight: 3 }]
  - id: e3
    layer: three
    ranges: ["0..10000"]
    cells: [{ id: a, weight: 1 }, { id: b, weight: 2 }, { id: c, weight: 7 }]
  - id: e7
    layer: seven
    ranges: ["0..10000"]
    cells:
      - { id: a, weight: 1 }
      - { id: b, weight: 2 }
      - { id: c, weight: 3 }
      - { id: d, weight: 5 }
      - { id: e, weight: 8 }
      - { id: f, weight: 13 }
      - { id: g, weight: 21 }
"#,
        1,
    )
    .unwrap()
}

fn cells_fit_their_weights(ids: Ids) {
    let snap = cells_config();
    let weights: [&[f64]; 3] = [
        &[1.0, 3.0],
        &[1.0, 2.0, 7.0],
        &[1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0],
    ];
    let mut counts = [vec![0u64; 2], vec![0u64; 3], vec![0u64; 7]];
    for_each_unit(ids, |ctx| {
        let alloc = snap.allocate(ctx);
        assert_eq!(alloc.assignments().len(), 3);
        for (layer, a) in alloc.assignments().iter().enumerate() {
            let cell = usize::from(a.cell.as_bytes()[0] - b'a');
            counts[layer][cell] += 1;
        }
    });
    for ((counts, weights), crit) in counts
        .iter()
        .zip(weights)
        .zip([CRIT_DF1, CRIT_DF2, CRIT_DF6])
    {
        let x = chi_square(counts, weights);
        assert!(
            x < crit,
            "{ids:?} ids, weights {weights:?}: chi-square {x:.3} >= {crit} (counts {counts:?})"
        );
    }
}

#[test]
fn cells_fit_their_weights_sequential_ids() {
    cells_fit_their_weights(Ids::Sequential);
}

#[test]
fn cells_fit_their_weights_random_ids() {
    cells_fit_their_weights(Ids::Random);
}

/// Two layers hash with different salts: a unit's bucket decile in one says nothing about its
/// decile in the other (10 x 10 contingency table, df = 81).
fn layers_are_independent(ids: Ids) {
    let snap = compile_str(
        r#"
layers: [{ id: home, salt: home-2026q4 }, { id: search, buckets: 1000 }]
experiments:
  - { id: a, layer: home, ranges: ["0..10000"], cells: [{ id: c }] }
  - { id: b, layer: search, ranges: ["0..1000"], cells: [{ id: c }] }
"#,
        1,
    )
    .unwrap();
    let mut table = [[0u64; 10]; 10];
    for_each_unit(ids, |ctx| {
        let alloc = snap.allocate(ctx);
        let [home, search] = alloc.assignments() else {
            panic!("expected two assignments, got {alloc:?}");
        };
        table[(home.bucket / 1000) as usize][(search.bucket / 100) as usize] += 1;
    });
    let x = chi_square_independence(&table);
    assert!(
        x < CRIT_DF81,
        "{ids:?} ids: chi-square {x:.3} >= {CRIT_DF81}: {table:?}"
    );
    // The margins are uniform too (df = 9 each, 27.877 at p = 0.001).
    let rows: Vec<u64> = table.iter().map(|r| r.iter().sum()).collect();
    let cols: Vec<u64> = (0..10).map(|j| table.iter().map(|r| r[j]).sum()).collect();
    for margin in [rows, cols] {
        let x = chi_square(&margin, &[1.0; 10]);
        assert!(
            x < 27.877,
            "{ids:?} ids: margin chi-square {x:.3}: {margin:?}"
        );
    }
}

#[test]
fn layers_are_independent_sequential_ids() {
    layers_are_independent(Ids::Sequential);
}

#[test]
fn layers_are_independent_random_ids() {
    layers_are_independent(Ids::Random);
}

/// Sequential ids (`member-1`, `member-2`, ...) spread over 100 buckets as uniformly as random
/// ones: both pass the same goodness-of-fit test (df = 99).
#[test]
fn sequential_ids_are_as_uniform_as_random_ones() {
    let snap = compile_str(
        r#"
layers: [{ id: home, buckets: 100 }]
experiments: [{ id: a, layer: home, ranges: ["0..100"], cells: [{ id: c }] }]
"#,
        1,
    )
    .unwrap();
    for ids in [Ids::Sequential, Ids::Random] {
        let mut counts = [0u64; 100];
        for_each_unit(ids, |ctx| {
            counts[snap.allocate(ctx).assignments()[0].bucket as usize] += 1;
        });
        let x = chi_square(&counts, &[1.0; 100]);
        assert!(
            x < CRIT_DF99,
            "{ids:?} ids: chi-square {x:.3} >= {CRIT_DF99}"
        );
    }
}

/// A sanity check of the statistics themselves: the tests above would catch a real skew.
#[test]
fn the_statistics_detect_skew() {
    // 1% sample ratio mismatch on a 50/50 split of 10^6 units.
    assert!(chi_square(&[505_000, 495_000], &[1.0, 1.0]) > CRIT_DF1);
    // A layer that reuses another layer's salt: perfectly correlated deciles.
    let mut table = [[0u64; 10]; 10];
    for (i, row) in table.iter_mut().enumerate() {
        row[i] = 100_000;
    }
    assert!(chi_square_independence(&table) > CRIT_DF81);
    // Uniform counts give 0.
    assert_eq!(chi_square(&[250, 250, 500], &[1.0, 1.0, 2.0]), 0.0);
}
