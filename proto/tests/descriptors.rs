//! Checks the embedded descriptor set and the generated messages against the wire contract.

use std::collections::BTreeMap;

use allot_proto::allot::v1::{AllocateResponse, Allocation, FlagResolution};
use allot_proto::{FILE_DESCRIPTOR_SET, convert};
use prost::Message as _;
use prost_types::{FileDescriptorSet, ServiceDescriptorProto};

fn descriptor_set() -> FileDescriptorSet {
    FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("FILE_DESCRIPTOR_SET decodes")
}

/// Finds a service by its fully qualified name, e.g. `allot.v1.Allocator`.
fn service(fds: &FileDescriptorSet, full_name: &str) -> ServiceDescriptorProto {
    fds.file
        .iter()
        .flat_map(|f| {
            f.service
                .iter()
                .map(move |s| (format!("{}.{}", f.package(), s.name()), s))
        })
        .find(|(name, _)| name == full_name)
        .map(|(_, s)| s.clone())
        .unwrap_or_else(|| panic!("service {full_name} not in FILE_DESCRIPTOR_SET"))
}

/// Method name → (client streaming, server streaming).
fn methods(svc: &ServiceDescriptorProto) -> BTreeMap<String, (bool, bool)> {
    svc.method
        .iter()
        .map(|m| {
            (
                m.name().to_owned(),
                (m.client_streaming(), m.server_streaming()),
            )
        })
        .collect()
}

#[test]
fn contains_allot_allocator() {
    let fds = descriptor_set();
    let m = methods(&service(&fds, "allot.v1.Allocator"));
    let expected: BTreeMap<String, (bool, bool)> = [
        ("Allocate", (false, false)),
        ("ResolveFlags", (false, false)),
        ("WatchConfig", (false, true)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(m, expected);
}

#[test]
fn contains_flagd_evaluation_services() {
    let fds = descriptor_set();
    for full_name in ["flagd.evaluation.v1.Service", "flagd.evaluation.v2.Service"] {
        let m = methods(&service(&fds, full_name));
        let expected: BTreeMap<String, (bool, bool)> = [
            ("ResolveAll", (false, false)),
            ("ResolveBoolean", (false, false)),
            ("ResolveString", (false, false)),
            ("ResolveInt", (false, false)),
            ("ResolveFloat", (false, false)),
            ("ResolveObject", (false, false)),
            ("EventStream", (false, true)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(m, expected, "{full_name}");
    }
}

#[test]
fn includes_imported_well_known_types() {
    let fds = descriptor_set();
    let names: Vec<&str> = fds.file.iter().map(|f| f.name()).collect();
    for name in [
        "google/protobuf/struct.proto",
        "allot/v1/allot.proto",
        "flagd/evaluation/v1/evaluation.proto",
        "flagd/evaluation/v2/evaluation.proto",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
}

#[test]
fn allocate_response_round_trips() {
    let value = convert::json_to_prost_value(&serde_json::json!({"on": true, "n": [1, 2.5]}));
    let resp = AllocateResponse {
        revision: 42,
        allocations: vec![Allocation {
            layer: "home".into(),
            experiment: "smarter-prefetch".into(),
            cell: "treatment".into(),
            bucket: 1234,
        }],
        holdouts: vec!["holdout-2026".into()],
        flags: [(
            "prefetch".to_owned(),
            FlagResolution {
                value: Some(value),
                variant: "enabled".into(),
                reason: "SPLIT".into(),
                experiment: "smarter-prefetch".into(),
                cell: "treatment".into(),
                layer: "home".into(),
                error_code: String::new(),
            },
        )]
        .into_iter()
        .collect(),
        baggage: "allot=1.42.smarter-prefetch~treatment".into(),
    };
    let bytes = resp.encode_to_vec();
    let decoded = AllocateResponse::decode(bytes.as_slice()).expect("decodes");
    assert_eq!(decoded, resp);
}

#[test]
fn flagd_v2_values_are_optional() {
    use allot_proto::flagd::evaluation::v2::ResolveBooleanResponse;
    let empty = ResolveBooleanResponse::default();
    assert_eq!(empty.value, None);
    assert_eq!(empty.variant, None);
    let set = ResolveBooleanResponse {
        value: Some(false),
        ..Default::default()
    };
    // An explicitly set `false` is on the wire, unlike a proto3 default.
    assert!(!set.encode_to_vec().is_empty());
    let decoded = ResolveBooleanResponse::decode(set.encode_to_vec().as_slice()).unwrap();
    assert_eq!(decoded.value, Some(false));
}
