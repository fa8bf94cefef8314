//! A config at the scale the issue names: 10,000 experiments in 500 layers. It compiles, and a
//! unit's allocation across all 500 layers equals an independent re-computation from the
//! spec's primitives (`bucket::bucket`, `bucket::pick`) and the generated ranges.

use allot::config::{CellConfig, Config, ExperimentConfig, LayerConfig};
use allot::{Context, bucket, compile};
use serde_json::json;

const LAYERS: usize = 500;
const PER_LAYER: usize = 20;

struct Exp {
    id: String,
    /// Half-open ranges in the layer.
    ranges: Vec<(u32, u32)>,
    weights: Vec<u32>,
    /// Eligible countries, when the experiment has a `when`.
    countries: Option<&'static [&'static str]>,
}

struct Layer {
    id: String,
    salt: String,
    buckets: u32,
    experiments: Vec<Exp>,
}

/// Deterministic generation: layer `i` has a bucket count from a short list and 20 experiments,
/// experiment `j` owning one or two ranges inside its 1/20th of the layer (leaving gaps).
fn generate() -> Vec<Layer> {
    (0..LAYERS)
        .map(|i| {
            let buckets = [10_000u32, 1_000, 1_000_000, 100, 65_536][i % 5];
            let slot = buckets / PER_LAYER as u32;
            let experiments = (0..PER_LAYER)
                .map(|j| {
                    let start = j as u32 * slot;
                    let k = (i * PER_LAYER + j) as u32;
                    let ranges = if k.is_multiple_of(3) {
                        vec![
                            (start, start + slot / 2),
                            (start + slot * 3 / 4, start + slot),
                        ]
                    } else {
                        vec![(start, start + slot - (k % 4))]
                    };
                    let weights = match k % 4 {
                        0 => vec![1, 1],
                        1 => vec![1, 2, 3],
                        2 => vec![5, 0, 5],
                        _ => vec![90, 10],
                    };
                    let countries: Option<&'static [&'static str]> = match k % 7 {
                        0 => Some(&["US", "CA"]),
                        3 => Some(&["SE"]),
                        _ => None,
                    };
                    Exp {
                        id: format!("l{i}-e{j}"),
                        ranges,
                        weights,
                        countries,
                    }
                })
                .collect();
            Layer {
                id: format!("layer-{i}"),
                salt: format!("layer-{i}-2026q4"),
                buckets,
                experiments,
            }
        })
        .collect()
}

fn config(layers: &[Layer]) -> Config {
    let mut config = Config::default();
    for l in layers {
        config.layers.push(LayerConfig {
            id: l.id.clone(),
            salt: Some(l.salt.clone()),
            buckets: Some(u64::from(l.buckets)),
            unit: None,
        });
        for e in &l.experiments {
            config.experiments.push(ExperimentConfig {
                id: e.id.clone(),
                layer: l.id.clone(),
                salt: None,
                ranges: e.ranges.iter().map(|(s, t)| format!("{s}..{t}")).collect(),
                when: e.countries.map(|c| json!({ "country": { "in": c } })),
                cells: e
                    .weights
                    .iter()
                    .enumerate()
                    .map(|(c, &w)| CellConfig {
                        id: format!("c{c}"),
                        weight: w,
                        flags: Default::default(),
                    })
                    .collect(),
            });
        }
    }
    config
}

#[test]
fn ten_thousand_experiments_in_500_layers() {
    let layers = generate();
    let config = config(&layers);
    assert_eq!(config.experiments.len(), 10_000);
    let snapshot = compile(&config, 7).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(snapshot.layer_count(), LAYERS);
    assert_eq!(snapshot.experiment_count(), LAYERS * PER_LAYER);

    let countries = ["US", "SE", "CA", "DE"];
    let mut total = 0;
    for u in 0..1_000 {
        let unit = format!("member-{u}");
        let mut ctx = Context::with_targeting_key(unit.as_str());
        if u % 5 != 4 {
            ctx.insert("country", countries[u % 4]);
        }
        let country = ctx.get("country").and_then(|c| c.as_str());

        // The oracle, straight from the spec.
        let mut expected = Vec::new();
        for l in &layers {
            let b = bucket::bucket(&l.salt, &unit, l.buckets);
            let Some(e) = l
                .experiments
                .iter()
                .find(|e| e.ranges.iter().any(|&(s, t)| s <= b && b < t))
            else {
                continue;
            };
            if let Some(allowed) = e.countries
                && !country.is_some_and(|c| allowed.contains(&c))
            {
                continue;
            }
            let cell = bucket::pick(&e.id, &unit, &e.weights).unwrap();
            expected.push((l.id.clone(), e.id.clone(), format!("c{cell}"), b));
        }

        let got: Vec<_> = snapshot
            .allocate(&ctx)
            .assignments()
            .iter()
            .map(|a| {
                (
                    a.layer.to_owned(),
                    a.experiment.to_owned(),
                    a.cell.to_owned(),
                    a.bucket,
                )
            })
            .collect();
        assert_eq!(got, expected, "{unit}");
        total += got.len();
    }
    // Most layers leave small gaps and some experiments are gated: a unit is in most layers,
    // never all of them, and the oracle saw both kinds.
    assert!(
        total > 1_000 * LAYERS / 2 && total < 1_000 * LAYERS,
        "{total}"
    );
}
