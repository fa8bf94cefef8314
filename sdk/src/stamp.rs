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
    let mut incoming = incoming.into_iter().peekable();
    // One allocation for the common case of one incoming header: room for all of it.
    let first = incoming.peek().map_or(0, |h| h.len() + 1);
    let mut out =
        String::with_capacity((KEY.len() + 1 + value.len() + first).min(MAX_BAGGAGE_BYTES));
    out.push_str(KEY);
    out.push('=');
    out.push_str(value);
    let mut members = 1;
    for header in incoming {
        out.reserve((header.len() + 1).min(MAX_BAGGAGE_BYTES.saturating_sub(out.len())));
        let mut rest = Some(header);
        while let Some(s) = rest {
            let (member, eq, valid) = next_member(s);
            rest = s.get(member.len() + 1..);
            let Some(key) = eq.and_then(|eq| member.get(..eq)) else {
                continue;
            };
            let key = trim_ows(key);
            if !valid || key == KEY || !is_token(key) {
                continue;
            }
            let member = trim_ows(member);
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

/// Byte classes for [`next_member`]: 0 for an ordinary baggage byte (visible ASCII except `,`
/// and `=`, space, tab), else one of these.
const COMMA: u8 = 1;
const EQUALS: u8 = 2;
const INVALID: u8 = 3;
static CLASS: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut rest: &mut [u8] = &mut table;
    let mut b: u8 = 0;
    while let [class, tail @ ..] = rest {
        *class = match b {
            b',' => COMMA,
            b'=' => EQUALS,
            _ if is_baggage_byte(b) => 0,
            _ => INVALID,
        };
        b = b.wrapping_add(1);
        rest = tail;
    }
    table
};

/// The first member of `s` (up to its first comma), the offset of its first `=`, and whether
/// all its bytes are baggage bytes: one pass, one table lookup and one branch per byte.
fn next_member(s: &str) -> (&str, Option<usize>, bool) {
    let mut eq = None;
    let mut valid = true;
    for (i, &b) in s.as_bytes().iter().enumerate() {
        match CLASS.get(usize::from(b)).copied().unwrap_or(INVALID) {
            0 => {}
            // A comma is ASCII, so `i` is a char boundary.
            COMMA => return (s.get(..i).unwrap_or_default(), eq, valid),
            EQUALS => {
                if eq.is_none() {
                    eq = Some(i);
                }
            }
            _ => valid = false,
        }
    }
    (s, eq, valid)
}

/// `s` without leading and trailing spaces and tabs (W3C Baggage `OWS`).
fn trim_ows(s: &str) -> &str {
    let ows = |c: &u8| *c == b' ' || *c == b'\t';
    let b = s.as_bytes();
    let start = b.iter().position(|c| !ows(c)).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !ows(c)).map_or(start, |i| i + 1);
    // Both ends are next to ASCII bytes, so they are char boundaries.
    s.get(start..end).unwrap_or_default()
}

/// RFC 7230 `tchar`s: `0-9 A-Z a-z ! # $ % & ' * + - . ^ _ ` | ~`.
static TCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut rest: &mut [bool] = &mut table;
    let mut b: u8 = 0;
    while let [tchar, tail @ ..] = rest {
        *tchar = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b = b.wrapping_add(1);
        rest = tail;
    }
    table
};

/// RFC 7230 token characters, as W3C Baggage keys require.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| TCHAR.get(usize::from(b)) == Some(&true))
}

/// Bytes that may appear in a member (key, value, properties): visible ASCII and spaces/tabs.
const fn is_baggage_byte(b: u8) -> bool {
    b == b' ' || b == b'\t' || (b >= 0x21 && b <= 0x7e)
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
    /// The first, obviously-correct `merge`, kept as the reference the fast one must equal.
    fn merge_reference<'a>(value: &str, incoming: impl IntoIterator<Item = &'a str>) -> String {
        let mut out = format!("{KEY}={value}");
        let mut members = 1;
        for header in incoming {
            for member in header.split(',') {
                let member = member.trim_matches([' ', '\t']);
                let Some((key, _)) = member.split_once('=') else {
                    continue;
                };
                let key = key.trim_matches([' ', '\t']);
                let token = !key.is_empty()
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                if key == KEY || !token || !member.bytes().all(is_baggage_byte) {
                    continue;
                }
                if members == MAX_MEMBERS || out.len() + 1 + member.len() > MAX_BAGGAGE_BYTES {
                    return out;
                }
                out.push(',');
                out.push_str(member);
                members += 1;
            }
        }
        out
    }

    use proptest::prelude::*;

    proptest::proptest! {
        #[test]
        fn merge_equals_the_reference(
            headers in proptest::collection::vec(
                // Members, separators, whitespace, forgeries, non-token and non-ASCII bytes.
                proptest::collection::vec(
                    "(allot|[a-zA-Z0-9!#'|~]{0,6}|[ \t]{0,2}k[ \t]?|\"q\"|é)(=|)[a-z0-9;= \t\"é]{0,8}",
                    0..12,
                ).prop_map(|m| m.join(",")),
                0..4,
            ),
            pad in 0usize..9_000,
        ) {
            let mut headers = headers;
            // Sometimes a member long enough to reach the byte cap.
            if pad > 7_000 {
                headers.push(format!("big={}", "x".repeat(pad - 7_000)));
                headers.push("after=1".to_owned());
            }
            let refs = headers.iter().map(String::as_str);
            proptest::prop_assert_eq!(
                merge("1.3.e~c", refs.clone()),
                merge_reference("1.3.e~c", refs)
            );
        }
    }
}
