//! The `embedded_service` example (sdk/examples) against a real allot server: the frontend
//! allocates with the embedded client following the server, calls downstream through the
//! `StampLayer` stack, and the downstream receives an `allot` baggage member carrying exactly
//! the server's cells for that member (first, with the caller's members kept and a forged
//! `allot` member replaced).

mod grpc_support;

#[allow(dead_code)]
#[path = "../../sdk/examples/embedded_service.rs"]
mod example;

use std::time::Duration;

use allot::{Client, Context};
use grpc_support::{Server, service, store};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

#[tokio::test]
async fn downstream_receives_the_allot_member_with_the_servers_cells() {
    let store = store();
    let server = Server::start(service(&store)).await;
    let allot = Client::builder(server.url()).connect().unwrap();
    assert!(allot.wait_ready(Duration::from_secs(5)).await);

    let seen = example::Seen::default();
    let downstream = example::serve(example::downstream(seen.clone()))
        .await
        .unwrap();
    let frontend = example::serve(example::frontend(
        allot.clone(),
        format!("http://{downstream}"),
    ))
    .await
    .unwrap();

    let http = HttpClient::builder(TokioExecutor::new()).build_http::<axum::body::Body>();
    let svc = service(&store);
    let mut with_cells = 0;
    for i in 0..20 {
        let (country, platform) = [("US", "web"), ("SE", "tv"), ("CA", "ios")][i % 3];
        let url = format!(
            "http://{frontend}/home?member=member-{i}&country={country}&platform={platform}&app_version=5.2.1&device_id=device-{i}"
        );
        let request = axum::http::Request::get(url)
            .header("baggage", "userId=alice,allot=1.9.forged~x")
            .body(axum::body::Body::empty())
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(5), http.request(request))
            .await
            .expect("frontend answers within 5 s")
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value =
            serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes())
                .unwrap();

        // What the server itself says for this member.
        let ctx = Context::with_targeting_key(format!("member-{i}"))
            .with("country", country)
            .with("platform", platform)
            .with("app_version", "5.2.1")
            .with("device_id", format!("device-{i}"));
        let server_stamp = svc.allocate(&ctx, &[], &[], |v| v.stamp.clone()).unwrap();
        assert_eq!(body["stamp"], server_stamp.as_str(), "member-{i}");

        let (cells, header) = seen.lock().unwrap().pop().expect("downstream was called");
        let want = allot::stamp::parse(&server_stamp).unwrap().entries;
        assert_eq!(cells, want, "member-{i}");
        assert_eq!(header, format!("allot={server_stamp},userId=alice"));
        with_cells += usize::from(!cells.is_empty());
    }
    assert!(with_cells > 10, "most members are in some experiment");
    drop(allot);
    server.stop().await;
}
