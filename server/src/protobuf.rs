//! Hand-written protobuf for the hot gRPC path, `allot.v1.Allocator/Allocate`: the request's
//! context decoded straight from its bytes ([`decode_allocate_context`]), and the answer written
//! from fragments rendered once per config ([`encode_allocate`]), the protobuf twin of
//! [`crate::render`].
//!
//! prost stays the reference: the answer's bytes decode (with prost) to the very message that
//! `AllocatorService`'s `Allocator::allocate` builds, field by field, with the same encoded length
//! (the tests compare both on thousands of contexts); only the order of the `flags` map entries
//! differs (config order here, a `HashMap`'s arbitrary order there; protobuf leaves map order
//! unspecified). A request whose bytes are anything but the plain shape (a `context` of string,
//! number, bool and null attributes, each entry key then value, no unknown fields) is decoded
//! by prost, so every error and every merge rule is prost's.

use allot::{Context, Reason, Resolution, stamp};
use allot_proto::allot::v1 as pb;
use allot_proto::convert::{json_to_prost_value, prost_value_to_json, struct_to_json_map};
use prost::Message as _;
use prost::encoding::encoded_len_varint;
use prost_types::value::Kind;
use serde_json::Value;

use crate::render::RenderCache;
use crate::service::AllocateView;

/// Wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;

/// The key byte of field `field` (1-15) with wire type `wire`.
const fn key(field: u8, wire: u8) -> u8 {
    (field << 3) | wire
}

// === decode ===

/// The context of an encoded `AllocateRequest` as `Allocator::allocate` builds it (a missing
/// `context` is an empty one), or prost's decode error.
pub fn decode_allocate_context(bytes: &[u8]) -> Result<Context, prost::DecodeError> {
    if let Some(ctx) = plain_context(bytes) {
        return Ok(ctx);
    }
    let message = pb::AllocateRequest::decode(bytes)?;
    Ok(Context::from(
        message
            .context
            .as_ref()
            .map(struct_to_json_map)
            .unwrap_or_default(),
    ))
}

/// The fast path of [`decode_allocate_context`]: `None` for anything but the plain shape
/// (see the module docs), which prost then decodes.
fn plain_context(bytes: &[u8]) -> Option<Context> {
    let mut top = Reader(bytes);
    let Some(tag) = top.byte() else {
        return Some(Context::new());
    };
    // `context` (field 1), exactly once: prost merges repeated occurrences.
    if tag != key(1, LEN) {
        return None;
    }
    let mut fields = Reader(top.bytes()?);
    if !top.0.is_empty() {
        return None;
    }
    let mut attrs: Vec<(Box<str>, Value)> = Vec::with_capacity(8);
    while !fields.0.is_empty() {
        // `fields` entries (field 1): key (1) then value (2), nothing else; either may be
        // missing (prost writes neither an empty key nor an unset value).
        if fields.byte()? != key(1, LEN) {
            return None;
        }
        let mut entry = Reader(fields.bytes()?);
        let mut name = "";
        if entry.0.first() == Some(&key(1, LEN)) {
            entry.byte();
            name = std::str::from_utf8(entry.bytes()?).ok()?;
        }
        let mut json = Value::Null;
        if entry.0.first() == Some(&key(2, LEN)) {
            entry.byte();
            json = plain_value(entry.bytes()?)?;
        }
        if !entry.0.is_empty() {
            return None;
        }
        attrs.push((name.into(), json));
    }
    // The last of repeated names wins, as in prost's map.
    Some(attrs.into_iter().collect())
}

/// A `google.protobuf.Value` of one scalar kind (or none: null) as JSON, as
/// [`prost_value_to_json`] maps it; `None` for anything else.
fn plain_value(bytes: &[u8]) -> Option<Value> {
    let mut value = Reader(bytes);
    let json = match value.byte() {
        None => Value::Null,
        Some(k) if k == key(1, VARINT) => {
            value.varint()?;
            Value::Null
        }
        Some(k) if k == key(2, FIXED64) => {
            let x = f64::from_le_bytes(value.take(8)?.try_into().ok()?);
            prost_value_to_json(&prost_types::Value {
                kind: Some(Kind::NumberValue(x)),
            })
        }
        Some(k) if k == key(3, LEN) => {
            Value::String(std::str::from_utf8(value.bytes()?).ok()?.to_owned())
        }
        Some(k) if k == key(4, VARINT) => Value::Bool(value.varint()? != 0),
        Some(_) => return None,
    };
    // One kind only (prost: the last one wins, or nested messages merge).
    value.0.is_empty().then_some(json)
}

/// A cursor over protobuf bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    /// A varint of at most 10 bytes whose value fits in 64 bits (else `None`: prost decides).
    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for i in 0..10 {
            let b = self.byte()?;
            if i == 9 && b > 1 {
                return None;
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Some(value);
            }
        }
        None
    }

    /// A length-delimited field's bytes.
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.varint()?).ok()?;
        self.take(len)
    }
}

// === encode ===

/// The encoded `AllocateResponse` of `view`: the message `Allocator::allocate` builds, its
/// flags in the view's order, written from `cache`'s fragments where it has them (see the
/// module docs).
pub fn encode_allocate(view: &AllocateView<'_>, cache: Option<&RenderCache>) -> Vec<u8> {
    let cache = cache.filter(|c| c.is_for(view.snapshot));
    let capacity = cache.map_or(1024, RenderCache::pb_capacity)
        + view.stamp.len()
        + 64 * view.allocation.assignments().len()
        + 32 * view.allocation.holdouts().len();
    let mut out = Vec::with_capacity(capacity);
    let revision = view.snapshot.revision();
    if revision != 0 {
        out.push(key(1, VARINT));
        encode_varint(revision, &mut out);
    }
    for a in view.allocation.assignments() {
        let len = str_len(a.layer)
            + str_len(a.experiment)
            + str_len(a.cell)
            + if a.bucket == 0 {
                0
            } else {
                1 + encoded_len_varint(u64::from(a.bucket))
            };
        out.push(key(2, LEN));
        encode_varint(len as u64, &mut out);
        put_str(&mut out, 1, a.layer);
        put_str(&mut out, 2, a.experiment);
        put_str(&mut out, 3, a.cell);
        if a.bucket != 0 {
            out.push(key(4, VARINT));
            encode_varint(u64::from(a.bucket), &mut out);
        }
    }
    for h in view.allocation.holdouts() {
        // Repeated strings are written even when empty.
        out.push(key(3, LEN));
        encode_varint(h.len() as u64, &mut out);
        out.extend_from_slice(h.as_bytes());
    }
    for r in &view.flags {
        put_flag(&mut out, 4, r, cache);
    }
    // `baggage`: `allot=<stamp>`.
    let member = stamp::KEY.len() + 1 + view.stamp.len();
    out.push(key(5, LEN));
    encode_varint(member as u64, &mut out);
    out.extend_from_slice(stamp::KEY.as_bytes());
    out.push(b'=');
    out.extend_from_slice(view.stamp.as_bytes());
    out
}

/// One `map<string, FlagResolution>` entry (field `field`) for `r`.
fn put_flag(out: &mut Vec<u8>, field: u8, r: &Resolution<'_>, cache: Option<&RenderCache>) {
    let Some((entry_key, prefix)) = cache.and_then(|c| c.pb_fragments(r)) else {
        // The reference message, encoded by prost.
        let value = crate::grpc::flag_resolution(r);
        let key_len = if r.key.is_empty() { 0 } else { str_len(r.key) };
        let value_len = value.encoded_len();
        out.push(key(field, LEN));
        encode_varint(
            (key_len + 1 + encoded_len_varint(value_len as u64) + value_len) as u64,
            out,
        );
        put_str(out, 1, r.key);
        out.push(key(2, LEN));
        encode_varint(value_len as u64, out);
        value.encode_raw(out);
        return;
    };
    let reason = r.reason.as_str();
    let error = match (r.reason, r.error) {
        (Reason::Error, Some(code)) => code.as_str(),
        _ => "",
    };
    let (experiment, cell, layer) = r
        .assignment
        .map_or(("", "", ""), |a| (a.experiment, a.cell, a.layer));
    // FlagResolution: value (1) and variant (2) from the cache, then the rest in field order.
    let value_len = prefix.len()
        + str_len(reason)
        + str_len(experiment)
        + str_len(cell)
        + str_len(layer)
        + str_len(error);
    let entry_len = entry_key.len() + 1 + encoded_len_varint(value_len as u64) + value_len;
    out.push(key(field, LEN));
    encode_varint(entry_len as u64, out);
    out.extend_from_slice(entry_key);
    out.push(key(2, LEN));
    encode_varint(value_len as u64, out);
    out.extend_from_slice(prefix);
    put_str(out, 3, reason);
    put_str(out, 4, experiment);
    put_str(out, 5, cell);
    put_str(out, 6, layer);
    put_str(out, 7, error);
}

/// Writes `v` as a varint (prost's `encode_varint`, inlined: nearly every value here is a
/// length under 128).
#[inline]
fn encode_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The encoded length of singular string field (1-15) `s`: nothing when empty (proto3).
fn str_len(s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        1 + encoded_len_varint(s.len() as u64) + s.len()
    }
}

/// Writes singular string field `field` (1-15) unless `s` is empty (proto3).
fn put_str(out: &mut Vec<u8>, field: u8, s: &str) {
    if !s.is_empty() {
        out.push(key(field, LEN));
        encode_varint(s.len() as u64, out);
        out.extend_from_slice(s.as_bytes());
    }
}

/// The map entry's key field of flag `key` as prost writes it: `0a <len> <key>`, nothing for
/// an empty key (a map entry omits default keys).
pub(crate) fn entry_key(key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(str_len(key));
    put_str(&mut out, 1, key);
    out
}

/// The `value` and `variant` fields of a `FlagResolution` serving `variant` with `value`, as
/// prost writes them.
pub(crate) fn variant_prefix(variant: &str, value: &Value) -> Vec<u8> {
    pb::FlagResolution {
        value: Some(json_to_prost_value(value)),
        variant: variant.to_owned(),
        ..pb::FlagResolution::default()
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use allot::Config;
    use prost_types::{ListValue, Struct};

    use super::*;
    use crate::render::tests::{context, service};
    use crate::state::ConfigStore;

    /// `encode_allocate` (with the cache, and without: the prost fallback per flag) against
    /// the reference message of `grpc::allocate_response`; returns every decoded answer.
    fn assert_parity(config: &Config, n: usize) -> Vec<pb::AllocateResponse> {
        let service = service(config);
        let mut seen = Vec::new();
        for i in 0..n {
            let ctx = context(i);
            let (fast, bare, reference) = service
                .evaluate_with(
                    &ctx,
                    &[],
                    &["userId=alice"],
                    crate::service::RequestMeta::grpc(None),
                    |view| {
                        let fast = service
                            .with_render(view.snapshot, |c| encode_allocate(view, Some(c)))
                            .unwrap();
                        (
                            fast,
                            encode_allocate(view, None),
                            crate::grpc::allocate_response(view),
                        )
                    },
                )
                .unwrap();
            for bytes in [&fast, &bare] {
                let decoded = pb::AllocateResponse::decode(&bytes[..]).unwrap();
                assert_eq!(decoded, reference, "context {i}: {ctx:?}");
                assert_eq!(bytes.len(), reference.encoded_len(), "context {i}");
            }
            seen.push(reference);
        }
        seen
    }

    #[test]
    fn answers_match_prost_on_the_demo_config() {
        let seen = assert_parity(&crate::source::embedded().unwrap(), 3_000);
        assert!(
            seen.iter()
                .any(|r| r.flags.values().any(|f| !f.cell.is_empty()))
        );
        assert!(seen.iter().any(|r| !r.holdouts.is_empty()));
    }

    #[test]
    fn answers_match_prost_with_escapes_errors_and_holdouts() {
        let config = Config::parse(crate::render::tests::ODD).unwrap();
        let seen = assert_parity(&config, 3_000);
        let flags = || seen.iter().flat_map(|r| r.flags.values());
        assert!(flags().any(|f| f.error_code == "TARGETING_KEY_MISSING"));
        assert!(flags().any(|f| !f.cell.is_empty()));
        assert!(seen.iter().any(|r| !r.holdouts.is_empty()));
    }

    #[test]
    fn a_cache_of_another_config_falls_back_to_prost() {
        let demo = service(&crate::source::embedded().unwrap());
        let other = RenderCache::new(
            &ConfigStore::new()
                .apply(
                    &Config::parse(crate::render::tests::ODD).unwrap(),
                    None,
                    None,
                )
                .unwrap()
                .snapshot()
                .clone(),
        )
        .unwrap();
        let (fast, reference) = demo
            .allocate(&context(1), &[], &[], |view| {
                (
                    encode_allocate(view, Some(&other)),
                    crate::grpc::allocate_response(view),
                )
            })
            .unwrap();
        assert_eq!(pb::AllocateResponse::decode(&fast[..]).unwrap(), reference);
    }

    /// What `Allocator::allocate` decodes: prost, then the `Struct` as JSON.
    fn reference(bytes: &[u8]) -> Result<Context, String> {
        pb::AllocateRequest::decode(bytes)
            .map(|m| {
                Context::from(
                    m.context
                        .as_ref()
                        .map(struct_to_json_map)
                        .unwrap_or_default(),
                )
            })
            .map_err(|e| e.to_string())
    }

    fn assert_decodes_alike(bytes: &[u8]) {
        assert_eq!(
            decode_allocate_context(bytes).map_err(|e| e.to_string()),
            reference(bytes),
            "{bytes:02x?}"
        );
    }

    fn value(kind: Kind) -> prost_types::Value {
        prost_types::Value { kind: Some(kind) }
    }

    fn request(fields: Vec<(&str, prost_types::Value)>) -> Vec<u8> {
        pb::AllocateRequest {
            context: Some(Struct {
                fields: fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            }),
        }
        .encode_to_vec()
    }

    /// Hand-made requests prost writes differently or never: repeated names, repeated
    /// `context`s, entries value-first, several kinds in one value, unknown fields.
    fn odd_requests() -> Vec<Vec<u8>> {
        let entry = |k: &[u8], v: &[u8]| {
            let mut e = vec![key(1, LEN), k.len() as u8];
            e.extend_from_slice(k);
            e.extend_from_slice(&[key(2, LEN), v.len() as u8]);
            e.extend_from_slice(v);
            e
        };
        let string = |s: &[u8]| {
            let mut v = vec![key(3, LEN), s.len() as u8];
            v.extend_from_slice(s);
            v
        };
        let structure = |entries: &[Vec<u8>]| {
            let mut out = Vec::new();
            for e in entries {
                out.extend_from_slice(&[key(1, LEN), e.len() as u8]);
                out.extend_from_slice(e);
            }
            out
        };
        let request = |s: &[u8]| {
            let mut out = vec![key(1, LEN), s.len() as u8];
            out.extend_from_slice(s);
            out
        };
        let a = entry(b"targetingKey", &string(b"u-1"));
        let b = entry(b"targetingKey", &string(b"u-2"));
        let c = entry(b"country", &string(b"SE"));
        let value_first = {
            let mut e = vec![key(2, LEN), 4];
            e.extend_from_slice(&string(b"SE"));
            e.extend_from_slice(&[key(1, LEN), 1, b'c']);
            e
        };
        let two_kinds = entry(b"k", &[string(b"x"), vec![key(4, VARINT), 1]].concat());
        let null_then_string = entry(b"k", &[vec![key(1, VARINT), 0], string(b"x")].concat());
        let no_value = vec![key(1, LEN), 1, b'k'];
        let no_key = [vec![key(2, LEN), 4], string(b"SE")].concat();
        let empty_value = entry(b"k", &[]);
        let big_null = entry(b"k", &[key(1, VARINT), 0xff, 0xff, 0xff, 0xff, 0x0f]);
        // A bool as a varint of `n` bytes: `n - 1` continuation bytes, then 1.
        let long_bool = |n: usize| {
            let mut value = vec![key(4, VARINT)];
            value.extend(std::iter::repeat_n(0x80, n - 1));
            value.push(0x01);
            entry(b"k", &value)
        };
        let ten_byte_bool = long_bool(10);
        let eleven_byte_bool = long_bool(11);
        let bad_utf8_value = entry(b"k", &string(&[0xc3, 0x28]));
        let bad_utf8_key = entry(&[0xff], &string(b"x"));
        let mut out = vec![
            Vec::new(),
            request(&[]),
            request(&structure(&[a.clone(), b.clone()])),
            request(&structure(&[b.clone(), c.clone(), a.clone()])),
            [
                request(&structure(std::slice::from_ref(&a))),
                request(&structure(std::slice::from_ref(&c))),
            ]
            .concat(),
            [
                request(&structure(std::slice::from_ref(&a))),
                request(&structure(std::slice::from_ref(&b))),
            ]
            .concat(),
            request(&structure(&[value_first, a.clone()])),
            request(&structure(&[two_kinds, a.clone()])),
            request(&structure(&[null_then_string])),
            request(&structure(&[no_value, a.clone()])),
            request(&structure(&[no_key])),
            request(&structure(&[empty_value])),
            request(&structure(&[big_null])),
            request(&structure(&[ten_byte_bool])),
            request(&structure(&[eleven_byte_bool])),
            request(&structure(&[bad_utf8_value])),
            request(&structure(&[bad_utf8_key])),
            // Unknown fields: top level, in the struct, in an entry, in a value.
            [
                request(&structure(std::slice::from_ref(&a))),
                vec![key(2, VARINT), 7],
            ]
            .concat(),
            request(&[structure(std::slice::from_ref(&a)), vec![key(2, VARINT), 7]].concat()),
            request(&structure(&[[a.clone(), vec![key(3, VARINT), 7]].concat()])),
            request(&structure(&[entry(
                b"k",
                &[string(b"x"), vec![key(9, VARINT), 1]].concat(),
            )])),
            // Wrong wire types.
            vec![key(1, VARINT), 1],
            request(&[key(1, VARINT), 1]),
            request(&structure(&[entry(b"k", &[key(3, VARINT), 1])])),
            request(&structure(&[entry(b"k", &[key(2, VARINT), 1])])),
        ];
        // Every prefix of a plain request (truncations).
        let plain = request(&structure(&[a, c]));
        for n in 0..plain.len() {
            out.push(plain[..n].to_vec());
        }
        out.push(plain);
        out
    }

    #[test]
    fn contexts_decode_as_prost_decodes_them() {
        let numbers = [
            0.0,
            -0.0,
            1.0,
            -7.0,
            0.5,
            1e300,
            -1e-6,
            9_007_199_254_740_992.0,
            9_007_199_254_740_994.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        let mut requests = vec![
            request(vec![]),
            request(vec![
                ("targetingKey", value(Kind::StringValue("member-1".into()))),
                ("country", value(Kind::StringValue("SE".into()))),
                ("beta", value(Kind::BoolValue(true))),
                ("off", value(Kind::BoolValue(false))),
                ("none", value(Kind::NullValue(0))),
                ("odd-null", value(Kind::NullValue(7))),
                ("unset", prost_types::Value { kind: None }),
                ("", value(Kind::StringValue(String::new()))),
                (
                    "ünï\u{2028}",
                    value(Kind::StringValue("\u{1F600}\"\\".into())),
                ),
            ]),
            request(vec![(
                "nested",
                value(Kind::StructValue(Struct {
                    fields: [("a".to_owned(), value(Kind::NumberValue(1.0)))].into(),
                })),
            )]),
            request(vec![(
                "list",
                value(Kind::ListValue(ListValue {
                    values: vec![
                        value(Kind::StringValue("x".into())),
                        value(Kind::NullValue(0)),
                    ],
                })),
            )]),
            pb::AllocateRequest { context: None }.encode_to_vec(),
        ];
        for (i, x) in numbers.into_iter().enumerate() {
            requests.push(request(vec![
                ("n", value(Kind::NumberValue(x))),
                ("targetingKey", value(Kind::StringValue(format!("u-{i}")))),
            ]));
        }
        requests.extend(odd_requests());
        for bytes in &requests {
            assert_decodes_alike(bytes);
        }
        // The plain shape is the fast path's, not prost's.
        assert!(plain_context(&requests[1]).is_some());
        // Mutations of every request: each byte flipped, dropped, or set to a key byte.
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        for bytes in &requests {
            for _ in 0..200 {
                if bytes.is_empty() {
                    break;
                }
                let mut m = bytes.clone();
                let at = (next() % m.len() as u64) as usize;
                match next() % 4 {
                    0 => m[at] ^= 1 << (next() % 8),
                    1 => {
                        m.remove(at);
                    }
                    2 => m[at] = [0x08, 0x0a, 0x11, 0x12, 0x1a, 0x20][(next() % 6) as usize],
                    _ => m[at] = (next() % 256) as u8,
                }
                assert_decodes_alike(&m);
            }
        }
    }
}
