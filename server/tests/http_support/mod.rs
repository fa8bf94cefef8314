//! Helpers shared by the HTTP, admin, reload and log tests: stores, services, one-shot
//! requests against a router, and a tiny client for real sockets.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use allot::Config;
use allot_server::service::{Limits, Service};
use allot_server::state::ConfigStore;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

/// A config with two layers (one hashing `device_id`), a holdout, a rollout flag and a
/// disabled flag; every unit is in an experiment of `home` unless held out.
pub const CONFIG: &str = r#"
layers:
  - { id: home, salt: home-s }
  - { id: device, unit: device_id, buckets: 100 }
experiments:
  - id: prefetch
    layer: home
    ranges: ["0..10000"]
    cells:
      - { id: control, weight: 1, flags: { prefetch: "off" } }
      - { id: treatment, weight: 3, flags: { prefetch: "on" } }
  - id: theme
    layer: device
    ranges: ["0..100"]
    cells:
      - { id: dark, flags: { theme: dark } }
      - { id: light, flags: { theme: light } }
holdouts:
  - { id: hold, ranges: ["0..500"], layers: [home] }
flags:
  - { key: prefetch, type: bool, variants: { "on": true, "off": false }, default: "off" }
  - { key: theme, type: string, variants: { dark: d, light: l }, default: light }
  - key: ranker
    type: int
    variants: { a: 1, b: 2 }
    default: a
    rules:
      - { when: { country: SE }, variant: b }
      - { rollout: { split: [ { variant: a, weight: 1 }, { variant: b, weight: 1 } ] } }
  - { key: old, type: bool, enabled: false, variants: { "y": true, "n": false }, default: "n" }
"#;

/// A store serving `yaml` as revision 1.
pub fn store_with(yaml: &str) -> Arc<ConfigStore> {
    let store = Arc::new(ConfigStore::new());
    store
        .apply(&Config::parse(yaml).unwrap(), None, None)
        .unwrap();
    store
}

/// A service over `store` with default limits.
pub fn service(store: &Arc<ConfigStore>) -> Service {
    Service::new(store.clone(), Limits::default())
}

/// A response, decoded.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON (panics with the body text if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    /// The `code` of a JSON error body.
    pub fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or_default().to_owned()
    }

    /// A header as a string.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }
}

/// Sends one request through `router` without a socket.
pub async fn send(router: &Router, req: Request<Body>) -> Reply {
    let res = router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes().to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

/// `POST /v1/allocate` with a JSON body.
pub fn allocate_req(body: impl Into<Body>) -> Request<Body> {
    Request::post("/v1/allocate")
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap()
}

/// Polls `f` every 20 ms until it returns `Some`, for at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
