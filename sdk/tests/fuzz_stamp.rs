//! Fuzzing of the trace stamp (docs/spec.md §6): `stamp::parse` and `stamp::merge` over hostile
//! `baggage` headers (non-ASCII, control bytes, huge members, many members, forged `allot`
//! members), and `parse(stamp(x))` over allocations with arbitrary valid ids and budgets.
//!
//! Bounded for CI; `PROPTEST_CASES=100000 cargo test -p allot --test fuzz_stamp` runs longer
//! (docs/fuzzing.md). The seed corpus `testdata/fuzz/stamp/` (one header per line) is replayed
//! first.

mod fuzz_support;

use std::cell::Cell;

use allot::stamp::{self, KEY, MAX_BAGGAGE_BYTES, MAX_MEMBERS};
use allot::{Context, compile_str};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::json;

// === merge ===

/// One incoming member, generated knowing whether the spec keeps it.
#[derive(Debug, Clone)]
enum Member {
    /// Well-formed and not ours: kept (within the limits), trimmed of spaces and tabs.
    Good(String),
    /// A member with key `allot`: always dropped.
    Forged(String),
    /// No `=`, a key that is not a token, or bytes outside visible ASCII, space and tab.
    Malformed(String),
}

impl Member {
    fn text(&self) -> &str {
        match self {
            Member::Good(s) | Member::Forged(s) | Member::Malformed(s) => s,
        }
    }
}

/// Optional spaces and tabs around a member (OWS).
fn ows() -> impl Strategy<Value = String> {
    "[ \t]{0,2}"
}

fn good() -> impl Strategy<Value = Member> {
    let small = (
        "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,16}",
        // Values and properties: visible ASCII but `,` (which separates members).
        "[!-+\\--~]{0,24}",
        proptest::option::of("[A-Za-z0-9]{1,6}=[A-Za-z0-9]{0,6}"),
    )
        .prop_filter("not our key", |(k, _, _)| k != KEY)
        .prop_map(|(k, v, prop)| match prop {
            Some(p) => format!("{k}={v};{p}"),
            None => format!("{k}={v}"),
        });
    // Huge members: some fit the 8,192-byte header, some do not.
    let huge = (1usize..9_000).prop_map(|n| format!("big={}", "x".repeat(n)));
    (ows(), prop_oneof![8 => small, 1 => huge], ows())
        .prop_map(|(a, m, b)| Member::Good(format!("{a}{m}{b}")))
}

fn forged() -> impl Strategy<Value = Member> {
    (ows(), ows(), "[!-+\\--~]{0,40}", ows())
        .prop_map(|(a, b, v, c)| Member::Forged(format!("{a}{KEY}{b}={v}{c}")))
}

fn malformed() -> impl Strategy<Value = Member> {
    prop_oneof![
        // No `=` at all.
        "[A-Za-z0-9 ;:]{0,20}",
        // A key with a separator in it (not a space: spaces around a key are trimmed).
        "[a-z]{0,4}[\"()/:;<>?@\\[\\]{}][a-z]{0,4}=[a-z]{0,8}"
            .prop_filter("no comma", |s| !s.contains(',')),
        // Non-ASCII (at least one char above U+007F) or a control byte.
        "[a-z]{1,4}=[a-z]{0,4}[\u{0}-\u{8}\u{b}-\u{1f}\u{7f}\u{80}-\u{10ffff}][^,]{0,8}",
    ]
    .prop_map(Member::Malformed)
}

fn member() -> impl Strategy<Value = Member> {
    prop_oneof![6 => good(), 2 => forged(), 2 => malformed()]
}

/// 0-3 headers of 0-80 members each.
fn headers() -> impl Strategy<Value = Vec<Vec<Member>>> {
    prop::collection::vec(prop::collection::vec(member(), 0..80), 0..4)
}

/// The members of a merged header, split on `,` (our output never has a `,` inside a member).
fn members(header: &str) -> Vec<&str> {
    header.split(',').collect()
}

fn key_of(member: &str) -> &str {
    member
        .split_once('=')
        .map_or(member, |(k, _)| k)
        .trim_matches([' ', '\t'])
}

/// The invariants any merge result must satisfy, whatever came in.
fn check_merged(ours: &str, incoming: &[&str], out: &str) -> Result<(), TestCaseError> {
    let ms = members(out);
    prop_assert_eq!(ms[0], format!("{KEY}={ours}"), "ours first");
    prop_assert_eq!(
        ms.iter().filter(|m| key_of(m) == KEY).count(),
        1,
        "exactly one `allot` member in {}",
        out
    );
    prop_assert!(out.len() <= MAX_BAGGAGE_BYTES, "{} bytes", out.len());
    prop_assert!(ms.len() <= MAX_MEMBERS, "{} members", ms.len());
    // Everything after ours is a well-formed incoming member, in the incoming order.
    let mut rest = incoming
        .iter()
        .flat_map(|h| h.split(','))
        .map(|m| m.trim_matches([' ', '\t']));
    for m in &ms[1..] {
        prop_assert!(
            m.bytes()
                .all(|b| b == b' ' || b == b'\t' || (0x21..=0x7e).contains(&b)),
            "bad byte in {:?}",
            m
        );
        prop_assert!(
            m.contains('=') && !key_of(m).is_empty(),
            "malformed {:?}",
            m
        );
        prop_assert!(
            rest.any(|r| r == *m),
            "{:?} is not an incoming member (or is out of order)",
            m
        );
    }
    Ok(())
}

/// The exact result the spec gives for classified members: ours, then the good ones in order,
/// as long as each still fits in 64 members and 8,192 bytes.
fn expected(ours: &str, headers: &[Vec<Member>]) -> String {
    let mut out = format!("{KEY}={ours}");
    let mut count = 1;
    for m in headers.iter().flatten() {
        if let Member::Good(s) = m {
            let s = s.trim_matches([' ', '\t']);
            if count == MAX_MEMBERS || out.len() + 1 + s.len() > MAX_BAGGAGE_BYTES {
                break;
            }
            out.push(',');
            out.push_str(s);
            count += 1;
        }
    }
    out
}

/// Replays the seed corpus; every generated run starts with it.
fn replay_corpus() {
    for (name, bytes) in fuzz_support::corpus("stamp") {
        let text = String::from_utf8_lossy(&bytes);
        let incoming: Vec<&str> = text.lines().collect();
        let out = stamp::merge("1.7.e~c", incoming.iter().copied());
        check_merged("1.7.e~c", &incoming, &out).unwrap_or_else(|e| panic!("{name}: {e}"));
        // Every line of the corpus parses or not without panicking.
        for line in &incoming {
            let _ = stamp::parse(line);
        }
    }
}

#[test]
fn merge_keeps_good_members_and_drops_the_rest() {
    replay_corpus();
    let mut runner = fuzz_support::runner(300, file!());
    let forged_seen = Cell::new(0u32);
    let truncated = Cell::new(0u32);
    let all_kept = Cell::new(0u32);
    runner
        .run(&(headers(), "[0-9]{1,4}"), |(headers, rev)| {
            let ours = format!("1.{rev}.exp~cell");
            let texts: Vec<String> = headers
                .iter()
                .map(|h| h.iter().map(Member::text).collect::<Vec<_>>().join(","))
                .collect();
            let incoming: Vec<&str> = texts.iter().map(String::as_str).collect();
            let out = stamp::merge(&ours, incoming.iter().copied());
            check_merged(&ours, &incoming, &out)?;
            prop_assert_eq!(&out, &expected(&ours, &headers));
            let goods = headers
                .iter()
                .flatten()
                .filter(|m| matches!(m, Member::Good(_)))
                .count();
            if headers
                .iter()
                .flatten()
                .any(|m| matches!(m, Member::Forged(_)))
            {
                forged_seen.set(forged_seen.get() + 1);
            }
            if members(&out).len() - 1 < goods {
                truncated.set(truncated.get() + 1);
            } else if goods > 0 {
                all_kept.set(all_kept.get() + 1);
            }
            Ok(())
        })
        .unwrap();
    // The generator must reach every branch: forgeries, the limits, and headers kept whole.
    let n = runner.config().cases;
    assert!(forged_seen.get() > n / 4, "forged: {}", forged_seen.get());
    assert!(truncated.get() > n / 20, "truncated: {}", truncated.get());
    assert!(all_kept.get() > n / 20, "all kept: {}", all_kept.get());
}

#[test]
fn merge_and_parse_survive_arbitrary_strings() {
    let mut runner = fuzz_support::runner(1_000, file!());
    let header = prop_oneof![
        "\\PC{0,300}",
        ".{0,300}",
        // Dense in the characters the parsers care about.
        "[allot=.~+,; \t0-9a-z\u{0}\u{80}\u{ff}\u{10ffff}-]{0,300}",
    ];
    runner
        .run(&prop::collection::vec(header, 0..4), |incoming| {
            let incoming: Vec<&str> = incoming.iter().map(String::as_str).collect();
            let out = stamp::merge("1.1", incoming.iter().copied());
            check_merged("1.1", &incoming, &out)?;
            for h in &incoming {
                if let Some(p) = stamp::parse(h) {
                    // Whatever parses starts with the format version and a revision.
                    prop_assert!(h.starts_with("1."), "{:?} parsed as {:?}", h, p);
                }
            }
            Ok(())
        })
        .unwrap();
}

// === stamp / parse ===

/// A config whose unit `u` is in every experiment (`e_i` in layer `l_i`, one cell) and every
/// holdout (over an extra layer `held` without experiments).
fn allocating_config(experiments: &[(String, String)], holdouts: &[String]) -> String {
    let mut layers = vec![json!({ "id": "held" })];
    let mut exps = Vec::new();
    for (i, (id, cell)) in experiments.iter().enumerate() {
        layers.push(json!({ "id": format!("l{i}") }));
        exps.push(json!({
            "id": id, "layer": format!("l{i}"), "ranges": ["0..10000"], "cells": [{ "id": cell }]
        }));
    }
    let holdouts: Vec<_> = holdouts
        .iter()
        .map(|id| json!({ "id": id, "ranges": ["0..10000"], "layers": ["held"] }))
        .collect();
    json!({ "layers": layers, "experiments": exps, "holdouts": holdouts }).to_string()
}

/// The stamp length keeping the first `keep` of `entries`: `1.<rev>`, the entries, the marker.
fn stamp_len(revision: u64, entries: &[(String, String)], keep: usize) -> usize {
    let rest = entries.len() - keep;
    2 + revision.to_string().len()
        + entries[..keep]
            .iter()
            .map(|(id, cell)| 2 + id.len() + cell.len())
            .sum::<usize>()
        + if rest == 0 {
            0
        } else {
            2 + rest.to_string().len()
        }
}

#[test]
fn parse_of_stamp_round_trips_within_the_budget() {
    let mut runner = fuzz_support::runner(192, file!());
    let id = "[A-Za-z0-9_-]{1,64}";
    let strategy = (
        prop::collection::vec((id, id), 0..24),
        prop::collection::vec(id, 0..4),
        any::<u64>(),
        prop_oneof![0usize..64, 0usize..2048],
    );
    let truncated = Cell::new(0u32);
    runner
        .run(&strategy, |(experiments, holdouts, revision, budget)| {
            // Experiment and holdout ids share a namespace: keep the first of each spelling.
            let mut seen = std::collections::HashSet::new();
            let experiments: Vec<(String, String)> = experiments
                .into_iter()
                .filter(|(id, _)| seen.insert(id.clone()))
                .collect();
            let holdouts: Vec<String> = holdouts
                .into_iter()
                .filter(|id| seen.insert(id.clone()))
                .collect();
            let doc = allocating_config(&experiments, &holdouts);
            let snapshot = compile_str(&doc, revision)
                .map_err(|e| TestCaseError::fail(format!("{e}\n{doc}")))?;
            let allocation = snapshot.allocate(&Context::with_targeting_key("u"));
            prop_assert_eq!(allocation.assignments().len(), experiments.len());
            prop_assert_eq!(allocation.holdouts().len(), holdouts.len());

            let value = stamp::stamp(revision, &allocation, budget);
            prop_assert!(
                value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_~.+-".contains(&b)),
                "{:?}",
                value
            );
            let mut all: Vec<(String, String)> = experiments
                .iter()
                .cloned()
                .chain(holdouts.iter().map(|h| (h.clone(), "held".to_owned())))
                .collect();
            all.sort();
            let parsed = stamp::parse(&value)
                .ok_or_else(|| TestCaseError::fail(format!("unparsable {value:?}")))?;
            prop_assert_eq!(parsed.revision, revision);
            let keep = parsed.entries.len();
            prop_assert_eq!(&parsed.entries[..], &all[..keep]);
            prop_assert_eq!(keep as u64 + parsed.dropped, all.len() as u64);
            prop_assert_eq!(value.len(), stamp_len(revision, &all, keep));
            // Within the budget unless nothing fits; and the longest prefix that fits.
            prop_assert!(
                keep == 0 || value.len() <= budget,
                "{} > {}",
                value.len(),
                budget
            );
            for more in keep + 1..=all.len() {
                prop_assert!(
                    stamp_len(revision, &all, more) > budget,
                    "could keep {}",
                    more
                );
            }
            if keep < all.len() {
                truncated.set(truncated.get() + 1);
            }
            // The member merges first, alone, whatever the budget.
            prop_assert_eq!(stamp::merge(&value, []), format!("{KEY}={value}"));
            Ok(())
        })
        .unwrap();
    assert!(truncated.get() > 0, "the budget never truncated a stamp");
}
