//! W3C Trace Context: parses a caller's `traceparent` and continues the caller's trace with an
//! OpenTelemetry server span, so the assignment log and traces name the same span.
//!
//! Parsing is allocation-free and total: anything that is not a valid `traceparent` (W3C Trace
//! Context level 1: `00-<32 hex>-<16 hex>-<2 hex>`, lower case, non-zero ids) is ignored.
//! Spans go through the `opentelemetry` API's global tracer: a no-op until a process installs
//! an SDK provider (no exporter is wired yet), and started only for requests that carry a
//! valid `traceparent`, so untraced requests pay nothing. This module must not trust or echo
//! an invalid header.

use std::fmt;
use std::sync::OnceLock;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, TraceContextExt as _, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use opentelemetry::{KeyValue, global};

/// The server span of one traced request; [`ServerSpan::finish`] records the outcome.
pub struct ServerSpan {
    span: global::BoxedSpan,
}

/// The tracer, resolved once (the global provider must be installed before the first request).
static TRACER: OnceLock<global::BoxedTracer> = OnceLock::new();

/// The ids of the caller's span, from a valid `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// The trace id (never all zero).
    pub trace_id: [u8; 16],
    /// The caller's span id (never all zero).
    pub span_id: [u8; 8],
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

/// Lower-case hex of a byte string, for logs.
#[derive(Debug, Clone, Copy)]
pub struct Hex<'a>(pub &'a [u8]);

// === impl TraceParent ===

impl TraceParent {
    /// Parses a `traceparent` header value; `None` if it is not valid.
    ///
    /// Version `00` must be exactly 55 characters. A higher version (not `ff`) may carry more
    /// fields after a `-`, which are ignored, as the spec asks of version-00 parsers.
    pub fn parse(value: &str) -> Option<Self> {
        let b = value.as_bytes();
        if b.len() < 55 {
            return None;
        }
        let version = hex_u8(b.get(0..2)?)?;
        if version == 0xff || (version == 0 && b.len() != 55) {
            return None;
        }
        if b.get(2) != Some(&b'-') || b.get(35) != Some(&b'-') || b.get(52) != Some(&b'-') {
            return None;
        }
        if b.len() > 55 && b.get(55) != Some(&b'-') {
            return None;
        }
        let mut trace_id = [0u8; 16];
        for (i, out) in trace_id.iter_mut().enumerate() {
            *out = hex_u8(b.get(3 + 2 * i..5 + 2 * i)?)?;
        }
        let mut span_id = [0u8; 8];
        for (i, out) in span_id.iter_mut().enumerate() {
            *out = hex_u8(b.get(36 + 2 * i..38 + 2 * i)?)?;
        }
        let flags = hex_u8(b.get(53..55)?)?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            flags,
        })
    }

    /// The trace id as 32 lower-case hex digits.
    pub fn trace_id_hex(&self) -> String {
        Hex(&self.trace_id).to_string()
    }

    /// The span id as 16 lower-case hex digits.
    pub fn span_id_hex(&self) -> String {
        Hex(&self.span_id).to_string()
    }
}

// === impl ServerSpan ===

impl ServerSpan {
    /// Starts a `SERVER` span named `allot.allocate` whose parent is the caller's span.
    pub fn start(parent: &TraceParent) -> Self {
        let tracer = TRACER.get_or_init(|| global::tracer("allot-server"));
        let remote = SpanContext::new(
            TraceId::from_bytes(parent.trace_id),
            SpanId::from_bytes(parent.span_id),
            TraceFlags::new(parent.flags),
            true,
            TraceState::NONE,
        );
        let cx = opentelemetry::Context::new().with_remote_span_context(remote);
        let span = tracer
            .span_builder("allot.allocate")
            .with_kind(SpanKind::Server)
            .start_with_context(tracer, &cx);
        Self { span }
    }

    /// This span's ids as a [`TraceParent`]: the server span's own id when an SDK records it,
    /// the caller's otherwise (the no-op tracer propagates the parent).
    pub fn ids(&self, parent: &TraceParent) -> TraceParent {
        let sc = self.span.span_context();
        if sc.is_valid() {
            TraceParent {
                trace_id: sc.trace_id().to_bytes(),
                span_id: sc.span_id().to_bytes(),
                flags: sc.trace_flags().to_u8(),
            }
        } else {
            *parent
        }
    }

    /// Sets `allot.revision` and `allot.allocations` and ends the span.
    pub fn finish(mut self, revision: u64, allocations: usize) {
        if self.span.is_recording() {
            self.span.set_attributes([
                KeyValue::new(
                    "allot.revision",
                    i64::try_from(revision).unwrap_or(i64::MAX),
                ),
                KeyValue::new(
                    "allot.allocations",
                    i64::try_from(allocations).unwrap_or(i64::MAX),
                ),
            ]);
        }
        self.span.end();
    }
}

impl fmt::Debug for ServerSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerSpan")
            .field("span_context", self.span.span_context())
            .finish()
    }
}

// === impl Hex ===

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Two lower-case hex digits (W3C forbids upper case).
fn hex_u8(pair: &[u8]) -> Option<u8> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    match pair {
        [hi, lo] => Some(digit(*hi)? << 4 | digit(*lo)?),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Option<(&str, &str, u8)>) {
        let got = TraceParent::parse(input).map(|t| (t.trace_id_hex(), t.span_id_hex(), t.flags));
        let expected = expected.map(|(t, s, f)| (t.to_owned(), s.to_owned(), f));
        assert_eq!(got, expected, "{input:?}");
    }

    #[test]
    fn parses_valid_and_rejects_the_rest() {
        let t = "4bf92f3577b34da6a3ce929d0e0e4736";
        let s = "00f067aa0ba902b7";
        check(&format!("00-{t}-{s}-01"), Some((t, s, 1)));
        check(&format!("01-{t}-{s}-00-extra"), Some((t, s, 0)));
        check(&format!("00-{t}-{s}-01-extra"), None);
        check(&format!("ff-{t}-{s}-01"), None);
        check(&format!("00-{}-{s}-01", "0".repeat(32)), None);
        check(&format!("00-{t}-{}-01", "0".repeat(16)), None);
        check(&format!("00-{}-{s}-01", t.to_uppercase()), None);
        check(&format!("00_{t}-{s}-01"), None);
        check(&format!("00-{t}-{s}-0"), None);
        check("", None);
        check("00-é-x", None);
        check(&format!("00-{t}-{s}-0é"), None);
    }
}
