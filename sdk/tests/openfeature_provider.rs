//! `allot::openfeature::Provider` through the real OpenFeature API: a provider set on the
//! `OpenFeature` singleton, evaluated with an OpenFeature `Client`, answers exactly what
//! `Snapshot::resolve` does (value, variant, reason, metadata) for every flag type and many
//! units of the demo config; each error path arrives as its OpenFeature error code.

use std::collections::BTreeSet;
use std::sync::Arc;

use allot::openfeature::{Provider, SnapshotSource};
use allot::{Context, ErrorCode, FlagType, Reason, Snapshot};
use open_feature::provider::{FeatureProvider, ProviderStatus};
use open_feature::{
    Client, EvaluationContext, EvaluationContextFieldValue, EvaluationErrorCode, EvaluationReason,
    FlagMetadataValue, OpenFeature, StructValue,
};
use serde_json::json;

fn demo() -> Arc<Snapshot> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../server/src/demo.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    Arc::new(allot::compile_str(&text, 7).unwrap())
}

/// A client bound to `provider` under its own domain, so tests in this binary do not share one.
async fn client<P: FeatureProvider>(domain: &str, provider: P) -> Client {
    let mut api = OpenFeature::singleton_mut().await;
    api.set_named_provider(domain, provider).await;
    api.create_named_client(domain)
}

/// Units and attributes that reach every kind of decision in the demo config (the same as
/// the Python e2e's `contexts()`), plus a spread of plain units.
fn contexts() -> Vec<(EvaluationContext, Context)> {
    let mut out = Vec::new();
    for i in 0..60 {
        let unit = format!("m-{i}");
        let mut of = EvaluationContext::default().with_targeting_key(unit.clone());
        let mut ctx = Context::with_targeting_key(unit);
        let country = ["US", "SE", "CA", "DE"][i % 4];
        of.add_custom_field("country", country);
        ctx.insert("country", country);
        if i % 3 == 0 {
            of.add_custom_field("platform", "tv");
            of.add_custom_field("app_version", "5.1.0");
            of.add_custom_field("device_id", format!("d-{i}"));
            ctx.insert("platform", "tv");
            ctx.insert("app_version", "5.1.0");
            ctx.insert("device_id", format!("d-{i}"));
        }
        if i % 4 == 1 {
            of.add_custom_field("tenure_months", 30);
            ctx.insert("tenure_months", 30);
        }
        out.push((of, ctx));
    }
    out
}

fn reason_of(r: Reason) -> EvaluationReason {
    match r {
        Reason::Static => EvaluationReason::Static,
        Reason::Default => EvaluationReason::Default,
        Reason::TargetingMatch => EvaluationReason::TargetingMatch,
        Reason::Split => EvaluationReason::Split,
        Reason::Disabled => EvaluationReason::Disabled,
        Reason::Error => EvaluationReason::Error,
    }
}

fn string_meta(v: &str) -> FlagMetadataValue {
    FlagMetadataValue::String(v.to_owned())
}

#[tokio::test]
async fn every_type_for_many_units_equals_snapshot_resolve() {
    let snapshot = demo();
    let client = client("parity", Provider::new(snapshot.clone())).await;
    let mut reasons = BTreeSet::new();
    let mut experiments = BTreeSet::new();
    let mut checked = 0;
    let mut errors = 0;
    for (of, ctx) in contexts() {
        for key in snapshot.flag_keys() {
            let want = snapshot.resolve(key, &ctx).unwrap();
            if want.reason == Reason::Error {
                // Units without a `device_id` on its rollout: the engine's error, as OpenFeature's.
                assert_eq!(want.error, Some(ErrorCode::TargetingKeyMissing), "{key}");
                let err = client
                    .get_string_details(key, Some(&of), None)
                    .await
                    .unwrap_err();
                assert_eq!(err.code, EvaluationErrorCode::TargetingKeyMissing, "{key}");
                errors += 1;
                continue;
            }
            let (value, variant, reason, meta) = match want.kind {
                FlagType::Bool => {
                    let d = client.get_bool_details(key, Some(&of), None).await.unwrap();
                    (json!(d.value), d.variant, d.reason, d.flag_metadata)
                }
                FlagType::String => {
                    let d = client
                        .get_string_details(key, Some(&of), None)
                        .await
                        .unwrap();
                    (json!(d.value), d.variant, d.reason, d.flag_metadata)
                }
                FlagType::Int => {
                    let d = client.get_int_details(key, Some(&of), None).await.unwrap();
                    // An integer flag answers a float request with the same number.
                    let f = client
                        .get_float_details(key, Some(&of), None)
                        .await
                        .unwrap();
                    assert_eq!(Some(f.value), want.value.as_f64(), "{key}");
                    (json!(d.value), d.variant, d.reason, d.flag_metadata)
                }
                FlagType::Float => {
                    let d = client
                        .get_float_details(key, Some(&of), None)
                        .await
                        .unwrap();
                    (json!(d.value), d.variant, d.reason, d.flag_metadata)
                }
                FlagType::Object => {
                    let d = client
                        .get_struct_details::<StructValue>(key, Some(&of), None)
                        .await
                        .unwrap();
                    (
                        allot::openfeature::struct_to_json(&d.value),
                        d.variant,
                        d.reason,
                        d.flag_metadata,
                    )
                }
            };
            assert_eq!(&value, want.value, "{key} {ctx:?}");
            assert_eq!(variant.as_deref(), Some(want.variant), "{key}");
            assert_eq!(reason, Some(reason_of(want.reason)), "{key}");
            let m = &meta.values;
            assert_eq!(m.get("revision"), Some(&FlagMetadataValue::Int(7)), "{key}");
            match want.assignment {
                Some(a) => {
                    assert_eq!(
                        m.get("experiment"),
                        Some(&string_meta(a.experiment)),
                        "{key}"
                    );
                    assert_eq!(m.get("cell"), Some(&string_meta(a.cell)), "{key}");
                    assert_eq!(m.get("layer"), Some(&string_meta(a.layer)), "{key}");
                    assert_eq!(m.len(), 4, "{key}");
                    experiments.insert(a.experiment);
                }
                None => assert_eq!(m.len(), 1, "{key}: {m:?}"),
            }
            reasons.insert(want.reason.as_str());
            checked += 1;
        }
    }
    // The units reach every decision kind and every experiment, so the comparison covers them.
    assert_eq!(
        reasons,
        BTreeSet::from(["DEFAULT", "DISABLED", "SPLIT", "STATIC", "TARGETING_MATCH"])
    );
    assert_eq!(experiments.len(), 4, "{experiments:?}");
    assert!(
        errors > 0 && checked > 9 * errors,
        "{errors} errors, {checked} answers"
    );
    assert_eq!(checked + errors, 60 * snapshot.flag_keys().len());
}

#[tokio::test]
async fn unknown_flag_is_flag_not_found() {
    let client = client("not-found", Provider::new(demo())).await;
    let ctx = EvaluationContext::default().with_targeting_key("m-1");
    let err = client
        .get_bool_details("no-such-flag", Some(&ctx), None)
        .await
        .unwrap_err();
    assert_eq!(err.code, EvaluationErrorCode::FlagNotFound);
    // The value API falls back to the caller's default.
    assert!(
        client
            .get_bool_value("no-such-flag", Some(&ctx), None)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn wrong_type_is_type_mismatch() {
    let client = client("mismatch", Provider::new(demo())).await;
    let ctx = EvaluationContext::default().with_targeting_key("m-1");
    let mismatch = [
        client
            .get_bool_details("artwork-style", Some(&ctx), None)
            .await
            .map(drop),
        client
            .get_int_details("buffer-ratio", Some(&ctx), None)
            .await
            .map(drop),
        client
            .get_string_details("row-count", Some(&ctx), None)
            .await
            .map(drop),
        client
            .get_float_details("prefetch", Some(&ctx), None)
            .await
            .map(drop),
        client
            .get_struct_details::<StructValue>("tv-theme", Some(&ctx), None)
            .await
            .map(drop),
        client
            .get_bool_details("abr", Some(&ctx), None)
            .await
            .map(drop),
    ];
    for got in mismatch {
        assert_eq!(got.unwrap_err().code, EvaluationErrorCode::TypeMismatch);
    }
}

#[tokio::test]
async fn missing_unit_on_a_rollout_is_targeting_key_missing() {
    let client = client("no-key", Provider::new(demo())).await;
    let ctx = EvaluationContext::default().with_custom_field("country", "DE");
    let err = client
        .get_bool_details("search.new-ranker", Some(&ctx), None)
        .await
        .unwrap_err();
    assert_eq!(err.code, EvaluationErrorCode::TargetingKeyMissing);
    // A rollout by `device_id` needs that attribute, not the targeting key.
    let ctx = EvaluationContext::default().with_targeting_key("m-1");
    let err = client
        .get_string_details("player.engine", Some(&ctx), None)
        .await
        .unwrap_err();
    assert_eq!(err.code, EvaluationErrorCode::TargetingKeyMissing);
    // Static and rule-decided flags need no unit.
    let d = client
        .get_int_details("checkout.retry-limit", None, None)
        .await
        .unwrap();
    assert_eq!((d.value, d.reason), (3, Some(EvaluationReason::Static)));
    let ctx = EvaluationContext::default().with_custom_field("country", "SE");
    let d = client
        .get_bool_details("search.new-ranker", Some(&ctx), None)
        .await
        .unwrap();
    assert_eq!(
        (d.value, d.reason),
        (true, Some(EvaluationReason::TargetingMatch))
    );
}

#[tokio::test]
async fn unusable_context_is_invalid_context() {
    let client = client("invalid", Provider::new(demo())).await;
    // A rollout's unit longer than 256 bytes.
    let ctx = EvaluationContext::default()
        .with_targeting_key("x".repeat(257))
        .with_custom_field("country", "DE");
    let err = client
        .get_bool_details("search.new-ranker", Some(&ctx), None)
        .await
        .unwrap_err();
    assert_eq!(err.code, EvaluationErrorCode::InvalidContext);
    // A struct field of a type the provider cannot read.
    struct Opaque;
    let ctx = EvaluationContext::default()
        .with_targeting_key("m-1")
        .with_custom_field("blob", EvaluationContextFieldValue::new_struct(Opaque));
    let err = client
        .get_string_details("artwork-style", Some(&ctx), None)
        .await
        .unwrap_err();
    assert_eq!(err.code, EvaluationErrorCode::InvalidContext);
}

/// Date-time and struct context fields reach conditions as JSON: a date-time as its RFC 3339
/// string, an array or object held by a struct field as that JSON.
#[tokio::test]
async fn date_time_and_struct_fields_reach_conditions() {
    let snapshot = allot::compile_str(
        r#"
flags:
  - key: gate
    type: string
    variants: { dated: dated, tagged: tagged, planned: planned, none: none }
    default: none
    rules:
      - { when: { since: { eq: "2026-01-02T03:04:05Z" } }, variant: dated }
      - { when: { tags: { contains: gold } }, variant: tagged }
      - { when: { plan: { exists: true } }, variant: planned }
"#,
        1,
    )
    .unwrap();
    let client = client("fields", Provider::new(snapshot)).await;
    let gate = async |ctx: EvaluationContext| {
        client
            .get_string_value("gate", Some(&ctx), None)
            .await
            .unwrap()
    };

    let since = time::OffsetDateTime::from_unix_timestamp(1_767_323_045).unwrap();
    assert_eq!(
        gate(EvaluationContext::default().with_custom_field("since", since)).await,
        "dated"
    );

    let tags = open_feature::Value::Array(vec!["beta".into(), "gold".into()]);
    let ctx = EvaluationContext::default()
        .with_custom_field("tags", EvaluationContextFieldValue::new_struct(tags));
    assert_eq!(gate(ctx).await, "tagged");
    let ctx = EvaluationContext::default().with_custom_field(
        "tags",
        EvaluationContextFieldValue::new_struct(json!(["gold"])),
    );
    assert_eq!(gate(ctx).await, "tagged");
    let ctx = EvaluationContext::default().with_custom_field(
        "tags",
        EvaluationContextFieldValue::new_struct(json!(["silver"])),
    );
    assert_eq!(gate(ctx).await, "none");

    let mut plan = StructValue::default();
    plan.add_field("tier", "gold");
    let ctx = EvaluationContext::default()
        .with_custom_field("plan", EvaluationContextFieldValue::new_struct(plan));
    assert_eq!(gate(ctx).await, "planned");
}

#[tokio::test]
async fn values_without_an_openfeature_form_are_parse_errors() {
    let snapshot = allot::compile_str(
        r#"
flags:
  - key: settings
    type: object
    variants: { "on": { retries: 3, fallback: null } }
    default: "on"
"#,
        1,
    )
    .unwrap();
    let client = client("parse", Provider::new(snapshot)).await;
    let err = client
        .get_struct_details::<StructValue>("settings", None, None)
        .await
        .unwrap_err();
    assert_eq!(err.code, EvaluationErrorCode::ParseError);
}

/// A source with no snapshot yet (a client before its first config).
struct Empty;

impl SnapshotSource for Empty {
    fn with_snapshot<R>(&self, _: impl FnOnce(&Snapshot) -> R) -> Option<R> {
        None
    }
}

#[tokio::test]
async fn no_snapshot_yet_is_provider_not_ready() {
    let provider = Provider::from_source(Empty);
    assert_eq!(provider.status(), ProviderStatus::NotReady);
    assert_eq!(provider.metadata().name, "allot");
    let client = client("not-ready", provider).await;
    let err = client
        .get_bool_details("prefetch", None, None)
        .await
        .unwrap_err();
    assert_eq!(err.code, EvaluationErrorCode::ProviderNotReady);
    assert_eq!(Provider::new(demo()).status(), ProviderStatus::Ready);
}

/// `from_client`: the provider reads the client's serving snapshot (here its bootstrap; the
/// server e2e `server/tests/openfeature_rust.rs` follows a live config change).
#[tokio::test]
async fn client_source_serves_its_snapshot() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../server/src/demo.yaml");
    let following = allot::Client::builder("http://127.0.0.1:9")
        .bootstrap_file(path)
        .connect()
        .unwrap();
    let snapshot = following.snapshot().unwrap();
    let client = client("from-client", Provider::from_client(following)).await;
    let (of, ctx) = contexts().swap_remove(3);
    let want = snapshot.resolve("artwork-style", &ctx).unwrap();
    let d = client
        .get_string_details("artwork-style", Some(&of), None)
        .await
        .unwrap();
    assert_eq!(
        (d.value.as_str(), d.variant.as_deref()),
        (want.value.as_str().unwrap(), Some(want.variant))
    );

    let empty = allot::Client::builder("http://127.0.0.1:9")
        .connect()
        .unwrap();
    assert_eq!(
        Provider::from_client(empty).status(),
        ProviderStatus::NotReady
    );
}
