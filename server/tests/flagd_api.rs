//! The flagd evaluation API (v1 and v2) over a real socket with the generated clients: typed
//! resolves equal the engine's answers, errors are the statuses flagd providers map, ResolveAll,
//! and EventStream's `provider_ready` and `configuration_change`.

mod grpc_support;

use std::sync::Arc;
use std::time::Duration;

use allot::{Config, Context, FlagType, Reason};
use allot_proto::convert::struct_to_json_map;
use allot_proto::flagd::evaluation::{v1, v2};
use allot_server::flagd::changed_flags;
use allot_server::service::{Limits, Service};
use allot_server::state::ConfigStore;
use grpc_support::{Server, to_struct};
use serde_json::{Map, Value, json};
use tonic::Code;

const DEMO: &str = include_str!("../src/demo.yaml");

fn demo_store() -> Arc<ConfigStore> {
    let store = Arc::new(ConfigStore::new());
    store
        .apply(&Config::parse(DEMO).unwrap(), None, None)
        .unwrap();
    store
}

fn contexts() -> Vec<Map<String, Value>> {
    (0..24)
        .map(|i| {
            let country = ["US", "SE", "CA", "DE"][i % 4];
            let mut ctx = json!({
                "targetingKey": format!("m-{i}"),
                "country": country,
                "device_id": format!("d-{i}"),
            });
            if i % 3 == 0 {
                ctx["platform"] = json!("tv");
                ctx["app_version"] = json!("5.1.0");
            }
            ctx.as_object().unwrap().clone()
        })
        .collect()
}

fn meta_json(s: Option<prost_types::Struct>) -> Value {
    Value::Object(s.as_ref().map(struct_to_json_map).unwrap_or_default())
}

fn expected_meta(r: &allot::Resolution<'_>, revision: u64) -> Value {
    let mut m = json!({"revision": revision});
    if let Some(a) = r.assignment {
        m["experiment"] = json!(a.experiment);
        m["cell"] = json!(a.cell);
        m["layer"] = json!(a.layer);
    }
    m
}

#[tokio::test]
async fn v1_and_v2_typed_resolves_equal_the_engine() {
    let store = demo_store();
    let server = Server::start(Service::new(store.clone(), Limits::default())).await;
    let mut c1 = v1::service_client::ServiceClient::new(server.channel().await);
    let mut c2 = v2::service_client::ServiceClient::new(server.channel().await);
    let snap = store.load_full().unwrap();
    let mut experiments = 0;
    for ctx_map in contexts() {
        let ctx = Context::from(ctx_map.clone());
        let stamp = {
            let alloc = snap.allocate(&ctx);
            allot::stamp::stamp(snap.revision(), &alloc, allot::stamp::DEFAULT_BUDGET)
        };
        for key in snap.flag_keys() {
            let r = snap.resolve(key, &ctx).unwrap();
            assert_ne!(r.reason, Reason::Error);
            let context = Some(to_struct(&ctx_map));
            let flag_key = key.to_owned();
            let meta = expected_meta(&r, snap.revision());
            if r.assignment.is_some() {
                experiments += 1;
            }
            match r.kind {
                FlagType::Bool => {
                    let a = c1
                        .resolve_boolean(v1::ResolveBooleanRequest {
                            flag_key: flag_key.clone(),
                            context: context.clone(),
                        })
                        .await
                        .unwrap();
                    assert_eq!(
                        a.metadata().get("baggage").unwrap().to_str().unwrap(),
                        format!("allot={stamp}")
                    );
                    let a = a.into_inner();
                    assert_eq!(
                        (json!(a.value), a.variant.as_str(), a.reason.as_str()),
                        (r.value.clone(), r.variant, r.reason.as_str())
                    );
                    assert_eq!(meta_json(a.metadata), meta);
                    let b = c2
                        .resolve_boolean(v2::ResolveBooleanRequest { flag_key, context })
                        .await
                        .unwrap()
                        .into_inner();
                    assert_eq!(
                        (json!(b.value), b.variant.as_deref()),
                        (r.value.clone(), Some(r.variant))
                    );
                    assert_eq!(meta_json(b.metadata), meta);
                }
                FlagType::String => {
                    let a = c1
                        .resolve_string(v1::ResolveStringRequest {
                            flag_key: flag_key.clone(),
                            context: context.clone(),
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    assert_eq!(
                        (json!(a.value), a.variant.as_str(), a.reason.as_str()),
                        (r.value.clone(), r.variant, r.reason.as_str())
                    );
                    assert_eq!(meta_json(a.metadata), meta);
                    let b = c2
                        .resolve_string(v2::ResolveStringRequest { flag_key, context })
                        .await
                        .unwrap()
                        .into_inner();
                    assert_eq!(json!(b.value), r.value.clone());
                }
                FlagType::Int => {
                    let a = c1
                        .resolve_int(v1::ResolveIntRequest {
                            flag_key: flag_key.clone(),
                            context: context.clone(),
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    assert_eq!(
                        (json!(a.value), a.variant.as_str(), a.reason.as_str()),
                        (r.value.clone(), r.variant, r.reason.as_str())
                    );
                    // Integer flags also answer ResolveFloat.
                    let f = c2
                        .resolve_float(v2::ResolveFloatRequest {
                            flag_key: flag_key.clone(),
                            context: context.clone(),
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    assert_eq!(f.value, r.value.as_f64());
                    let b = c2
                        .resolve_int(v2::ResolveIntRequest { flag_key, context })
                        .await
                        .unwrap()
                        .into_inner();
                    assert_eq!(b.value, r.value.as_i64());
                    assert_eq!(meta_json(b.metadata), meta);
                }
                FlagType::Float => {
                    let a = c1
                        .resolve_float(v1::ResolveFloatRequest {
                            flag_key: flag_key.clone(),
                            context: context.clone(),
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    assert_eq!(
                        (Some(a.value), a.variant.as_str(), a.reason.as_str()),
                        (r.value.as_f64(), r.variant, r.reason.as_str())
                    );
                    let b = c2
                        .resolve_float(v2::ResolveFloatRequest { flag_key, context })
                        .await
                        .unwrap()
                        .into_inner();
                    assert_eq!(b.value, r.value.as_f64());
                    assert_eq!(meta_json(b.metadata), meta);
                }
                FlagType::Object => {
                    let a = c1
                        .resolve_object(v1::ResolveObjectRequest {
                            flag_key: flag_key.clone(),
                            context: context.clone(),
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    let value = Value::Object(struct_to_json_map(&a.value.unwrap()));
                    // Struct numbers are doubles: compare numerically.
                    assert_eq!(value["algorithm"], r.value["algorithm"]);
                    assert_eq!(
                        value["max_bitrate_kbps"].as_f64(),
                        r.value["max_bitrate_kbps"].as_f64()
                    );
                    assert_eq!(a.variant, r.variant);
                    let b = c2
                        .resolve_object(v2::ResolveObjectRequest { flag_key, context })
                        .await
                        .unwrap()
                        .into_inner();
                    assert_eq!(b.variant.as_deref(), Some(r.variant));
                    assert_eq!(meta_json(b.metadata), meta);
                }
            }
        }
    }
    assert!(experiments > 20, "{experiments}");
    server.stop().await;
}

#[tokio::test]
async fn errors_are_the_statuses_flagd_providers_map() {
    let store = demo_store();
    let server = Server::start(Service::new(store, Limits::default())).await;
    let mut c1 = v1::service_client::ServiceClient::new(server.channel().await);
    let mut c2 = v2::service_client::ServiceClient::new(server.channel().await);
    let ctx = Some(to_struct(
        json!({"targetingKey": "m-1"}).as_object().unwrap(),
    ));

    let nf = c2
        .resolve_boolean(v2::ResolveBooleanRequest {
            flag_key: "nope".into(),
            context: ctx.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(nf.code(), Code::NotFound);
    let nf1 = c1
        .resolve_string(v1::ResolveStringRequest {
            flag_key: "nope".into(),
            context: ctx.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(nf1.code(), Code::NotFound);

    let mismatch = c2
        .resolve_boolean(v2::ResolveBooleanRequest {
            flag_key: "artwork-style".into(),
            context: ctx.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(mismatch.code(), Code::InvalidArgument);
    assert!(
        mismatch.message().contains("artwork-style"),
        "{}",
        mismatch.message()
    );
    let float_as_int = c1
        .resolve_int(v1::ResolveIntRequest {
            flag_key: "buffer-ratio".into(),
            context: ctx.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(float_as_int.code(), Code::InvalidArgument);

    // A rollout without its unit: FAILED_PRECONDITION naming the OpenFeature code.
    let missing = c2
        .resolve_boolean(v2::ResolveBooleanRequest {
            flag_key: "search.new-ranker".into(),
            context: None,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::FailedPrecondition);
    assert!(
        missing.message().starts_with("TARGETING_KEY_MISSING"),
        "{}",
        missing.message()
    );

    // Flags that need no unit evaluate without a context.
    let fixed = c2
        .resolve_int(v2::ResolveIntRequest {
            flag_key: "checkout.retry-limit".into(),
            context: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((fixed.value, fixed.reason.as_str()), (Some(3), "STATIC"));

    // Not ready: UNAVAILABLE.
    let empty = Server::start(Service::new(
        Arc::new(ConfigStore::new()),
        Limits::default(),
    ))
    .await;
    let mut e2 = v2::service_client::ServiceClient::new(empty.channel().await);
    let unavailable = e2
        .resolve_boolean(v2::ResolveBooleanRequest {
            flag_key: "prefetch".into(),
            context: None,
        })
        .await
        .unwrap_err();
    assert_eq!(unavailable.code(), Code::Unavailable);
    empty.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn resolve_all_lists_every_evaluable_flag() {
    let store = demo_store();
    let server = Server::start(Service::new(store.clone(), Limits::default())).await;
    let mut c1 = v1::service_client::ServiceClient::new(server.channel().await);
    let mut c2 = v2::service_client::ServiceClient::new(server.channel().await);
    let snap = store.load_full().unwrap();
    for ctx_map in contexts().into_iter().take(6) {
        let ctx = Context::from(ctx_map.clone());
        let all = c1
            .resolve_all(v1::ResolveAllRequest {
                context: Some(to_struct(&ctx_map)),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(all.flags.len(), snap.flag_keys().len());
        assert_eq!(meta_json(all.metadata), json!({"revision": 1}));
        for r in snap.resolve_all(&ctx) {
            let f = &all.flags[r.key];
            assert_eq!(
                (f.variant.as_str(), f.reason.as_str()),
                (r.variant, r.reason.as_str())
            );
            let value = match f.value.clone().unwrap() {
                v1::any_flag::Value::BoolValue(b) => json!(b),
                v1::any_flag::Value::StringValue(s) => json!(s),
                v1::any_flag::Value::DoubleValue(d) => json!(d),
                v1::any_flag::Value::ObjectValue(s) => Value::Object(struct_to_json_map(&s)),
            };
            match r.kind {
                FlagType::Int | FlagType::Float => assert_eq!(value.as_f64(), r.value.as_f64()),
                FlagType::Object => assert_eq!(value["algorithm"], r.value["algorithm"]),
                _ => assert_eq!(value, r.value.clone()),
            }
        }
    }
    // Without a unit, rollout flags are left out (they cannot be evaluated).
    let partial = c2
        .resolve_all(v2::ResolveAllRequest { context: None })
        .await
        .unwrap()
        .into_inner();
    assert!(!partial.flags.contains_key("search.new-ranker"));
    assert!(!partial.flags.contains_key("player.engine"));
    assert!(partial.flags.contains_key("checkout.retry-limit"));
    server.stop().await;
}

async fn next_event<S>(stream: &mut tonic::Streaming<S>) -> S {
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("an event within 5 s")
        .expect("stream ok")
        .expect("stream open")
}

#[tokio::test]
async fn event_stream_announces_ready_and_changed_flags() {
    let store = demo_store();
    let server = Server::start(Service::new(store.clone(), Limits::default())).await;
    let mut c1 = v1::service_client::ServiceClient::new(server.channel().await);
    let mut c2 = v2::service_client::ServiceClient::new(server.channel().await);
    let mut s1 = c1
        .event_stream(v1::EventStreamRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut s2 = c2
        .event_stream(v2::EventStreamRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_event(&mut s1).await.r#type, "provider_ready");
    assert_eq!(next_event(&mut s2).await.r#type, "provider_ready");

    // Change one static flag, add one, remove one.
    let changed = DEMO
        .replace("variants: { three: 3 }", "variants: { three: 4 }")
        .replace(
            "  # float, rule-based on a numeric attribute.",
            "  - { key: brand-new, type: bool, variants: { \"y\": true }, default: \"y\" }\n  # float, rule-based on a numeric attribute.",
        )
        .replace("  - key: legacy-player", "  - key: legacy-player-gone");
    store
        .apply(&Config::parse(&changed).unwrap(), None, None)
        .unwrap();

    for event in [
        next_event(&mut s2).await.data,
        next_event(&mut s1).await.data,
    ] {
        let data = Value::Object(struct_to_json_map(&event.unwrap()));
        let flags = data["flags"].as_object().unwrap();
        let kinds: Vec<(&str, &str)> = flags
            .iter()
            .map(|(k, v)| (k.as_str(), v["type"].as_str().unwrap()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("brand-new", "write"),
                ("checkout.retry-limit", "update"),
                ("legacy-player", "delete"),
                ("legacy-player-gone", "write"),
            ]
        );
    }
    // The stream ends when the server shuts down.
    server.stop().await;
    let end = tokio::time::timeout(Duration::from_secs(5), s2.message())
        .await
        .unwrap();
    assert!(matches!(end, Ok(None) | Err(_)));
}

#[test]
fn experiment_changes_mark_the_flags_they_set() {
    let old = Config::parse(DEMO).unwrap();
    assert!(changed_flags(Some(&old), &old).is_empty());
    assert_eq!(changed_flags(None, &old).len(), old.flags.len());

    // Re-weighting abr-tuning changes buffer-ratio and abr, nothing else.
    let new = Config::parse(&DEMO.replace("weight: 9, flags", "weight: 8, flags")).unwrap();
    let keys: Vec<_> = changed_flags(Some(&old), &new).into_keys().collect();
    assert_eq!(keys, vec!["abr", "buffer-ratio"]);

    // A new layer salt for home: every flag an experiment of home sets.
    let new = Config::parse(&DEMO.replace("salt: home-2026q4", "salt: home-2027")).unwrap();
    let keys: Vec<_> = changed_flags(Some(&old), &new).into_keys().collect();
    assert_eq!(keys, vec!["artwork-style", "prefetch", "row-count"]);
}
