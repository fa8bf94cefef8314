//! The trace stamp (docs/spec.md §6): one W3C Baggage member `allot=1.<revision>.<exp>~<cell>…`
//! that carries a unit's allocations on every outgoing request, and the merge with a caller's
//! `baggage` header.
//!
//! Pure string work shared by the server and the SDK; it must not read or trust an incoming
//! `allot` member.

use smallvec::SmallVec;

use crate::snapshot::Allocation;

/// The baggage key of the stamp.
pub const KEY: &str = "allot";
/// Version of the stamp format: the first field of the value.
pub const FORMAT_VERSION: u32 = 1;
/// Default byte budget of the stamp value.
pub const DEFAULT_BUDGET: usize = 512;
/// W3C Baggage limit on members in a header.
pub const MAX_MEMBERS: usize = 64;
/// W3C Baggage limit on a header's bytes.
pub const MAX_BAGGAGE_BYTES: usize = 8192;

/// The stamp value for an allocation: `1.<revision>` then `.<experiment>~<cell>` for each
/// assignment and `.<holdout>~held` for each holdout, sorted by id (byte order).
///
/// When the value would exceed `budget` bytes, entries are dropped from the end and `.+N`
/// records how many; the `1.<revision>` prefix and the marker are always kept.
pub fn stamp(revision: u64, allocation: &Allocation<'_>, budget: usize) -> String {
    let mut entries: SmallVec<[(&str, &str); 8]> = allocation
        .assignments()
        .iter()
        .map(|a| (a.experiment, a.cell))
        .chain(allocation.holdouts().iter().map(|h| (*h, "held")))
        .collect();
    entries.sort_unstable();
    let mut out = String::with_capacity(budget.min(64 + entries.len() * 24));
    out.push_str("1.");
    push_u64(&mut out, revision);
    let base = out.len();
    // The largest prefix of entries that fits together with its drop marker.
    let n = entries.len();
    let mut len = base;
    let mut keep = 0;
    for (k, (id, cell)) in entries.iter().enumerate() {
        len += 1 + id.len() + 1 + cell.len();
        let rest = n - k - 1;
        let marker = if rest == 0 {
            0
        } else {
            2 + digits(rest as u64)
        };
        if len + marker <= budget {
            keep = k + 1;
        } else if rest == 0 || len > budget {
            break;
        }
    }
    for (id, cell) in entries.iter().take(keep) {
        out.push('.');
        out.push_str(id);
        out.push('~');
        out.push_str(cell);
    }
    if keep < n {
        out.push_str(".+");
        push_u64(&mut out, (n - keep) as u64);
    }
    out
}

/// A parsed stamp value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// The config revision the allocation was made under.
    pub revision: u64,
    /// (experiment or holdout id, cell id or `held`), as sent.
    pub entries: Vec<(String, String)>,
    /// How many entries were dropped for the budget.
    pub dropped: u64,
}

/// Parses a stamp value (`1.42.exp~cell.+2`); `None` if it is not one.
pub fn parse(value: &str) -> Option<Stamp> {
    let mut parts = value.split('.');
    if parts.next()? != "1" {
        return None;
    }
    let revision = parts.next()?.parse().ok()?;
    let mut entries = Vec::new();
    let mut dropped = 0;
    for part in parts {
        if let Some(n) = part.strip_prefix('+') {
            dropped = n.parse().ok()?;
        } else {
            let (id, cell) = part.split_once('~')?;
            entries.push((id.to_owned(), cell.to_owned()));
        }
    }
    Some(Stamp {
        revision,
        entries,
        dropped,
    })
}

/// The outgoing `baggage` header: our `allot=<value>` member first, then the members of the
/// incoming header(s) in order, minus any `allot` member (never trusted) and malformed ones;
/// whole members are dropped from the right to stay within 64 members and 8,192 bytes.
pub fn merge<'a>(value: &str, incoming: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::with_capacity(KEY.len() + 1 + value.len());
    out.push_str(KEY);
    out.push('=');
    out.push_str(value);
    let mut members = 1;
    for header in incoming {
        for member in header.split(',') {
            let member = member.trim_matches([' ', '\t']);
            let Some((key, _)) = member.split_once('=') else {
                continue;
            };
            let key = key.trim_matches([' ', '\t']);
            if key == KEY || !is_token(key) || !member.bytes().all(is_baggage_byte) {
                continue;
            }
            if members == MAX_MEMBERS || out.len() + 1 + member.len() > MAX_BAGGAGE_BYTES {
                // Dropping from the right: nothing after this member is kept either.
                return out;
            }
            out.push(',');
            out.push_str(member);
            members += 1;
        }
    }
    out
}

/// RFC 7230 token characters, as W3C Baggage keys require.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Bytes that may appear in a member (key, value, properties): visible ASCII and spaces/tabs.
fn is_baggage_byte(b: u8) -> bool {
    b == b' ' || b == b'\t' || (0x21..=0x7e).contains(&b)
}

fn digits(mut n: u64) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

fn push_u64(out: &mut String, n: u64) {
    use std::fmt::Write;
    // Writing to a String cannot fail.
    let _ = write!(out, "{n}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{Allocation, Assignment};

    fn alloc(
        pairs: &[(&'static str, &'static str)],
        holdouts: &[&'static str],
    ) -> Allocation<'static> {
        let mut a = Allocation::default();
        for &(experiment, cell) in pairs {
            a.assignments.push(Assignment {
                layer: "l",
                experiment,
                cell,
                bucket: 0,
            });
        }
        a.holdouts.extend(holdouts.iter().copied());
        a
    }

    #[test]
    fn sorted_with_holdouts() {
        let a = alloc(&[("zeta", "b"), ("alpha", "treatment")], &["h1"]);
        assert_eq!(
            stamp(42, &a, DEFAULT_BUDGET),
            "1.42.alpha~treatment.h1~held.zeta~b"
        );
        assert_eq!(stamp(7, &Allocation::default(), DEFAULT_BUDGET), "1.7");
    }

    #[test]
    fn budget_drops_from_the_end_and_counts() {
        let a = alloc(&[("a", "x"), ("b", "x"), ("c", "x")], &[]);
        // "1.1.a~x.b~x.c~x" is 15 bytes.
        assert_eq!(stamp(1, &a, 15), "1.1.a~x.b~x.c~x");
        assert_eq!(stamp(1, &a, 14), "1.1.a~x.b~x.+1");
        assert_eq!(stamp(1, &a, 13), "1.1.a~x.+2");
        assert_eq!(stamp(1, &a, 9), "1.1.+3");
        assert_eq!(stamp(1, &a, 0), "1.1.+3");
        for budget in 0..40 {
            let s = stamp(1, &a, budget);
            let p = parse(&s).unwrap();
            assert_eq!(p.entries.len() as u64 + p.dropped, 3);
            assert!(s.len() <= budget.max(6), "{budget}: {s}");
        }
    }

    #[test]
    fn parse_round_trip() {
        let a = alloc(&[("exp-1", "control"), ("exp_2", "t")], &["hold"]);
        let p = parse(&stamp(9, &a, DEFAULT_BUDGET)).unwrap();
        assert_eq!(p.revision, 9);
        assert_eq!(p.entries[0], ("exp-1".to_owned(), "control".to_owned()));
        assert_eq!(p.entries.len(), 3);
        assert_eq!(parse("2.1"), None);
        assert_eq!(parse("1.x"), None);
    }

    #[test]
    fn merge_replaces_incoming_stamp_and_keeps_others() {
        let m = merge(
            "1.5.e~c",
            [
                "userId=alice, allot=1.9.forged~x,sessionId=1;prop=2",
                "bad member,k=v",
            ],
        );
        assert_eq!(m, "allot=1.5.e~c,userId=alice,sessionId=1;prop=2,k=v");
        assert_eq!(merge("1.5", []), "allot=1.5");
    }

    #[test]
    fn merge_enforces_limits() {
        let many: Vec<String> = (0..100).map(|i| format!("k{i}=v")).collect();
        let m = merge("1.1", [many.join(",").as_str()]);
        assert_eq!(m.split(',').count(), MAX_MEMBERS);
        assert!(m.ends_with(",k62=v"));
        // "allot=1.1" + "," + an 8,182-byte member is exactly 8,192 bytes: kept; one more is not.
        let fits = format!("a={},b=1", "x".repeat(8_180));
        assert_eq!(merge("1.1", [fits.as_str()]).len(), MAX_BAGGAGE_BYTES);
        let over = format!("a={},b=1", "x".repeat(8_181));
        assert_eq!(merge("1.1", [over.as_str()]), "allot=1.1");
        let m = merge("1.1", [format!("a={}", "x".repeat(8_000)).as_str(), "b=1"]);
        assert!(m.len() <= MAX_BAGGAGE_BYTES && m.ends_with(",b=1"));
    }
}
