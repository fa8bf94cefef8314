//! A service that embeds the allot engine and stamps its outgoing calls.
//!
//! Two axum services on loopback ports:
//! - **frontend** (`GET /home?member=..&country=..&platform=..`): allocates the member with an
//!   embedded [`allot::Client`] (no network hop: the config is followed in the background),
//!   then calls the downstream service through a tower client stack with
//!   [`allot::tower::StampLayer`], which puts the allocation's stamp into the `baggage` header
//!   (ours first; the caller's members kept, a forged `allot` member replaced).
//! - **downstream** (`GET /recommendations`): reads the `allot` member of its `baggage` and logs
//!   the experiment cells it sees, as a service attributing its work to experiments would.
//!
//! ```text
//! cargo run -p allot --example embedded_service --features client,tower                       # bootstrap config only
//! cargo run -p allot --example embedded_service --features client,tower -- http://127.0.0.1:8013   # follow a server
//! ```
//!
//! It makes one demo request and exits; pass `--serve` after the URL to keep serving.
//! `server/tests/sdk_client_example.rs` runs these same routers against a real allot server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use allot::tower::{Stamp, StampLayer};
use allot::{Client, Context};
use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::routing::get;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tower::{ServiceBuilder, ServiceExt};

/// Used until the server answers (and as the whole config when no server is given).
const BOOTSTRAP: &str = r#"
layers: [{ id: home }, { id: search }]
experiments:
  - id: artwork
    layer: home
    ranges: ["0..10000"]
    cells:
      - { id: control, flags: { art: classic } }
      - { id: bold, flags: { art: bold } }
  - id: ranker
    layer: search
    ranges: ["0..10000"]
    cells:
      - { id: a, flags: { ranker: a } }
      - { id: b, flags: { ranker: b } }
flags:
  - { key: art, type: string, variants: { classic: classic, bold: bold }, default: classic }
  - { key: ranker, type: string, variants: { a: alpha, b: beta }, default: a }
"#;

/// What the downstream service saw: per request, the (experiment, cell) pairs of its `allot`
/// baggage member and the whole `baggage` header.
pub type Seen = Arc<Mutex<Vec<(Vec<(String, String)>, String)>>>;

/// The downstream service.
pub fn downstream(seen: Seen) -> Router {
    Router::new()
        .route("/recommendations", get(recommendations))
        .with_state(seen)
}

async fn recommendations(State(seen): State<Seen>, headers: HeaderMap) -> axum::Json<Value> {
    let baggage: Vec<&str> = headers
        .get_all("baggage")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let baggage = baggage.join(",");
    let cells: Vec<(String, String)> = baggage
        .split(',')
        .filter_map(|m| m.trim().strip_prefix("allot="))
        .filter_map(allot::stamp::parse)
        .flat_map(|s| s.entries)
        .collect();
    let shown: Vec<String> = cells.iter().map(|(e, c)| format!("{e}={c}")).collect();
    println!(
        "downstream: experiment cells in baggage: {}",
        shown.join(" ")
    );
    seen.lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((cells.clone(), baggage));
    axum::Json(json!({ "cells": shown }))
}

/// The frontend's state: the embedded client, an HTTP client, and where downstream is.
#[derive(Clone)]
struct Frontend {
    allot: Client,
    http: HttpClient<HttpConnector, Body>,
    downstream: String,
}

/// The frontend service, calling `downstream_url` (e.g. `http://127.0.0.1:3001`).
pub fn frontend(allot: Client, downstream_url: String) -> Router {
    let http = HttpClient::builder(TokioExecutor::new()).build_http();
    Router::new()
        .route("/home", get(home))
        .with_state(Frontend {
            allot,
            http,
            downstream: downstream_url,
        })
}

async fn home(
    State(app): State<Frontend>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<axum::Json<Value>, (StatusCode, String)> {
    let member = query.get("member").cloned().unwrap_or_default();
    let mut ctx = Context::with_targeting_key(member);
    for key in ["country", "platform", "app_version", "device_id"] {
        if let Some(v) = query.get(key) {
            ctx.insert(key, v.as_str());
        }
    }
    // In process, from the snapshot the client holds: no network hop.
    let allocated = app
        .allot
        .allocate(&ctx)
        .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;

    // The outgoing call: the stamp rides in the request's extensions; the layer writes it
    // into `baggage`, merged with the caller's baggage we forward.
    let mut request = Request::get(format!("{}/recommendations", app.downstream))
        .extension(Stamp(allocated.stamp.clone()));
    for value in headers.get_all("baggage") {
        request = request.header("baggage", value);
    }
    let request = request
        .body(Body::empty())
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let client = ServiceBuilder::new()
        .layer(StampLayer::new())
        .service(app.http.clone());
    let response = client
        .oneshot(request)
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?;
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?
        .to_bytes();
    let downstream: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Ok(axum::Json(json!({
        "revision": allocated.revision,
        "stamp": allocated.stamp,
        "downstream": downstream,
    })))
}

/// Serves `router` on `127.0.0.1:0`; returns its address.
pub async fn serve(router: Router) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(addr)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let server = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .cloned()
        // Nothing listens on the discard port: the client serves the bootstrap.
        .unwrap_or_else(|| "http://127.0.0.1:9".to_owned());
    let allot = Client::builder(&server)
        .bootstrap_str(BOOTSTRAP)
        .connect()?;
    // With a server, give it a moment to replace the bootstrap.
    allot.wait_ready(Duration::from_secs(1)).await;
    println!(
        "allot client: following {server}, revision {:?}",
        allot.revision()
    );

    let seen = Seen::default();
    let downstream_addr = serve(downstream(seen)).await?;
    let frontend_addr = serve(frontend(allot, format!("http://{downstream_addr}"))).await?;
    println!(
        "frontend on http://{frontend_addr}/home?member=m-1, downstream on http://{downstream_addr}"
    );

    let demo = format!("http://{frontend_addr}/home?member=m-123&country=SE&platform=web");
    let http: HttpClient<HttpConnector, Body> =
        HttpClient::builder(TokioExecutor::new()).build_http();
    let response = http
        .request(
            Request::get(demo)
                .header("baggage", "userId=alice")
                .body(Body::empty())?,
        )
        .await?;
    let body = response.into_body().collect().await?.to_bytes();
    println!("frontend answered: {}", String::from_utf8_lossy(&body));

    if args.iter().any(|a| a == "--serve") {
        tokio::signal::ctrl_c().await?;
    }
    Ok(())
}
