//! The gRPC wire format of the load's calls, written and read by hand so that a call costs the
//! generator a few hundred nanoseconds of encoding instead of building and dropping a
//! `google.protobuf.Struct` tree per request.
//!
//! - [`request`]: one framed gRPC request message (the 5-byte prefix, then the protobuf
//!   bytes) for a unit of the population, byte-for-byte what prost encodes for the same
//!   message (the tests compare the two);
//! - [`check_message`]: unframes an answer and checks, per protocol, the same thing the typed
//!   clients did: a non-zero `revision` (`Allocate`), a value and no `ERROR` reason
//!   (`ResolveBoolean`), at least one flag (`ResolveAll`). Only the top level of the message
//!   is walked (every field, so a truncated or malformed message is caught); nested messages
//!   are skipped as bytes.
//!
//! Owns no I/O: the HTTP/2 side and the `grpc-status` check are in [`crate::target`].

use hyper::body::Bytes;
use prost::encoding::{decode_varint, encode_varint, encoded_len_varint};

use crate::Protocol;
use crate::population::Population;
use crate::target::ErrorKind;

/// The request path of each gRPC protocol.
pub fn path(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Flagd => "/flagd.evaluation.v2.Service/ResolveBoolean",
        Protocol::FlagdAll => "/flagd.evaluation.v1.Service/ResolveAll",
        _ => "/allot.v1.Allocator/Allocate",
    }
}

/// The framed request of `protocol` for `unit`: `AllocateRequest` / `ResolveAllRequest`
/// (`context = 1`) or `ResolveBooleanRequest` (`flag_key = 1`, `context = 2`), the context a
/// `Struct` of the unit's attributes with string values.
pub fn request(protocol: Protocol, flag: &str, population: &Population, unit: u64) -> Bytes {
    let (country, platform, app_version) = population.attributes(unit);
    let mut targeting_key = [0u8; 32];
    let mut device_id = [0u8; 32];
    let targeting_key = numbered(&mut targeting_key, b"member-", unit);
    let device_id = numbered(&mut device_id, b"device-", unit);
    // prost writes a `Struct`'s map in key order (a `BTreeMap`): keep these sorted.
    let fields: [(&[u8], &[u8]); 5] = [
        (b"app_version", app_version.as_bytes()),
        (b"country", country.as_bytes()),
        (b"device_id", device_id),
        (b"platform", platform.as_bytes()),
        (b"targetingKey", targeting_key),
    ];
    let entry_len = |k: &[u8], v: &[u8]| {
        let value_len = 1 + varint_len(v.len()) + v.len();
        1 + varint_len(k.len()) + k.len() + 1 + varint_len(value_len) + value_len
    };
    let struct_len: usize = fields
        .iter()
        .map(|(k, v)| {
            let n = entry_len(k, v);
            1 + varint_len(n) + n
        })
        .sum();
    let (flag_field, context_tag) = match protocol {
        // proto3 leaves an empty string out.
        Protocol::Flagd if !flag.is_empty() => (Some(flag.as_bytes()), tag(2, LEN)),
        Protocol::Flagd => (None, tag(2, LEN)),
        _ => (None, tag(1, LEN)),
    };
    let message_len = flag_field.map_or(0, |f| 1 + varint_len(f.len()) + f.len())
        + 1
        + varint_len(struct_len)
        + struct_len;

    let mut out = Vec::with_capacity(5 + message_len);
    out.push(0); // not compressed
    out.extend_from_slice(&u32::try_from(message_len).unwrap_or(u32::MAX).to_be_bytes());
    if let Some(f) = flag_field {
        bytes_field(&mut out, tag(1, LEN), f);
    }
    out.push(context_tag);
    encode_varint(struct_len as u64, &mut out);
    for (k, v) in fields {
        // Struct.fields (1): map entry { key = 1; Value value = 2 { string_value = 3 } }.
        out.push(tag(1, LEN));
        encode_varint(entry_len(k, v) as u64, &mut out);
        bytes_field(&mut out, tag(1, LEN), k);
        out.push(tag(2, LEN));
        encode_varint((1 + varint_len(v.len()) + v.len()) as u64, &mut out);
        bytes_field(&mut out, tag(3, LEN), v);
    }
    debug_assert_eq!(out.len(), 5 + message_len);
    Bytes::from(out)
}

/// Unframes the one message of a gRPC answer (`body`, all DATA frames) and checks it as
/// `protocol` promises.
pub fn check_message(protocol: Protocol, body: &[u8]) -> Result<(), ErrorKind> {
    let message = unframe(body).ok_or(ErrorKind::BadBody)?;
    match protocol {
        Protocol::Flagd => {
            // ResolveBooleanResponse: optional bool value = 1; string reason = 2.
            let (mut value, mut error) = (false, false);
            walk(message, |field, v| match (field, v) {
                (1, Field::Varint(_)) => value = true,
                (2, Field::Bytes(reason)) => error = reason == b"ERROR",
                _ => {}
            })?;
            if value && !error {
                Ok(())
            } else {
                Err(ErrorKind::FlagError)
            }
        }
        Protocol::FlagdAll => {
            // ResolveAllResponse: map<string, AnyFlag> flags = 1.
            let mut flags = 0usize;
            walk(message, |field, v| {
                if let (1, Field::Bytes(_)) = (field, v) {
                    flags += 1;
                }
            })?;
            if flags > 0 {
                Ok(())
            } else {
                Err(ErrorKind::BadBody)
            }
        }
        _ => {
            // AllocateResponse: uint64 revision = 1; proto3 leaves 0 out, and revisions start
            // at 1.
            let mut revision = 0;
            walk(message, |field, v| {
                if let (1, Field::Varint(r)) = (field, v) {
                    revision = r;
                }
            })?;
            if revision == 0 {
                Err(ErrorKind::BadBody)
            } else {
                Ok(())
            }
        }
    }
}

/// Wire type of length-delimited fields (strings, bytes, messages, map entries).
const LEN: u8 = 2;

/// One top-level field's value, as the walker sees it.
#[derive(Debug, Clone, Copy)]
enum Field<'a> {
    Varint(u64),
    Fixed,
    Bytes(&'a [u8]),
}

fn tag(field: u8, wire_type: u8) -> u8 {
    (field << 3) | wire_type
}

fn varint_len(n: usize) -> usize {
    encoded_len_varint(n as u64)
}

fn bytes_field(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    out.push(tag);
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// `prefix` then the decimal `n`, in `buf`.
fn numbered<'b>(buf: &'b mut [u8; 32], prefix: &[u8], n: u64) -> &'b [u8] {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let digits = &digits[i..];
    let len = prefix.len() + digits.len();
    buf[..prefix.len()].copy_from_slice(prefix);
    buf[prefix.len()..len].copy_from_slice(digits);
    &buf[..len]
}

/// The message of a single-message gRPC body: an uncompressed 5-byte prefix whose length is
/// exactly the rest.
fn unframe(body: &[u8]) -> Option<&[u8]> {
    let (prefix, message) = body.split_at_checked(5)?;
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]);
    (prefix[0] == 0 && usize::try_from(len).ok()? == message.len()).then_some(message)
}

fn read_varint(bytes: &mut &[u8]) -> Option<u64> {
    decode_varint(bytes).ok()
}

/// Calls `f` with each top-level field of `message`; fails on a malformed message.
fn walk<'a>(mut message: &'a [u8], mut f: impl FnMut(u64, Field<'a>)) -> Result<(), ErrorKind> {
    let bad = ErrorKind::BadBody;
    while !message.is_empty() {
        let key = read_varint(&mut message).ok_or(bad)?;
        let value = match key & 7 {
            0 => Field::Varint(read_varint(&mut message).ok_or(bad)?),
            1 | 5 => {
                let n = if key & 7 == 1 { 8 } else { 4 };
                message = message.get(n..).ok_or(bad)?;
                Field::Fixed
            }
            2 => {
                let n = read_varint(&mut message).ok_or(bad)?;
                let n = usize::try_from(n).map_err(|_| bad)?;
                let (bytes, rest) = message.split_at_checked(n).ok_or(bad)?;
                message = rest;
                Field::Bytes(bytes)
            }
            _ => return Err(bad),
        };
        f(key >> 3, value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use allot_proto::allot::v1 as pb;
    use allot_proto::convert::json_map_to_struct;
    use allot_proto::flagd::evaluation::{v1 as flagd_v1, v2 as flagd_v2};

    /// What tonic sends for `message`: the prefix, then prost's encoding.
    fn framed(message: &impl prost::Message) -> Vec<u8> {
        let bytes = message.encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(&bytes);
        out
    }

    #[test]
    fn requests_are_what_prost_encodes() {
        // Units of every digit count, and seeds that reach every attribute value.
        for seed in [1, 7, 42] {
            let p = Population::new(u64::MAX, 0.0, seed);
            for unit in [0, 9, 10, 99, 12_345, 999_999, 10_000_000_000, u64::MAX] {
                let context = Some(json_map_to_struct(&p.context(unit)));
                assert_eq!(
                    request(Protocol::Grpc, "", &p, unit),
                    framed(&pb::AllocateRequest {
                        context: context.clone()
                    }),
                    "unit {unit}"
                );
                assert_eq!(
                    request(Protocol::FlagdAll, "", &p, unit),
                    framed(&flagd_v1::ResolveAllRequest {
                        context: context.clone()
                    })
                );
                for flag in ["prefetch", "", &"x".repeat(300)] {
                    assert_eq!(
                        request(Protocol::Flagd, flag, &p, unit),
                        framed(&flagd_v2::ResolveBooleanRequest {
                            flag_key: flag.to_owned(),
                            context: context.clone(),
                        }),
                        "flag {flag:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn answers_are_checked_per_protocol() {
        let allocate = |revision| {
            framed(&pb::AllocateResponse {
                revision,
                baggage: "allot=1.3".into(),
                holdouts: vec!["h".into()],
                ..Default::default()
            })
        };
        assert_eq!(check_message(Protocol::Grpc, &allocate(3)), Ok(()));
        assert_eq!(
            check_message(Protocol::Grpc, &allocate(0)),
            Err(ErrorKind::BadBody)
        );

        let boolean = |value, reason: &str| {
            framed(&flagd_v2::ResolveBooleanResponse {
                value,
                reason: reason.into(),
                variant: Some("on".into()),
                metadata: Some(Default::default()),
            })
        };
        assert_eq!(
            check_message(Protocol::Flagd, &boolean(Some(false), "STATIC")),
            Ok(())
        );
        assert_eq!(
            check_message(Protocol::Flagd, &boolean(None, "STATIC")),
            Err(ErrorKind::FlagError)
        );
        assert_eq!(
            check_message(Protocol::Flagd, &boolean(Some(true), "ERROR")),
            Err(ErrorKind::FlagError)
        );

        let mut all = flagd_v1::ResolveAllResponse::default();
        assert_eq!(
            check_message(Protocol::FlagdAll, &framed(&all)),
            Err(ErrorKind::BadBody)
        );
        all.flags.insert("a".into(), flagd_v1::AnyFlag::default());
        assert_eq!(check_message(Protocol::FlagdAll, &framed(&all)), Ok(()));
    }

    #[test]
    fn malformed_frames_and_messages_are_bad_bodies() {
        let good = framed(&pb::AllocateResponse {
            revision: 300,
            baggage: "allot=1.300".into(),
            ..Default::default()
        });
        assert_eq!(check_message(Protocol::Grpc, &good), Ok(()));
        let bad = |body: &[u8]| check_message(Protocol::Grpc, body) == Err(ErrorKind::BadBody);
        // Truncated: the prefix's length no longer matches.
        assert!(bad(&good[..good.len() - 1]));
        assert!(bad(&good[..4]));
        assert!(bad(b""));
        // Compressed flag set.
        let mut compressed = good.clone();
        compressed[0] = 1;
        assert!(bad(&compressed));
        // A length-delimited field running past the end, with a consistent prefix.
        let mut message = vec![0x08, 0x01, 0x2a, 0x10, b'x'];
        let mut body = vec![0];
        body.extend_from_slice(&(message.len() as u32).to_be_bytes());
        body.append(&mut message);
        assert!(bad(&body));
    }
}
