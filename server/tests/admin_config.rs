//! `admin::router().oneshot()` tests of the management port: health, readiness, metrics, and
//! `GET|PUT /admin/config` with its token, `If-Match`, dry-run and rejection rules.

mod http_support;

use std::sync::Arc;

use allot_server::admin::{AdminState, router};
use allot_server::metrics::Metrics;
use allot_server::state::ConfigStore;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_support::{CONFIG, Reply, send, service, store_with};

const TOKEN: &str = "s3cret-token";

fn admin(store: &Arc<ConfigStore>, token: Option<&str>) -> Router {
    let metrics = Metrics::new();
    router(AdminState {
        service: service(store).with_metrics(metrics.clone()),
        token: token.map(Arc::from),
        metrics,
        private_reads: false,
    })
}

fn put(body: &str, auth: Option<&str>, if_match: Option<&str>, query: &str) -> Request<Body> {
    let mut b = Request::put(format!("/admin/config{query}"));
    if let Some(a) = auth {
        b = b.header("authorization", a);
    }
    if let Some(m) = if_match {
        b = b.header("if-match", m);
    }
    b.body(Body::from(body.to_owned())).unwrap()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

const NEXT: &str = "layers: [{ id: home }, { id: other }]\n";

fn assert_error(reply: &Reply, status: StatusCode, code: &str) {
    assert_eq!(
        reply.status,
        status,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.code(), code);
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let empty = Arc::new(ConfigStore::new());
    let app = admin(&empty, Some(TOKEN));
    let get = |p: &str| Request::get(p).body(Body::empty()).unwrap();
    assert_eq!(send(&app, get("/healthz")).await.status, StatusCode::OK);
    assert_error(
        &send(&app, get("/readyz")).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "NOT_READY",
    );
    let store = store_with(CONFIG);
    let app = admin(&store, Some(TOKEN));
    assert_eq!(send(&app, get("/readyz")).await.status, StatusCode::OK);
    let m = send(&app, get("/metrics")).await;
    assert_eq!(m.status, StatusCode::OK);
    assert!(m.header("content-type").unwrap().contains("openmetrics"));
    let text = String::from_utf8(m.body).unwrap();
    assert!(text.contains("allot_config_revision 1"), "{text}");
    // The readyz call above was counted by the middleware.
    assert!(
        text.contains(
            r#"allot_requests_total{transport="http",endpoint="/readyz",status="200"} 1"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn writes_need_the_right_token_and_change_nothing_otherwise() {
    let store = store_with(CONFIG);
    let before = store.load_full().unwrap();

    // No token configured: every write refused, saying why.
    let app = admin(&store, None);
    let r = send(&app, put(NEXT, Some(&bearer(TOKEN)), None, "")).await;
    assert_error(&r, StatusCode::FORBIDDEN, "ADMIN_DISABLED");
    assert!(r.json()["message"].as_str().unwrap().contains("disabled"));

    let app = admin(&store, Some(TOKEN));
    let r = send(&app, put(NEXT, None, None, "")).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    assert_eq!(r.header("www-authenticate").as_deref(), Some("Bearer"));
    for malformed in ["Basic abc", "Bearer", "Bearer   ", TOKEN] {
        let r = send(&app, put(NEXT, Some(malformed), None, "")).await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    }
    for wrong in ["s3cret-tokeN", "s3cret-token-longer", "x"] {
        let r = send(&app, put(NEXT, Some(&bearer(wrong)), None, "")).await;
        assert_error(&r, StatusCode::FORBIDDEN, "FORBIDDEN");
    }
    // A dry run needs the token too.
    let r = send(&app, put(NEXT, None, None, "?dry_run=true")).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");

    let now = store.load_full().unwrap();
    assert!(Arc::ptr_eq(&before, &now), "nothing changed");
}

#[tokio::test]
async fn if_match_dry_run_rejection_and_success() {
    let store = store_with(CONFIG);
    let app = admin(&store, Some(TOKEN));
    let auth = bearer(TOKEN);

    // If-Match on another revision: 412, nothing changes.
    for stale in ["7", "\"7\"", "W/\"7\""] {
        let r = send(&app, put(NEXT, Some(&auth), Some(stale), "")).await;
        assert_error(&r, StatusCode::PRECONDITION_FAILED, "REVISION_MISMATCH");
    }
    let r = send(&app, put(NEXT, Some(&auth), Some("abc"), "")).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "PARSE_ERROR");
    assert_eq!(store.revision(), Some(1));

    // Dry run: validates, reports, changes nothing.
    let r = send(&app, put(NEXT, Some(&auth), None, "?dry_run=true")).await;
    assert_eq!(r.status, StatusCode::OK);
    let body = r.json();
    assert_eq!(body["valid"], true);
    assert_eq!(body["changed"], true);
    assert_eq!(body["serving_revision"], 1);
    assert_eq!(store.revision(), Some(1));

    // A config with several errors: 422 listing every one with its path; old one serves.
    let bad = r#"
layers: [{ id: home }, { id: home }]
experiments:
  - { id: e, layer: nowhere, ranges: ["0..10"], cells: [{ id: c, weight: 0 }] }
flags:
  - { key: f, type: bool, variants: { a: 1 }, default: b }
"#;
    for query in ["", "?dry_run=true"] {
        let r = send(&app, put(bad, Some(&auth), None, query)).await;
        assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "INVALID_CONFIG");
        let body = r.json();
        let errors = body["errors"].as_array().unwrap();
        let paths: Vec<&str> = errors.iter().map(|e| e["path"].as_str().unwrap()).collect();
        for expected in ["layers[1].id", "experiments[0].layer", "flags[0].default"] {
            assert!(paths.contains(&expected), "{expected} in {paths:?}");
        }
        assert!(errors.len() >= 4, "{errors:?}");
        assert!(
            errors
                .iter()
                .all(|e| !e["message"].as_str().unwrap().is_empty())
        );
    }
    // A document that does not even parse: 422 with the parser's path.
    let r = send(
        &app,
        put("layers: [{ id: 5, bogus: 1 }]", Some(&auth), None, ""),
    )
    .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "INVALID_CONFIG");
    assert_eq!(store.revision(), Some(1));

    // Success with the right If-Match (quoted), then the same document again: unchanged.
    let r = send(&app, put(NEXT, Some(&auth), Some("\"1\""), "")).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    let body = r.json();
    assert_eq!(body["revision"], 2);
    assert_eq!(body["changed"], true);
    let snap = store.load_full().unwrap();
    assert_eq!(snap.revision(), 2);
    assert_eq!(
        body["content_hash"],
        format!("{:016x}", snap.content_hash())
    );
    let r = send(&app, put(NEXT, Some(&auth), Some("2"), "")).await;
    assert_eq!(r.json()["changed"], false);
    assert_eq!(r.json()["revision"], 2);

    // JSON bodies work as well; GET returns what serves, with its ETag usable as If-Match.
    let json = r#"{"layers": [{"id": "j"}]}"#;
    let req = Request::put("/admin/config")
        .header("authorization", &auth)
        .header("content-type", "application/json")
        .body(Body::from(json))
        .unwrap();
    assert_eq!(send(&app, req).await.json()["revision"], 3);
    let g = send(
        &app,
        Request::get("/admin/config").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(g.json()["config"]["layers"][0]["id"], "j");
    let etag = g.header("etag").unwrap();
    let r = send(&app, put(NEXT, Some(&auth), Some(&etag), "")).await;
    assert_eq!(r.json()["revision"], 4);

    let m = send(&app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    let text = String::from_utf8(m.body).unwrap();
    assert!(
        text.contains(r#"allot_config_reloads_total{source="admin",result="failure"} 2"#),
        "{text}"
    );
}

/// Every evaluation route is counted under its route label and status, with its latency, by
/// the router's own `TrackLayer`; unknown routes are not counted under a route of theirs.
#[tokio::test]
async fn evaluation_requests_are_counted_by_route_and_status() {
    let store = store_with(CONFIG);
    let metrics = Metrics::new();
    let svc = service(&store).with_metrics(metrics.clone());
    let app = allot_server::http::router(svc.clone());
    let post = |path: &str, body: &str| {
        Request::post(path)
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap()
    };
    let ok = r#"{"context":{"targetingKey":"member-1"}}"#;
    for _ in 0..3 {
        assert_eq!(
            send(&app, post("/v1/allocate", ok)).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(
        send(&app, post("/v1/allocate", "{")).await.status,
        StatusCode::BAD_REQUEST
    );
    let missing = send(&app, post("/ofrep/v1/evaluate/flags/no-such-flag", ok)).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(
        send(&app, post("/ofrep/v1/evaluate/flags", ok))
            .await
            .status,
        StatusCode::OK
    );

    let admin = router(AdminState {
        service: svc,
        token: None,
        metrics,
        private_reads: false,
    });
    let text = String::from_utf8(
        send(
            &admin,
            Request::get("/metrics").body(Body::empty()).unwrap(),
        )
        .await
        .body,
    )
    .unwrap();
    for line in [
        r#"allot_requests_total{transport="http",endpoint="/v1/allocate",status="200"} 3"#,
        r#"allot_requests_total{transport="http",endpoint="/v1/allocate",status="400"} 1"#,
        r#"allot_requests_total{transport="http",endpoint="/ofrep/v1/evaluate/flags/{key}",status="404"} 1"#,
        r#"allot_requests_total{transport="http",endpoint="/ofrep/v1/evaluate/flags",status="200"} 1"#,
    ] {
        assert!(text.contains(line), "missing `{line}` in\n{text}");
    }
    let latency_count = text
        .lines()
        .find(|l| {
            l.starts_with("allot_request_duration_seconds_count")
                && l.contains(r#"endpoint="/v1/allocate""#)
                && l.contains(r#"status="200""#)
        })
        .unwrap_or_else(|| panic!("no latency histogram for /v1/allocate in\n{text}"));
    assert!(latency_count.ends_with(" 3"), "{latency_count}");
}
