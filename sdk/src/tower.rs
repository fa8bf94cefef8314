//! A `tower` layer that puts the trace stamp on outgoing requests (feature `tower`).
//!
//! [`StampLayer`] wraps any `Service<http::Request<B>>`: hyper and reqwest-style HTTP clients,
//! and tonic clients (a tonic channel is a tower service of `http::Request`s, and the
//! extensions of a `tonic::Request` become the `http::Request`'s). For each request it takes
//! the stamp value from, in order:
//!
//! 1. the request's extensions: a [`Stamp`] the caller inserted (per request, e.g. the
//!    [`crate::client::Allocated::stamp`] of the request being served);
//! 2. the layer's default ([`StampLayer::with_default`]), for a client that always acts for
//!    one allocation;
//!
//! and sets the `baggage` header to [`crate::stamp::merge`] of it with the request's existing
//! `baggage` header(s): our `allot` member first, an existing `allot` member replaced, other
//! members kept. A request with neither passes through untouched. No task-locals: the value
//! travels with the request, so it survives spawning, retries and buffering layers.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{HeaderName, HeaderValue};

use crate::stamp;

/// The `baggage` header.
pub const BAGGAGE: HeaderName = HeaderName::from_static("baggage");

/// The stamp value (`1.<rev>.<exp>~<cell>…`, not the `allot=` member) for one outgoing
/// request: insert it into the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Stamp(pub String);

/// Adds the stamp to the `baggage` header of every request; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct StampLayer {
    default: Option<Arc<str>>,
}

/// The service of [`StampLayer`].
#[derive(Debug, Clone)]
pub struct StampService<S> {
    inner: S,
    default: Option<Arc<str>>,
}

/// Sets the `baggage` header of `request` to `stamp_value` merged with the header(s) it already
/// has. Leaves the request alone if the merged value is not a valid header value (a stamp made
/// by [`crate::stamp::stamp`] always is).
pub fn stamp_request<B>(request: &mut http::Request<B>, stamp_value: &str) {
    // One lookup of the header for reading and replacing.
    match request.headers_mut().entry(BAGGAGE) {
        http::header::Entry::Occupied(mut entry) => {
            let merged = stamp::merge(stamp_value, entry.iter().filter_map(|v| v.to_str().ok()));
            if let Ok(value) = HeaderValue::try_from(merged) {
                // Replaces every existing `baggage` line with the merged one.
                entry.insert(value);
            }
        }
        http::header::Entry::Vacant(entry) => {
            if let Ok(value) = HeaderValue::try_from(stamp::merge(stamp_value, [])) {
                entry.insert(value);
            }
        }
    }
}

// === impl StampLayer ===

impl StampLayer {
    /// Stamps requests that carry a [`Stamp`] extension.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also stamps requests without a [`Stamp`] extension, with `stamp_value`.
    pub fn with_default(stamp_value: impl Into<String>) -> Self {
        Self {
            default: Some(Arc::from(stamp_value.into())),
        }
    }
}

impl<S> tower_layer::Layer<S> for StampLayer {
    type Service = StampService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StampService {
            inner,
            default: self.default.clone(),
        }
    }
}

// === impl StampService ===

impl<S> StampService<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> tower_service::Service<http::Request<B>> for StampService<S>
where
    S: tower_service::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if let Some(Stamp(value)) = request.extensions_mut().remove::<Stamp>() {
            stamp_request(&mut request, &value);
        } else if let Some(value) = &self.default {
            stamp_request(&mut request, value);
        }
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use std::future::{Future, Ready, ready};

    use tower_layer::Layer;
    use tower_service::Service;

    use super::*;

    /// Returns the request's `baggage` header(s), joined with `|`.
    struct Echo;

    impl Service<http::Request<()>> for Echo {
        type Response = String;
        type Error = std::convert::Infallible;
        type Future = Ready<Result<String, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<()>) -> Self::Future {
            let all: Vec<&str> = req
                .headers()
                .get_all(BAGGAGE)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect();
            ready(Ok(all.join("|")))
        }
    }

    fn call(layer: &StampLayer, req: http::Request<()>) -> String {
        let fut = layer.layer(Echo).call(req);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut fut = std::pin::pin!(fut);
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(s)) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn check() {
        let req = |stamp: Option<&str>, baggage: &[&str]| {
            let mut b = http::Request::builder().uri("http://downstream/");
            for h in baggage {
                b = b.header("baggage", *h);
            }
            if let Some(s) = stamp {
                b = b.extension(Stamp(s.to_owned()));
            }
            b.body(()).unwrap()
        };
        let plain = StampLayer::new();
        assert_eq!(call(&plain, req(Some("1.4.e~c"), &[])), "allot=1.4.e~c");
        assert_eq!(
            call(
                &plain,
                req(Some("1.4.e~c"), &["userId=a, allot=1.1.forged~x", "k=v"])
            ),
            "allot=1.4.e~c,userId=a,k=v"
        );
        // No stamp, no default: untouched.
        assert_eq!(call(&plain, req(None, &["k=v"])), "k=v");
        let fixed = StampLayer::with_default("1.2.d~x");
        assert_eq!(call(&fixed, req(None, &["k=v"])), "allot=1.2.d~x,k=v");
        // The extension wins over the default.
        assert_eq!(call(&fixed, req(Some("1.3.e~y"), &[])), "allot=1.3.e~y");
        // An unusable stamp leaves the request alone.
        assert_eq!(call(&plain, req(Some("bad\nvalue"), &["k=v"])), "k=v");
    }
}
