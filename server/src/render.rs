//! JSON responses written from fragments rendered once per config: the native `/v1/allocate`
//! answer ([`encode`]) and OFREP entries ([`crate::ofrep`]).
//!
//! Within one snapshot a flag's `"<key>":{"value":<v>,"variant":"<name>","reason":"` prefix
//! (OFREP: `{"key":"<key>","value":<v>,"variant":"<name>","reason":"`) depends only on the
//! variant served, so [`RenderCache`] renders every (flag, variant) prefix once per (revision,
//! content hash) and the encoders copy them; only the reason, the cell, the allocations and the
//! stamp are written per request. The output is byte-identical to the `Serialize` impls
//! (`AllocateView`, `ofrep::Entry`, `ofrep::Bulk`), which stay the reference: the tests compare
//! both, and anything the cache does not know is written by that reference impl.

use std::io;

use allot::{Reason, Resolution, Snapshot, stamp};

use crate::ofrep::TypedValue;
use crate::service::{AllocateView, FlagJson};

/// Pre-rendered JSON fragments of one config revision.
#[derive(Debug)]
pub struct RenderCache {
    revision: u64,
    content_hash: u64,
    /// In config order.
    flags: Box<[FlagFragments]>,
    /// A buffer size that fits a response with every flag at its longest variant.
    capacity: usize,
    /// The same for the OFREP bulk answer.
    ofrep_capacity: usize,
    /// The same for the protobuf `AllocateResponse` ([`crate::protobuf`]).
    pb_capacity: usize,
}

#[derive(Debug)]
struct FlagFragments {
    key: Box<str>,
    /// The protobuf map entry's key field: `0a <len> <key>` ([`crate::protobuf`]).
    pb_key: Box<[u8]>,
    /// By variant name.
    variants: Box<[VariantFragment]>,
}

/// A variant's fragments.
#[derive(Debug)]
struct VariantFragment {
    name: Box<str>,
    /// `"<key>":{"value":<v>,"variant":"<name>","reason":"` (native).
    native: Box<[u8]>,
    /// `{"key":"<key>","value":<typed v>,"variant":"<name>","reason":"` (OFREP: the value in
    /// the flag's declared type, [`TypedValue`]).
    ofrep: Box<[u8]>,
    /// The protobuf `FlagResolution`'s `value` and `variant` fields ([`crate::protobuf`]).
    pb: Box<[u8]>,
}

// === impl RenderCache ===

impl RenderCache {
    /// Renders the fragments of `snapshot`'s flags.
    pub fn new(snapshot: &Snapshot) -> serde_json::Result<Self> {
        let mut capacity = 256;
        let mut ofrep_capacity = 64;
        let mut pb_capacity = 64;
        let flags: Box<[FlagFragments]> = snapshot
            .config()
            .flags
            .iter()
            .map(|f| {
                let (mut longest, mut longest_ofrep, mut longest_pb) = (0, 0, 0);
                let pb_key = crate::protobuf::entry_key(&f.key);
                let variants = f
                    .variants
                    .iter()
                    .map(|(name, value)| {
                        let mut native = Vec::with_capacity(64);
                        serde_json::to_writer(&mut native, &f.key)?;
                        native.extend_from_slice(b":{\"value\":");
                        serde_json::to_writer(&mut native, value)?;
                        native.extend_from_slice(b",\"variant\":");
                        serde_json::to_writer(&mut native, name)?;
                        native.extend_from_slice(b",\"reason\":\"");
                        longest = longest.max(native.len());
                        let mut ofrep = Vec::with_capacity(64);
                        ofrep.extend_from_slice(b"{\"key\":");
                        serde_json::to_writer(&mut ofrep, &f.key)?;
                        ofrep.extend_from_slice(b",\"value\":");
                        serde_json::to_writer(&mut ofrep, &TypedValue(f.kind, value))?;
                        ofrep.extend_from_slice(b",\"variant\":");
                        serde_json::to_writer(&mut ofrep, name)?;
                        ofrep.extend_from_slice(b",\"reason\":\"");
                        longest_ofrep = longest_ofrep.max(ofrep.len());
                        let pb = crate::protobuf::variant_prefix(name, value);
                        longest_pb = longest_pb.max(pb_key.len() + pb.len());
                        Ok(VariantFragment {
                            name: name.as_str().into(),
                            native: native.into_boxed_slice(),
                            ofrep: ofrep.into_boxed_slice(),
                            pb: pb.into_boxed_slice(),
                        })
                    })
                    .collect::<serde_json::Result<_>>()?;
                // Reason, cell tail and error code (OFREP: and the metadata).
                capacity += longest + 160;
                ofrep_capacity += longest_ofrep + 200;
                // Entry and value headers, reason, cell and error code.
                pb_capacity += longest_pb + 160;
                Ok(FlagFragments {
                    key: f.key.as_str().into(),
                    pb_key: pb_key.into_boxed_slice(),
                    variants,
                })
            })
            .collect::<serde_json::Result<_>>()?;
        Ok(Self {
            revision: snapshot.revision(),
            content_hash: snapshot.content_hash(),
            flags,
            capacity,
            ofrep_capacity,
            pb_capacity,
        })
    }

    /// Whether this cache was rendered from `snapshot`'s config.
    pub fn is_for(&self, snapshot: &Snapshot) -> bool {
        self.revision == snapshot.revision() && self.content_hash == snapshot.content_hash()
    }

    /// A buffer size that fits an OFREP bulk answer with every flag at its longest variant.
    pub fn ofrep_capacity(&self) -> usize {
        self.ofrep_capacity
    }

    /// A buffer size that fits a protobuf `AllocateResponse` with every flag at its longest
    /// variant, allocations, holdouts and stamp aside.
    pub fn pb_capacity(&self) -> usize {
        self.pb_capacity
    }

    /// The fragments of `r`, if `r` is a flag of this config (at its config position, which
    /// the engine reports) and one of its variants.
    fn variant(&self, r: &Resolution<'_>) -> Option<&VariantFragment> {
        self.flag_variant(r).map(|(_, v)| v)
    }

    fn flag_variant(&self, r: &Resolution<'_>) -> Option<(&FlagFragments, &VariantFragment)> {
        let flag = self
            .flags
            .get(r.index as usize)
            .filter(|f| *f.key == *r.key)?;
        let variant = flag.variants.iter().find(|v| *v.name == *r.variant)?;
        Some((flag, variant))
    }

    /// The protobuf fragments of `r`, if it is a flag and variant of this config: the map
    /// entry's key field and the `FlagResolution`'s `value` and `variant` fields.
    pub fn pb_fragments(&self, r: &Resolution<'_>) -> Option<(&[u8], &[u8])> {
        self.flag_variant(r).map(|(f, v)| (&*f.pb_key, &*v.pb))
    }

    /// The native prefix of `r` (see [`RenderCache::variant`]).
    fn prefix(&self, r: &Resolution<'_>) -> Option<&[u8]> {
        self.variant(r).map(|v| &*v.native)
    }

    /// The OFREP entry prefix of `r`: `{"key":..,"value":..,"variant":..,"reason":"`.
    pub fn ofrep_prefix(&self, r: &Resolution<'_>) -> Option<&[u8]> {
        self.variant(r).map(|v| &*v.ofrep)
    }
}

/// Writes `view` as the native JSON response, the bytes of `serde_json::to_vec(view)`, with
/// `cache` rendered for `view.snapshot` (else every flag goes through the reference impl).
pub fn encode(view: &AllocateView<'_>, cache: &RenderCache) -> serde_json::Result<Vec<u8>> {
    let cache = Some(cache).filter(|c| c.is_for(view.snapshot));
    let capacity = cache.map_or(2048, |c| c.capacity)
        + view.stamp.len()
        + 96 * view.allocation.assignments().len()
        + 32 * view.allocation.holdouts().len();
    let mut out = Vec::with_capacity(capacity);
    out.extend_from_slice(b"{\"revision\":");
    push_u64(&mut out, view.snapshot.revision());
    out.extend_from_slice(b",\"allocations\":[");
    for (i, a) in view.allocation.assignments().iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"layer\":");
        push_str(&mut out, a.layer)?;
        out.extend_from_slice(b",\"experiment\":");
        push_str(&mut out, a.experiment)?;
        out.extend_from_slice(b",\"cell\":");
        push_str(&mut out, a.cell)?;
        out.extend_from_slice(b",\"bucket\":");
        push_u64(&mut out, u64::from(a.bucket));
        out.push(b'}');
    }
    out.extend_from_slice(b"],\"holdouts\":[");
    for (i, h) in view.allocation.holdouts().iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_str(&mut out, h)?;
    }
    out.extend_from_slice(b"],\"flags\":{");
    for (i, r) in view.flags.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match cache.and_then(|c| c.prefix(r)) {
            Some(prefix) => {
                debug_assert!(
                    view.snapshot
                        .config()
                        .flags
                        .iter()
                        .find(|f| f.key == r.key)
                        .and_then(|f| f.variants.get(r.variant))
                        == Some(r.value),
                    "a resolution serves its variant's value"
                );
                out.extend_from_slice(prefix);
                out.extend_from_slice(r.reason.as_str().as_bytes());
                out.push(b'"');
                push_tail(&mut out, r)?;
                out.push(b'}');
            }
            None => {
                serde_json::to_writer(&mut out, r.key)?;
                out.push(b':');
                serde_json::to_writer(&mut out, &FlagJson(r))?;
            }
        }
    }
    out.extend_from_slice(b"},\"baggage\":\"");
    out.extend_from_slice(stamp::KEY.as_bytes());
    out.push(b'=');
    push_str_content(&mut out, &view.stamp)?;
    out.extend_from_slice(b"\"}");
    Ok(out)
}

/// The optional members of a flag after its reason: the cell, the error code.
fn push_tail(out: &mut Vec<u8>, r: &Resolution<'_>) -> serde_json::Result<()> {
    if let Some(a) = &r.assignment {
        out.extend_from_slice(b",\"experiment\":");
        push_str(out, a.experiment)?;
        out.extend_from_slice(b",\"cell\":");
        push_str(out, a.cell)?;
        out.extend_from_slice(b",\"layer\":");
        push_str(out, a.layer)?;
    }
    if let (Reason::Error, Some(code)) = (r.reason, r.error) {
        out.extend_from_slice(b",\"errorCode\":\"");
        out.extend_from_slice(code.as_str().as_bytes());
        out.push(b'"');
    }
    Ok(())
}

/// Whether serde_json writes `s` unescaped (no quote, backslash or control character).
fn plain(s: &str) -> bool {
    // No early exit, so the loop vectorizes: ids are short and almost never need escaping.
    s.bytes()
        .fold(true, |ok, b| ok & (b >= 0x20) & (b != b'"') & (b != b'\\'))
}

/// `s` as a JSON string, as serde_json writes it.
pub(crate) fn push_str(out: &mut Vec<u8>, s: &str) -> serde_json::Result<()> {
    if plain(s) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        Ok(())
    } else {
        serde_json::to_writer(out, s)
    }
}

/// The inside of `s` as a JSON string (no quotes), as serde_json writes it.
fn push_str_content(out: &mut Vec<u8>, s: &str) -> serde_json::Result<()> {
    if plain(s) {
        out.extend_from_slice(s.as_bytes());
    } else {
        let quoted = serde_json::to_vec(s)?;
        let inner = quoted
            .get(1..quoted.len().saturating_sub(1))
            .ok_or_else(|| serde_json::Error::io(io::Error::other("unquoted string")))?;
        out.extend_from_slice(inner);
    }
    Ok(())
}

/// `n` in decimal.
pub(crate) fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        // `n % 10` is a single digit.
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use allot::{Config, Context};
    use serde_json::json;

    use super::*;
    use crate::service::{Limits, RequestMeta, Service};
    use crate::state::ConfigStore;

    /// Flags whose values need escaping, of every JSON kind, with rules, a rollout on a second
    /// unit (an error without it), a holdout and experiments in two layers.
    pub(crate) const ODD: &str = r#"
layers: [{id: a}, {id: b, unit: device_id}]
holdouts: [{id: h-1, salt: h, ranges: ["0..2000"], layers: [a]}]
experiments:
  - {id: e-1, layer: a, ranges: ["0..6000"], cells: [{id: c_0, flags: {q: x}}, {id: c-1, flags: {q: y, n: big}}]}
  - {id: e2, layer: b, ranges: ["0..9000"], cells: [{id: z, flags: {o: deep}}]}
flags:
  - key: q
    type: string
    variants: {x: "say \"hi\"\\ \u00e9\u2028\n\t\u0001/", y: "\U0001F600 plain"}
    default: x
  - key: n
    type: float
    variants: {small: -0.000001, big: 1.0e300, int: 12.0}
    default: small
    rules: [{when: {country: {eq: SE}}, variant: int}]
  - key: o
    type: object
    variants:
      deep: {"k\"ey": [1, -2, 3.5, null, true, {"x": "\u007f"}], "": {}}
      flat: {}
    default: flat
  - key: r
    type: bool
    variants: {"y": true, "n": false}
    default: "n"
    rules: [{rollout: {unit: device_id, split: [{variant: "y", weight: 1}, {variant: "n", weight: 1}]}}]
  - key: d
    type: int
    enabled: false
    variants: {v: -9007199254740993}
    default: v
"#;

    pub(crate) fn service(config: &Config) -> Service {
        let store = Arc::new(ConfigStore::new());
        store.apply(config, None, None).unwrap();
        Service::new(store, Limits::default())
    }

    /// Context `i` of the parity tests: every attribute `ODD`'s rules read, some without a unit.
    pub(crate) fn context(i: usize) -> Context {
        let countries = ["SE", "US", "CA", "NO", "DE"];
        let platforms = ["ios", "android", "web", "tv"];
        let mut ctx = Context::new()
            .with("country", countries[i % countries.len()])
            .with("platform", platforms[i % platforms.len()])
            .with("app_version", format!("{}.{}.0", 4 + i % 3, i % 7))
            .with("tenure_months", json!(i % 40))
            .with(
                "email",
                if i.is_multiple_of(5) {
                    "a@example.com"
                } else {
                    "b@x.org"
                },
            );
        if i % 11 != 3 {
            ctx = ctx.with("targetingKey", format!("member-\"{i}\u{e9}"));
        }
        if i % 7 != 2 {
            ctx = ctx.with("device_id", format!("device-{i}"));
        }
        ctx
    }

    /// `Service::encode` against the `Serialize` reference, for every flag and for subsets.
    fn assert_parity(config: &Config, n: usize) {
        let service = service(config);
        let keys: Vec<String> = config.flags.iter().rev().map(|f| f.key.clone()).collect();
        let baggage = ["userId=alice,tenant=acme;priority=high"];
        for i in 0..n {
            let ctx = context(i);
            let keys = if i % 3 == 0 {
                &keys[..1 + i % keys.len()]
            } else {
                &[][..]
            };
            let (fast, reference) = service
                .evaluate_with(&ctx, keys, &baggage, RequestMeta::http(None), |view| {
                    (
                        service.encode(view).unwrap(),
                        serde_json::to_vec(view).unwrap(),
                    )
                })
                .unwrap();
            assert_eq!(
                String::from_utf8(fast).unwrap(),
                String::from_utf8(reference).unwrap(),
                "context {i}: {ctx:?}"
            );
        }
    }

    #[test]
    fn encode_matches_serde_on_the_demo_config() {
        assert_parity(&crate::source::embedded().unwrap(), 5_000);
    }

    #[test]
    fn encode_matches_serde_with_escapes_errors_and_holdouts() {
        let config = Config::parse(ODD).unwrap();
        assert_parity(&config, 3_000);
        // Every branch was taken: escapes, errors, holdouts, cells.
        let service = service(&config);
        let seen = (0..200).fold(String::new(), |mut all, i| {
            let ctx = context(i);
            let json = service
                .evaluate_with(&ctx, &[], &[], RequestMeta::http(None), |v| {
                    service.encode(v).unwrap()
                })
                .unwrap();
            all.push_str(std::str::from_utf8(&json).unwrap());
            all
        });
        for needle in [
            r#"\"hi\""#,
            "\u{2028}",
            "TARGETING_KEY_MISSING",
            r#""holdouts":["h-1"]"#,
            r#""cell":"c-1""#,
            "1e+300",
            "-9007199254740993",
        ] {
            assert!(seen.contains(needle), "{needle} not in the responses");
        }
    }

    #[test]
    fn a_cache_of_another_config_falls_back_to_serde() {
        let demo = service(&crate::source::embedded().unwrap());
        let other = RenderCache::new(
            &ConfigStore::new()
                .apply(&Config::parse(ODD).unwrap(), None, None)
                .unwrap()
                .snapshot()
                .clone(),
        )
        .unwrap();
        let ctx = context(1);
        let (fast, reference) = demo
            .allocate(&ctx, &[], &[], |view| {
                (
                    encode(view, &other).unwrap(),
                    serde_json::to_vec(view).unwrap(),
                )
            })
            .unwrap();
        assert_eq!(fast, reference);
    }

    /// [`ODD`] plus an integer flag and a float flag with integer literals (OFREP writes
    /// float flags as JSON floats).
    fn odd_ofrep() -> Config {
        let extra = r#"
  - key: i
    type: int
    variants: {ten: 10, neg: -3, big: 12345678901234567}
    default: ten
    rules: [{when: {country: {eq: US}}, variant: neg}, {when: {country: {eq: CA}}, variant: big}]
  - key: f
    type: float
    variants: {seven: 7, half: 0.5}
    default: seven
    rules: [{when: {country: {eq: SE}}, variant: half}]
"#;
        Config::parse(&format!("{ODD}{extra}")).unwrap()
    }

    /// The OFREP bulk and single-flag answers written from the cache against the `Serialize`
    /// reference (`ofrep::Bulk`, `ofrep::Entry`), for every flag; returns every answer.
    fn assert_ofrep_parity(config: &Config, n: usize) -> String {
        let service = service(config);
        let keys: Vec<String> = config.flags.iter().map(|f| f.key.clone()).collect();
        let mut seen = String::new();
        for i in 0..n {
            let ctx = context(i);
            let meta = RequestMeta::http(None);
            let (fast, reference) = service
                .evaluate_with(&ctx, &[], &[], meta, |v| {
                    let fast = service
                        .with_render(v.snapshot, |c| crate::ofrep::bulk_json(v, Some(c)))
                        .unwrap();
                    (fast.unwrap(), crate::ofrep::bulk_json(v, None).unwrap())
                })
                .unwrap();
            let (fast, reference) = (
                String::from_utf8(fast).unwrap(),
                String::from_utf8(reference).unwrap(),
            );
            assert_eq!(fast, reference, "bulk, context {i}: {ctx:?}");
            seen.push_str(&fast);
            let key = std::slice::from_ref(&keys[i % keys.len()]);
            let (fast, reference) = service
                .evaluate_with(&ctx, key, &[], meta, |v| {
                    let r = &v.flags[0];
                    let fast = service
                        .with_render(v.snapshot, |c| crate::ofrep::single_json(v, r, Some(c)))
                        .unwrap();
                    (
                        fast.unwrap(),
                        crate::ofrep::single_json(v, r, None).unwrap(),
                    )
                })
                .unwrap();
            assert_eq!(
                String::from_utf8(fast).unwrap(),
                String::from_utf8(reference).unwrap(),
                "flag {key:?}, context {i}: {ctx:?}"
            );
        }
        seen
    }

    #[test]
    fn ofrep_answers_match_serde_on_the_demo_config() {
        let seen = assert_ofrep_parity(&crate::source::embedded().unwrap(), 3_000);
        assert!(seen.contains(r#""metadata":{"experiment":"#), "{seen}");
    }

    #[test]
    fn ofrep_answers_match_serde_with_escapes_errors_and_typed_values() {
        let seen = assert_ofrep_parity(&odd_ofrep(), 3_000);
        // Every branch was taken: escapes, errors, typed numbers, cells.
        for needle in [
            r#"\"hi\""#,
            "\u{2028}",
            r#""errorCode":"TARGETING_KEY_MISSING""#,
            r#""cell":"c-1""#,
            "1e+300",
            r#""value":10,"#,
            r#""value":7.0,"#,
            r#""value":12.0,"#,
            r#""value":12345678901234567,"#,
            "-9007199254740993",
        ] {
            assert!(seen.contains(needle), "{needle} not in the answers");
        }
    }

    #[test]
    fn ofrep_answers_with_a_cache_of_another_config_fall_back_to_serde() {
        let demo = service(&crate::source::embedded().unwrap());
        let other = RenderCache::new(
            &ConfigStore::new()
                .apply(&odd_ofrep(), None, None)
                .unwrap()
                .snapshot()
                .clone(),
        )
        .unwrap();
        let ctx = context(1);
        let meta = RequestMeta::http(None);
        let (fast, reference) = demo
            .evaluate_with(&ctx, &[], &[], meta, |v| {
                (
                    crate::ofrep::bulk_json(v, Some(&other)).unwrap(),
                    crate::ofrep::bulk_json(v, None).unwrap(),
                )
            })
            .unwrap();
        assert_eq!(fast, reference);
    }

    #[test]
    fn numbers_and_strings_match_serde() {
        for n in [0, 1, 9, 10, 99, 100, 12_345, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(out, serde_json::to_vec(&n).unwrap());
        }
        for s in [
            "",
            "plain-id_1.2",
            "q\"uote",
            "back\\slash",
            "new\nline\t\u{1}\u{1f}",
            "ünï/cødé \u{7f} \u{2028}",
        ] {
            let mut out = Vec::new();
            push_str(&mut out, s).unwrap();
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
            let mut inner = b"\"".to_vec();
            push_str_content(&mut inner, s).unwrap();
            inner.push(b'"');
            assert_eq!(inner, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }
}
