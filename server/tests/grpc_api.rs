//! `allot.v1.Allocator`, health and reflection over a real socket: responses equal the
//! engine's, errors map to specific statuses, baggage is merged per the trace-stamp rules.

mod grpc_support;

use std::collections::BTreeMap;
use std::time::Duration;

use allot::{Context, Resolution};
use allot_proto::allot::v1::{AllocateRequest, FlagResolution, ResolveFlagsRequest};
use allot_proto::convert::json_to_prost_value;
use allot_server::state::ConfigStore;
use grpc_support::{CONFIG, Server, context, service, store, to_struct};
use tonic::Code;
use tonic::metadata::MetadataValue;

fn expected_flag(r: &Resolution<'_>) -> FlagResolution {
    FlagResolution {
        value: Some(json_to_prost_value(r.value)),
        variant: r.variant.to_owned(),
        reason: r.reason.as_str().to_owned(),
        experiment: r
            .assignment
            .map(|a| a.experiment.to_owned())
            .unwrap_or_default(),
        cell: r.assignment.map(|a| a.cell.to_owned()).unwrap_or_default(),
        layer: r.assignment.map(|a| a.layer.to_owned()).unwrap_or_default(),
        error_code: r.error.map(|e| e.as_str().to_owned()).unwrap_or_default(),
    }
}

#[tokio::test]
async fn allocate_and_resolve_match_the_engine() {
    let store = store();
    let snapshot = store.load_full().unwrap();
    let server = Server::start(service(&store)).await;
    let mut client = server.client().await;
    let (mut in_experiments, mut held, mut errors) = (0, 0, 0);
    for i in 0..500 {
        let map = context(i);
        let ctx = Context::from(map.clone());
        let alloc = snapshot.allocate(&ctx);
        let flags = snapshot.resolve_all(&ctx);
        let stamp = allot::stamp::stamp(1, &alloc, allot::stamp::DEFAULT_BUDGET);

        let got = client
            .allocate(AllocateRequest {
                context: Some(to_struct(&map)),
            })
            .await
            .unwrap_or_else(|s| panic!("context {i}: {s:?}"))
            .into_inner();
        assert_eq!(got.revision, 1);
        let allocations: Vec<_> = got
            .allocations
            .iter()
            .map(|a| {
                (
                    a.layer.as_str(),
                    a.experiment.as_str(),
                    a.cell.as_str(),
                    a.bucket,
                )
            })
            .collect();
        let want: Vec<_> = alloc
            .assignments()
            .iter()
            .map(|a| (a.layer, a.experiment, a.cell, a.bucket))
            .collect();
        assert_eq!(allocations, want, "context {i}");
        assert_eq!(got.holdouts, alloc.holdouts(), "context {i}");
        let want_flags: BTreeMap<String, FlagResolution> = flags
            .iter()
            .map(|r| (r.key.to_owned(), expected_flag(r)))
            .collect();
        assert_eq!(
            got.flags.into_iter().collect::<BTreeMap<_, _>>(),
            want_flags,
            "context {i}"
        );
        assert_eq!(got.baggage, format!("allot={stamp}"));

        // ResolveFlags with no keys is every flag, with the same stamp.
        let resolved = client
            .resolve_flags(ResolveFlagsRequest {
                context: Some(to_struct(&map)),
                flag_keys: vec![],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resolved.revision, 1);
        assert_eq!(
            resolved.flags.into_iter().collect::<BTreeMap<_, _>>(),
            want_flags
        );
        assert_eq!(resolved.baggage, format!("allot={stamp}"));

        in_experiments += usize::from(!want.is_empty());
        held += usize::from(!alloc.holdouts().is_empty());
        errors += usize::from(flags.iter().any(|r| r.error.is_some()));
    }
    // The generated contexts exercise experiments, the holdout and error codes.
    assert!(in_experiments > 0 && held > 0 && errors > 0);
    server.stop().await;
}

#[tokio::test]
async fn resolve_flags_returns_only_the_keys_asked_for() {
    let store = store();
    let snapshot = store.load_full().unwrap();
    let server = Server::start(service(&store)).await;
    let mut client = server.client().await;
    let map = context(4);
    let ctx = Context::from(map.clone());
    let keys = vec!["search.fuzzy".to_owned(), "abr".to_owned()];
    let got = client
        .resolve_flags(ResolveFlagsRequest {
            context: Some(to_struct(&map)),
            flag_keys: keys.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.flags.len(), 2);
    for key in &keys {
        assert_eq!(
            got.flags[key],
            expected_flag(&snapshot.resolve(key, &ctx).unwrap())
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn client_mistakes_get_specific_statuses() {
    let store = store();
    let server = Server::start(service(&store)).await;
    let mut client = server.client().await;

    let err = client
        .resolve_flags(ResolveFlagsRequest {
            context: Some(to_struct(&context(1))),
            flag_keys: vec!["prefetch".into(), "no-such-flag".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("no-such-flag"), "{}", err.message());

    let mut no_unit = context(1);
    no_unit.remove("targetingKey");
    no_unit.remove("device_id");
    let err = client
        .allocate(AllocateRequest {
            context: Some(to_struct(&no_unit)),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("targetingKey"), "{}", err.message());

    // No context at all is an empty context: the same specific error.
    let err = client
        .allocate(AllocateRequest { context: None })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("targetingKey"), "{}", err.message());

    let mut bad_unit = context(1);
    bad_unit.insert("targetingKey".into(), serde_json::json!(42));
    let err = client
        .allocate(AllocateRequest {
            context: Some(to_struct(&bad_unit)),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("targetingKey"), "{}", err.message());

    let mut huge = context(1);
    huge.insert("blob".into(), serde_json::json!("x".repeat(2 << 20)));
    let err = client
        .allocate(AllocateRequest {
            context: Some(to_struct(&huge)),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    assert!(err.message().contains("too large"), "{}", err.message());

    // The connection is still good afterwards.
    client
        .allocate(AllocateRequest {
            context: Some(to_struct(&context(1))),
        })
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn not_ready_is_unavailable_until_a_config_is_applied() {
    let store = std::sync::Arc::new(ConfigStore::new());
    let server = Server::start(service(&store)).await;
    let mut client = server.client().await;
    let request = || AllocateRequest {
        context: Some(to_struct(&context(2))),
    };
    let err = client.allocate(request()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    let err = client
        .resolve_flags(ResolveFlagsRequest {
            context: Some(to_struct(&context(2))),
            flag_keys: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);

    store
        .apply(&allot::Config::parse(CONFIG).unwrap(), None, None)
        .unwrap();
    assert_eq!(
        client.allocate(request()).await.unwrap().get_ref().revision,
        1
    );
    server.stop().await;
}

#[tokio::test]
async fn baggage_is_merged_with_our_member_first_and_forgeries_replaced() {
    let store = store();
    let server = Server::start(service(&store)).await;
    let mut client = server.client().await;
    let mut request = tonic::Request::new(AllocateRequest {
        context: Some(to_struct(&context(5))),
    });
    let md = request.metadata_mut();
    md.append(
        "baggage",
        MetadataValue::from_static("userId=alice,allot=1.999.forged~x,region=eu%20west"),
    );
    md.append(
        "baggage",
        MetadataValue::from_static("session=s1;prop=1, allot=again"),
    );
    let response = client.allocate(request).await.unwrap();
    let header = response
        .metadata()
        .get("baggage")
        .expect("baggage metadata")
        .to_str()
        .unwrap()
        .to_owned();
    let member = response.into_inner().baggage;
    assert!(member.starts_with("allot=1."), "{member}");
    assert!(!member.contains("forged"));
    assert_eq!(
        header,
        format!("{member},userId=alice,region=eu%20west,session=s1;prop=1")
    );

    // Without incoming baggage the header is our member alone.
    let response = client
        .allocate(AllocateRequest {
            context: Some(to_struct(&context(5))),
        })
        .await
        .unwrap();
    assert_eq!(
        response
            .metadata()
            .get("baggage")
            .unwrap()
            .to_str()
            .unwrap(),
        response.get_ref().baggage
    );
    server.stop().await;
}

#[tokio::test]
async fn health_turns_serving_once_a_config_is_loaded() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let store = std::sync::Arc::new(ConfigStore::new());
    let server = Server::start(service(&store)).await;
    let mut health = HealthClient::new(server.channel().await);
    for name in ["", "allot.v1.Allocator"] {
        let status = health
            .check(HealthCheckRequest {
                service: name.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::NotServing as i32, "service {name:?}");
    }

    let mut watch = health
        .watch(HealthCheckRequest {
            service: "allot.v1.Allocator".into(),
        })
        .await
        .unwrap()
        .into_inner();
    store
        .apply(&allot::Config::parse(CONFIG).unwrap(), None, None)
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(msg) = watch.message().await.unwrap() {
            if msg.status == ServingStatus::Serving as i32 {
                return;
            }
        }
        panic!("health stream ended before SERVING");
    })
    .await
    .expect("SERVING within 5 s");
    let status = health
        .check(HealthCheckRequest { service: "".into() })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);

    // Shutdown: watchers see NOT_SERVING, then their stream ends so the drain can finish.
    server.stop().await;
    let last = watch.message().await.unwrap().expect("a final status");
    assert_eq!(last.status, ServingStatus::NotServing as i32);
    assert!(watch.message().await.unwrap().is_none());
}

#[tokio::test]
async fn reflection_lists_the_allocator() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{FileDescriptorResponse, ServerReflectionRequest};

    let store = store();
    let server = Server::start(service(&store)).await;
    let mut client = ServerReflectionClient::new(server.channel().await);
    let requests = vec![
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "allot.v1.Allocator".into(),
            )),
        },
    ];
    let mut responses = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();

    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for want in [
        "allot.v1.Allocator",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }

    let Some(MessageResponse::FileDescriptorResponse(FileDescriptorResponse {
        file_descriptor_proto,
    })) = responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a file descriptor");
    };
    assert!(!file_descriptor_proto.is_empty());
    server.stop().await;
}
