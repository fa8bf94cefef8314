//! Client tokens (`--client-tokens`) on every evaluation API, through real sockets: native
//! HTTP, OFREP (single and bulk), `allot.v1` (including `WatchConfig`) and flagd v1/v2 gRPC
//! refuse a missing or wrong token (401 / `UNAUTHENTICATED`) and serve a valid one; health,
//! readiness, metrics and reflection stay open; admin routes answer 403 to a client token.
//! No refusal names a flag, a key or a token.

mod http_support;
mod net_support;

use allot_proto::allot::v1::allocator_client::AllocatorClient;
use allot_proto::allot::v1::{AllocateRequest, WatchConfigRequest};
use allot_proto::flagd::evaluation::{v1, v2};
use allot_server::app::Server;
use http_support::CONFIG;
use net_support::{Client, metric, start, try_start};
use serde_json::json;
use tonic::{Code, Request};

const TOKENS: &str = "# fleet A\ntok-alpha-1\n\n# fleet B\n  tok-bravo-2  \n";
const ADMIN: &str = "adm-secret-9";
const BODY: &str = r#"{"context": {"targetingKey": "m-1", "device_id": "d-1"}}"#;

/// Words that must never appear in a refusal: flag keys, experiment and cell ids, tokens.
const SECRETS: &[&str] = &[
    "prefetch",
    "theme",
    "ranker",
    "treatment",
    "hold",
    "tok-alpha",
    "tok-bravo",
    "adm-secret",
    "wrong-token",
];

fn assert_reveals_nothing(what: &str, text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "{what} reveals `{s}`: {text}");
    }
}

async fn server(dir: &std::path::Path) -> Server {
    let tokens = dir.join("tokens.txt");
    std::fs::write(&tokens, TOKENS).unwrap();
    start(
        dir,
        CONFIG,
        &[
            "--client-tokens",
            tokens.to_str().unwrap(),
            "--admin-token",
            ADMIN,
        ],
    )
    .await
}

fn with_token<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut req = Request::new(message);
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    req
}

fn context() -> prost_types::Struct {
    allot_proto::convert::json_map_to_struct(
        json!({"targetingKey": "m-1", "device_id": "d-1"})
            .as_object()
            .unwrap(),
    )
}

#[tokio::test]
async fn http_and_ofrep_need_a_client_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path()).await;
    let http = Client::plain(server.http_addr);

    type Call = (&'static str, &'static str, &'static str, bool);
    let calls: [Call; 4] = [
        ("POST", "/v1/allocate", BODY, false),
        ("GET", "/v1/config", "", false),
        ("POST", "/ofrep/v1/evaluate/flags/prefetch", BODY, true),
        ("POST", "/ofrep/v1/evaluate/flags", BODY, true),
    ];
    let refused: [&[(&str, &str)]; 5] = [
        &[],
        &[("authorization", "Bearer wrong-token")],
        &[("authorization", "Basic tok-alpha-1")],
        &[("authorization", "Bearer tok-alpha")],
        &[("x-api-key", "wrong-token")],
    ];
    for (method, path, body, ofrep) in calls {
        for headers in refused {
            let r = http
                .send(net_support::request(method, path, headers, body))
                .await
                .unwrap();
            assert_eq!(r.status, 401, "{method} {path} {headers:?}: {}", r.text());
            assert_eq!(r.header("www-authenticate").as_deref(), Some("Bearer"));
            assert_reveals_nothing(path, &r.text());
            let json = r.json();
            if ofrep {
                assert_eq!(json["errorCode"], "GENERAL", "{json}");
                assert!(
                    json["errorDetails"]
                        .as_str()
                        .unwrap()
                        .contains("client token")
                );
                assert!(json.get("key").is_none(), "{json}");
                assert_eq!(
                    r.header("access-control-allow-origin").as_deref(),
                    Some("*")
                );
            } else {
                assert_eq!(json["code"], "UNAUTHORIZED", "{json}");
            }
        }
        for headers in [
            &[("authorization", "Bearer tok-alpha-1")][..],
            &[("authorization", "bearer tok-bravo-2")],
            &[("x-api-key", "tok-bravo-2")],
        ] {
            let r = http
                .send(net_support::request(method, path, headers, body))
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{method} {path} {headers:?}: {}", r.text());
        }
    }
    // CORS preflights carry no credentials and must pass.
    let r = http
        .send(net_support::request(
            "OPTIONS",
            "/ofrep/v1/evaluate/flags",
            &[
                ("origin", "https://app.example"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "authorization"),
            ],
            "",
        ))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.header("access-control-allow-origin").is_some());

    // Health, readiness and metrics stay open; refusals are counted.
    let mgmt = Client::plain(server.mgmt_addr);
    assert_eq!(mgmt.get("/healthz", &[]).await.status, 200);
    assert_eq!(mgmt.get("/readyz", &[]).await.status, 200);
    let refusals = metric(
        &mgmt,
        r#"allot_requests_rejected_total{transport="http",reason="unauthenticated"}"#,
    )
    .await;
    assert_eq!(refusals, 20.0);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn grpc_and_flagd_need_a_client_token_and_health_stays_open() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path()).await;
    let ch = net_support::grpc_channel(&server).await;
    let mut native = AllocatorClient::new(ch.clone());
    let mut f1 = v1::service_client::ServiceClient::new(ch.clone());
    let mut f2 = v2::service_client::ServiceClient::new(ch.clone());

    for token in [None, Some("wrong-token"), Some("tok-alpha")] {
        let check = |what: &str, s: tonic::Status| {
            assert_eq!(s.code(), Code::Unauthenticated, "{what} {token:?}: {s:?}");
            assert_reveals_nothing(what, s.message());
        };
        check(
            "Allocate",
            native
                .allocate(with_token(
                    AllocateRequest {
                        context: Some(context()),
                    },
                    token,
                ))
                .await
                .unwrap_err(),
        );
        check(
            "WatchConfig",
            native
                .watch_config(with_token(WatchConfigRequest { known_revision: 0 }, token))
                .await
                .unwrap_err(),
        );
        let v1_req = v1::ResolveBooleanRequest {
            flag_key: "prefetch".into(),
            context: Some(context()),
        };
        check(
            "flagd v1",
            f1.resolve_boolean(with_token(v1_req, token))
                .await
                .unwrap_err(),
        );
        let v2_req = v2::ResolveBooleanRequest {
            flag_key: "prefetch".into(),
            context: Some(context()),
        };
        check(
            "flagd v2",
            f2.resolve_boolean(with_token(v2_req, token))
                .await
                .unwrap_err(),
        );
        check(
            "flagd v2 ResolveAll",
            f2.resolve_all(with_token(
                v2::ResolveAllRequest {
                    context: Some(context()),
                },
                token,
            ))
            .await
            .unwrap_err(),
        );
    }

    let good = Some("tok-bravo-2");
    let reply = native
        .allocate(with_token(
            AllocateRequest {
                context: Some(context()),
            },
            good,
        ))
        .await
        .expect("valid token")
        .into_inner();
    assert!(!reply.allocations.is_empty());
    let mut stream = native
        .watch_config(with_token(WatchConfigRequest { known_revision: 0 }, good))
        .await
        .expect("valid token opens the stream")
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.revision, 1);
    let r1 = f1
        .resolve_boolean(with_token(
            v1::ResolveBooleanRequest {
                flag_key: "prefetch".into(),
                context: Some(context()),
            },
            good,
        ))
        .await
        .expect("flagd v1 with a token");
    assert!(!r1.into_inner().variant.is_empty());
    let r2 = f2
        .resolve_boolean(with_token(
            v2::ResolveBooleanRequest {
                flag_key: "prefetch".into(),
                context: Some(context()),
            },
            good,
        ))
        .await
        .expect("flagd v2 with a token");
    assert!(r2.into_inner().variant.is_some_and(|v| !v.is_empty()));

    // Health and reflection need no token.
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let health = HealthClient::new(ch.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health is open")
        .into_inner();
    assert_eq!(health.status, 1, "SERVING");
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    let mut refl = ServerReflectionClient::new(ch.clone())
        .server_reflection_info(tokio_stream::iter(vec![ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }]))
        .await
        .expect("reflection is open")
        .into_inner();
    assert!(refl.message().await.unwrap().is_some());

    let mgmt = Client::plain(server.mgmt_addr);
    let refusals = metric(
        &mgmt,
        r#"allot_requests_rejected_total{transport="grpc",reason="unauthenticated"}"#,
    )
    .await;
    assert_eq!(refusals, 15.0);
    drop(stream);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn admin_routes_refuse_client_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path()).await;
    let mgmt = Client::plain(server.mgmt_addr);
    let next = CONFIG.replace("{ id: home, salt: home-s }", "{ id: home, salt: home-t }");
    let put = |auth: &'static str| {
        let mut headers = vec![("content-type", "application/yaml")];
        if !auth.is_empty() {
            headers.push(("authorization", auth));
        }
        let mut req = net_support::request("PUT", "/admin/config", &headers, "");
        *req.body_mut() = http_body_util::Full::new(axum::body::Bytes::from(next.clone()));
        req
    };

    // A client token is a valid credential, just not for admin: 403, reads included.
    let r = mgmt.send(put("Bearer tok-alpha-1")).await.unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    assert_reveals_nothing("admin PUT", &r.text());
    let r = mgmt
        .get("/admin/config", &[("authorization", "Bearer tok-alpha-1")])
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_reveals_nothing("admin GET", &r.text());
    // With client tokens on, the config is private: no credentials is 401.
    let r = mgmt.get("/admin/config", &[]).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_reveals_nothing("admin GET", &r.text());
    assert_eq!(mgmt.send(put("")).await.unwrap().status, 401);

    // The admin token works for both, and is no client token.
    let r = mgmt
        .get(
            "/admin/config",
            &[("authorization", &format!("Bearer {ADMIN}"))],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["revision"], 1);
    let r = mgmt.send(put("Bearer adm-secret-9")).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["revision"], 2);
    let http = Client::plain(server.http_addr);
    let r = http
        .post(
            "/v1/allocate",
            &[("authorization", &format!("Bearer {ADMIN}"))],
            BODY,
        )
        .await;
    assert_eq!(r.status, 401);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_token_files_fail_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.txt");
    let arg = file.to_str().unwrap();
    for (text, want) in [
        ("", "no token"),
        ("# only comments\n\n   \n", "no token"),
        ("ok-token\nwith space\n", "line 2"),
    ] {
        std::fs::write(&file, text).unwrap();
        let e = try_start(dir.path(), CONFIG, &["--client-tokens", arg])
            .await
            .unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains("--client-tokens") && e.contains(want), "{e}");
        assert!(!e.contains("with space"), "{e}");
    }
    let missing = dir.path().join("missing.txt");
    let e = try_start(
        dir.path(),
        CONFIG,
        &["--client-tokens", missing.to_str().unwrap()],
    )
    .await
    .unwrap_err();
    assert!(format!("{e:#}").contains("--client-tokens"), "{e:#}");
    std::fs::write(&file, format!("a-token\n{ADMIN}\n")).unwrap();
    let e = try_start(
        dir.path(),
        CONFIG,
        &["--client-tokens", arg, "--admin-token", ADMIN],
    )
    .await
    .unwrap_err();
    assert!(format!("{e:#}").contains("equals --admin-token"), "{e:#}");
}

#[tokio::test]
async fn replicas_follow_a_protected_upstream_with_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let primary = server(dir.path()).await;
    let url = format!("http://{}", primary.grpc_addr);
    let replica = |token: Option<&str>| {
        let mut s = allot_server::settings::Settings::local();
        s.upstream = Some(url.clone());
        s.upstream_token = token.map(str::to_owned);
        allot_server::app::start(s)
    };
    let with = replica(Some("tok-bravo-2")).await.unwrap();
    let without = replica(None).await.unwrap();
    let want = primary.store().load_full().unwrap().content_hash();
    net_support::until("the replica with a token follows", || async {
        with.store().load_full().map(|s| s.content_hash()) == Some(want)
    })
    .await;
    let mgmt = Client::plain(primary.mgmt_addr);
    net_support::until("the replica without one is refused", || async {
        metric(
            &mgmt,
            r#"allot_requests_rejected_total{transport="grpc",reason="unauthenticated"}"#,
        )
        .await
            >= 1.0
    })
    .await;
    assert_eq!(without.store().revision(), None);
    let e = <allot_server::settings::Settings as clap::Parser>::try_parse_from([
        "allot-server",
        "--upstream-token",
        "t",
    ])
    .unwrap_err()
    .to_string();
    assert!(e.contains("--upstream"), "{e}");
    for s in [with, without, primary] {
        s.shutdown().await.unwrap();
    }
}
