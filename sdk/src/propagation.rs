//! The trace stamp in OpenTelemetry terms (feature `otel`): the `allot` member in an
//! [`opentelemetry::Context`]'s baggage, and the `baggage` header text.
//!
//! No stamp logic of its own: values come from [`crate::stamp::stamp`] (or
//! [`crate::client::Allocated::stamp`]) and the header from [`crate::stamp::merge`], so what
//! an OpenTelemetry propagator sends equals what the server sends.

use opentelemetry::Context;
use opentelemetry::baggage::{Baggage, BaggageExt};

use crate::stamp::{self, KEY};

/// `cx` with the `allot` baggage member set to `stamp_value`, replacing any `allot` entry the
/// context already had (an incoming one is never trusted) and keeping the other entries.
///
/// If the baggage is at its W3C limits (64 members, 8,192 bytes), other entries are dropped so
/// that ours is kept, as [`stamp::merge`] does.
pub fn stamp_into_context(cx: &Context, stamp_value: &str) -> Context {
    // Ours first, so it is the one kept when the others reach the limits.
    let mut baggage = Baggage::new();
    baggage.insert(KEY, stamp_value.to_owned());
    for (key, (value, metadata)) in cx.baggage() {
        if key.as_str() != KEY {
            baggage.insert_with_metadata(key.clone(), value.clone(), metadata.clone());
        }
    }
    cx.with_baggage(baggage)
}

/// The outgoing `baggage` header for `stamp_value` and the caller's incoming header, if any:
/// exactly [`stamp::merge`] (ours first, an incoming `allot` member replaced, others kept).
pub fn baggage_header(stamp_value: &str, incoming: Option<&str>) -> String {
    stamp::merge(stamp_value, incoming)
}

#[cfg(test)]
mod tests {
    use opentelemetry::KeyValue;

    use super::*;

    #[test]
    fn sets_and_replaces_the_allot_member() {
        let cx = Context::new().with_baggage([
            KeyValue::new("allot", "1.9.forged~x"),
            KeyValue::new("userId", "alice"),
        ]);
        let cx = stamp_into_context(&cx, "1.5.e~c");
        assert_eq!(cx.baggage().get("allot").unwrap().as_str(), "1.5.e~c");
        assert_eq!(cx.baggage().get("userId").unwrap().as_str(), "alice");
        assert_eq!(cx.baggage().len(), 2);
        let empty = stamp_into_context(&Context::new(), "1.1");
        assert_eq!(empty.baggage().get("allot").unwrap().as_str(), "1.1");
    }

    #[test]
    fn ours_is_kept_when_the_baggage_is_full() {
        let full: Vec<KeyValue> = (0..64)
            .map(|i| KeyValue::new(format!("k{i}"), "v"))
            .collect();
        let cx = Context::new().with_baggage(full);
        assert_eq!(cx.baggage().len(), 64);
        let cx = stamp_into_context(&cx, "1.2.e~c");
        assert_eq!(cx.baggage().get("allot").unwrap().as_str(), "1.2.e~c");
        assert!(cx.baggage().len() <= 64);
    }

    #[test]
    fn header_is_the_merge() {
        assert_eq!(
            baggage_header("1.5.e~c", Some("allot=1.9.f~x,userId=alice")),
            "allot=1.5.e~c,userId=alice"
        );
        assert_eq!(baggage_header("1.5", None), "allot=1.5");
    }
}
