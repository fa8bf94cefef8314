//! The OpenFeature Rust SDK against the real server (in process, real sockets on
//! `127.0.0.1:0`): the third-party `open-feature-ofrep` provider over OFREP, and allot's own
//! embedded provider (`allot::openfeature::Provider`) following the server with an
//! `allot::Client`. For every type of the demo config and many units both equal the native
//! `POST /v1/allocate` answer; the embedded provider follows an admin PUT; error paths reach
//! the OpenFeature client as error codes.
//!
//! `open-feature-ofrep` 0.1.2 reads only `value` and `variant` of a success body (its reason is
//! always `STATIC`, its metadata empty), maps every HTTP 400 to `INVALID_CONTEXT` whatever the
//! body's `errorCode`, and reports a value of another type as `PARSE_ERROR` (OFREP requests
//! carry no type, so a type check is the client's). The tests pin that behaviour and check that
//! the wire body carries the precise OFREP code, which spec-following providers (Python, Node)
//! surface; see the README's OpenFeature section.

use std::time::Duration;

use allot_server::app::{self, Server};
use allot_server::settings::Settings;
use open_feature::{
    Client, EvaluationContext, EvaluationErrorCode, EvaluationReason, EvaluationResult,
    FlagMetadataValue, OpenFeature, StructValue,
};
use open_feature_ofrep::{OfrepOptions, OfrepProvider};
use serde_json::{Value, json};

const TOKEN: &str = "openfeature-token";
const DEMO: &str = include_str!("../src/demo.yaml");

/// (flag key, OpenFeature type) for every type of the demo config, as in the Python e2e.
const FLAGS: &[(&str, Kind)] = &[
    ("prefetch", Kind::Bool),
    ("search.new-ranker", Kind::Bool),
    ("legacy-player", Kind::Bool),
    ("artwork-style", Kind::String),
    ("tv-theme", Kind::String),
    ("row-count", Kind::Int),
    ("checkout.retry-limit", Kind::Int),
    ("buffer-ratio", Kind::Float),
    ("discount-rate", Kind::Float),
    ("abr", Kind::Object),
];

#[derive(Debug, Clone, Copy)]
enum Kind {
    Bool,
    String,
    Int,
    Float,
    Object,
}

/// One OpenFeature answer, reduced to JSON for comparison with the native one.
#[derive(Debug)]
struct Answer {
    value: Value,
    variant: Option<String>,
    reason: Option<EvaluationReason>,
    metadata: Vec<(String, FlagMetadataValue)>,
}

async fn start() -> Server {
    let mut settings = Settings::local();
    settings.admin_token = Some(TOKEN.to_owned());
    app::start(settings).await.unwrap()
}

fn http_url(server: &Server) -> String {
    format!("http://{}", server.http_addr)
}

async fn post(url: String, body: Value) -> (u16, Value) {
    let res = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let bytes = res.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The native `/v1/allocate` answer for `ctx`.
async fn native(server: &Server, ctx: &Value) -> Value {
    let (status, body) = post(
        format!("{}/v1/allocate", http_url(server)),
        json!({ "context": ctx }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn ofrep_client(server: &Server, domain: &str) -> Client {
    let provider = OfrepProvider::new(OfrepOptions {
        base_url: http_url(server),
        connect_timeout: Duration::from_secs(5),
        ..Default::default()
    })
    .await
    .unwrap();
    named_client(domain, provider).await
}

async fn named_client<P: open_feature::provider::FeatureProvider>(domain: &str, p: P) -> Client {
    let mut api = OpenFeature::singleton_mut().await;
    api.set_named_provider(domain, p).await;
    api.create_named_client(domain)
}

/// The embedded provider over an `allot::Client` following `server` (gRPC `WatchConfig`).
async fn embedded_client(server: &Server, domain: &str) -> (allot::Client, Client) {
    let follower = allot::Client::builder(format!("http://{}", server.grpc_addr))
        .http(http_url(server))
        .connect()
        .unwrap();
    assert!(follower.wait_ready(Duration::from_secs(10)).await);
    let provider = allot::openfeature::Provider::from_client(follower.clone());
    (follower, named_client(domain, provider).await)
}

/// Units and attributes reaching every kind of decision in the demo config (the Python e2e's).
fn contexts() -> Vec<Value> {
    (0..12)
        .map(|i| {
            let country = ["US", "SE", "CA", "DE"][i % 4];
            let mut ctx = json!({ "targetingKey": format!("m-{i}"), "country": country });
            if i % 3 == 0 {
                ctx["platform"] = json!("tv");
                ctx["app_version"] = json!("5.1.0");
                ctx["device_id"] = json!(format!("d-{i}"));
            }
            if i % 4 == 1 {
                ctx["tenure_months"] = json!(30);
            }
            ctx
        })
        .collect()
}

/// A JSON context as an OpenFeature one.
fn of_context(ctx: &Value) -> EvaluationContext {
    let mut out = EvaluationContext::default();
    for (k, v) in ctx.as_object().unwrap() {
        match v {
            Value::String(s) if k == "targetingKey" => out.targeting_key = Some(s.clone()),
            Value::String(s) => out.add_custom_field(k.as_str(), s.as_str()),
            Value::Number(n) => out.add_custom_field(k.as_str(), n.as_i64().unwrap()),
            other => panic!("unexpected context value {other}"),
        }
    }
    out
}

/// Evaluates `key` as `kind` through the OpenFeature client.
async fn evaluate(
    client: &Client,
    key: &str,
    kind: Kind,
    ctx: &EvaluationContext,
) -> EvaluationResult<Answer> {
    macro_rules! answer {
        ($d:expr, $value:expr) => {{
            let d = $d;
            let mut metadata: Vec<_> = d.flag_metadata.values.clone().into_iter().collect();
            metadata.sort_by(|a, b| a.0.cmp(&b.0));
            Answer {
                value: $value(&d.value),
                variant: d.variant.clone(),
                reason: d.reason.clone(),
                metadata,
            }
        }};
    }
    Ok(match kind {
        Kind::Bool => answer!(
            client.get_bool_details(key, Some(ctx), None).await?,
            |v: &bool| json!(v)
        ),
        Kind::String => answer!(
            client.get_string_details(key, Some(ctx), None).await?,
            |v: &String| json!(v)
        ),
        Kind::Int => answer!(
            client.get_int_details(key, Some(ctx), None).await?,
            |v: &i64| json!(v)
        ),
        Kind::Float => answer!(
            client.get_float_details(key, Some(ctx), None).await?,
            |v: &f64| json!(v)
        ),
        Kind::Object => answer!(
            client
                .get_struct_details::<StructValue>(key, Some(ctx), None)
                .await?,
            allot::openfeature::struct_to_json
        ),
    })
}

fn reason_str(r: &Option<EvaluationReason>) -> String {
    r.as_ref().map(ToString::to_string).unwrap_or_default()
}

/// The OpenFeature metadata the native flag entry `want` corresponds to.
fn expected_metadata(want: &Value, revision: u64) -> Vec<(String, FlagMetadataValue)> {
    let mut out = Vec::new();
    for k in ["cell", "experiment", "layer"] {
        if let Some(v) = want.get(k) {
            out.push((
                k.to_owned(),
                FlagMetadataValue::String(v.as_str().unwrap().to_owned()),
            ));
        }
    }
    out.push((
        "revision".to_owned(),
        FlagMetadataValue::Int(revision as i64),
    ));
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_for_several_units_equals_native_allocate() {
    let server = start().await;
    let ofrep = ofrep_client(&server, "ofrep-parity").await;
    let (_follower, embedded) = embedded_client(&server, "embedded-parity").await;
    let mut reasons = std::collections::BTreeSet::new();
    for ctx in contexts() {
        let answer = native(&server, &ctx).await;
        let revision = answer["revision"].as_u64().unwrap();
        let of = of_context(&ctx);
        for &(key, kind) in FLAGS {
            let want = &answer["flags"][key];
            let reason = want["reason"].as_str().unwrap();
            reasons.insert(reason.to_owned());

            // The third-party OFREP provider: value and variant (all it reads).
            let got = evaluate(&ofrep, key, kind, &of).await.unwrap();
            assert_eq!(got.value, want["value"], "ofrep {key} {ctx}");
            assert_eq!(
                got.variant.as_deref(),
                want["variant"].as_str(),
                "ofrep {key}"
            );

            // allot's embedded provider: every field.
            let got = evaluate(&embedded, key, kind, &of).await.unwrap();
            assert_eq!(got.value, want["value"], "embedded {key} {ctx}");
            assert_eq!(
                got.variant.as_deref(),
                want["variant"].as_str(),
                "embedded {key}"
            );
            assert_eq!(reason_str(&got.reason), reason, "embedded {key}");
            assert_eq!(
                got.metadata,
                expected_metadata(want, revision),
                "embedded {key}"
            );
        }
        // Integer flags answer float requests too, on both.
        let want = answer["flags"]["row-count"]["value"].as_f64();
        for client in [&ofrep, &embedded] {
            let got = client
                .get_float_details("row-count", Some(&of), None)
                .await
                .unwrap();
            assert_eq!(Some(got.value), want);
        }
    }
    // The units reach every decision kind, so the comparison covers each.
    let all = ["DEFAULT", "DISABLED", "SPLIT", "STATIC", "TARGETING_MATCH"];
    assert_eq!(reasons, all.iter().map(|s| s.to_string()).collect());
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_paths_reach_the_client_as_error_codes() {
    let server = start().await;
    let ofrep = ofrep_client(&server, "ofrep-errors").await;
    let (_follower, embedded) = embedded_client(&server, "embedded-errors").await;
    let single = |key: &str| format!("{}/ofrep/v1/evaluate/flags/{key}", http_url(&server));
    let m1 = EvaluationContext::default().with_targeting_key("m-1");
    let no_key = EvaluationContext::default().with_custom_field("country", "DE");

    // Unknown flag: FLAG_NOT_FOUND on both.
    for client in [&ofrep, &embedded] {
        let err = evaluate(client, "no-such-flag", Kind::Bool, &m1)
            .await
            .unwrap_err();
        assert_eq!(err.code, EvaluationErrorCode::FlagNotFound);
    }
    let (status, body) = post(
        single("no-such-flag"),
        json!({"context": {"targetingKey": "m-1"}}),
    )
    .await;
    assert_eq!(
        (status, body["errorCode"].as_str()),
        (404, Some("FLAG_NOT_FOUND"))
    );

    // Wrong type: TYPE_MISMATCH from the embedded provider; the OFREP crate reports the
    // value it cannot convert as PARSE_ERROR.
    for (key, kind) in [
        ("artwork-style", Kind::Bool),
        ("buffer-ratio", Kind::Int),
        ("abr", Kind::String),
    ] {
        let err = evaluate(&embedded, key, kind, &m1).await.unwrap_err();
        assert_eq!(err.code, EvaluationErrorCode::TypeMismatch, "{key}");
        let err = evaluate(&ofrep, key, kind, &m1).await.unwrap_err();
        assert_eq!(err.code, EvaluationErrorCode::ParseError, "{key}");
    }

    // A rollout without its unit: TARGETING_KEY_MISSING from the embedded provider and on
    // the OFREP wire (HTTP 400), which the OFREP crate reports as INVALID_CONTEXT.
    let err = evaluate(&embedded, "search.new-ranker", Kind::Bool, &no_key)
        .await
        .unwrap_err();
    assert_eq!(err.code, EvaluationErrorCode::TargetingKeyMissing);
    let err = evaluate(&ofrep, "search.new-ranker", Kind::Bool, &no_key)
        .await
        .unwrap_err();
    assert_eq!(err.code, EvaluationErrorCode::InvalidContext);
    let (status, body) = post(
        single("search.new-ranker"),
        json!({"context": {"country": "DE"}}),
    )
    .await;
    assert_eq!(
        (status, body["errorCode"].as_str()),
        (400, Some("TARGETING_KEY_MISSING"))
    );

    // Flags decided without a unit need no targeting key, on both.
    let se = EvaluationContext::default().with_custom_field("country", "SE");
    for client in [&ofrep, &embedded] {
        let got = evaluate(client, "search.new-ranker", Kind::Bool, &se)
            .await
            .unwrap();
        assert_eq!(got.value, json!(true));
        let got = evaluate(
            client,
            "checkout.retry-limit",
            Kind::Int,
            &EvaluationContext::default(),
        )
        .await
        .unwrap();
        assert_eq!(got.value, json!(3));
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_provider_follows_an_admin_put() {
    let server = start().await;
    let (follower, embedded) = embedded_client(&server, "embedded-follow").await;
    let ofrep = ofrep_client(&server, "ofrep-follow").await;
    let m1 = EvaluationContext::default().with_targeting_key("m-1");
    let before = follower.revision().unwrap();
    for client in [&embedded, &ofrep] {
        let got = client
            .get_int_value("checkout.retry-limit", Some(&m1), None)
            .await;
        assert_eq!(got, Ok(3));
    }

    let res = reqwest::Client::new()
        .put(format!("http://{}/admin/config", server.mgmt_addr))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/yaml")
        .body(DEMO.replace("variants: { three: 3 }", "variants: { three: 4 }"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);

    let mut revisions = follower.subscribe();
    let waited = tokio::time::timeout(
        Duration::from_secs(10),
        revisions.wait_for(|r| r.is_some_and(|r| r > before)),
    )
    .await;
    assert!(
        matches!(waited, Ok(Ok(_))),
        "the follower saw no new revision"
    );
    let got = embedded
        .get_int_details("checkout.retry-limit", Some(&m1), None)
        .await
        .unwrap();
    assert_eq!(got.value, 4);
    let revision = follower.revision().unwrap() as i64;
    assert_eq!(
        got.flag_metadata.values.get("revision"),
        Some(&FlagMetadataValue::Int(revision))
    );
    assert_eq!(
        ofrep
            .get_int_value("checkout.retry-limit", Some(&m1), None)
            .await,
        Ok(4)
    );
    drop(follower);
    server.shutdown().await.unwrap();
}
