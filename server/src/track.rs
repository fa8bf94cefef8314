//! Request metrics for the axum routers: counts each request and its latency under its route
//! and status, either as a `route_layer` (the label from the matched path) or around one
//! endpoint's service ([`TrackLayer::route`], the label fixed when the router is built).
//!
//! Hand-written rather than `axum::middleware::from_fn`: that boxes the response future and
//! clones the boxed inner route on every request (several allocations per call); this layer
//! adds none. The route label is a `&'static str` ([`endpoint_label`]), so a request never
//! allocates a label either. Wrapping the endpoint service (`post_service(..)`) rather than
//! using `route_layer` also saves axum's boxed route level per request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::MatchedPath;
use axum::http::Request;
use axum::response::Response;
use pin_project_lite::pin_project;

use crate::metrics::{Metrics, Transport};

/// Records `allot_requests_total` and `allot_request_duration_seconds` for every request of
/// the routes it wraps. Apply with `Router::route_layer`, so the matched path is known.
#[derive(Debug, Clone, Default)]
pub struct TrackLayer {
    metrics: Option<Arc<Metrics>>,
    /// The route's label, when known up front; else the matched path's.
    label: Option<&'static str>,
}

/// The service of [`TrackLayer`].
#[derive(Debug, Clone)]
pub struct Track<S> {
    inner: S,
    metrics: Option<Arc<Metrics>>,
    label: Option<&'static str>,
}

pin_project! {
    /// The response future of [`Track`]: the inner future, and what to record when it ends.
    pub struct TrackFuture<F> {
        #[pin]
        inner: F,
        probe: Option<(Arc<Metrics>, &'static str, Instant)>,
    }
}

// === impl TrackLayer ===

impl TrackLayer {
    /// Records into `metrics`; with `None`, the layer passes requests through untouched.
    pub fn new(metrics: Option<&Arc<Metrics>>) -> Self {
        Self {
            metrics: metrics.cloned(),
            label: None,
        }
    }

    /// Records into `metrics` under the route `label` ([`endpoint_label`]'s spelling): for
    /// wrapping one endpoint's service, where no `MatchedPath` lookup is needed.
    pub fn route(metrics: Option<&Arc<Metrics>>, label: &'static str) -> Self {
        Self {
            metrics: metrics.cloned(),
            label: Some(label),
        }
    }
}

impl<S> tower::Layer<S> for TrackLayer {
    type Service = Track<S>;

    fn layer(&self, inner: S) -> Track<S> {
        Track {
            inner,
            metrics: self.metrics.clone(),
            label: self.label,
        }
    }
}

// === impl Track ===

impl<S, B> tower::Service<Request<B>> for Track<S>
where
    S: tower::Service<Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = TrackFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let probe = self.metrics.as_ref().map(|m| {
            let endpoint = self
                .label
                .unwrap_or_else(|| endpoint_label(req.extensions().get::<MatchedPath>()));
            (m.clone(), endpoint, Instant::now())
        });
        TrackFuture {
            inner: self.inner.call(req),
            probe,
        }
    }
}

impl<F, E> Future for TrackFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let (Some((metrics, endpoint, start)), Ok(res)) = (this.probe.take(), &result) {
            metrics.observe_request(
                Transport::Http,
                endpoint,
                res.status().as_u16(),
                start.elapsed(),
            );
        }
        Poll::Ready(result)
    }
}

/// The metrics label of a matched route: the known routes of both HTTP routers, else `other`.
pub fn endpoint_label(path: Option<&MatchedPath>) -> &'static str {
    match path.map(MatchedPath::as_str) {
        Some("/v1/allocate") => "/v1/allocate",
        Some("/v1/config") => "/v1/config",
        Some(crate::ofrep::SINGLE_ROUTE) => crate::ofrep::SINGLE_ROUTE,
        Some(crate::ofrep::BULK_ROUTE) => crate::ofrep::BULK_ROUTE,
        Some("/admin/config") => "/admin/config",
        Some("/healthz") => "/healthz",
        Some("/readyz") => "/readyz",
        Some("/metrics") => "/metrics",
        _ => "other",
    }
}
