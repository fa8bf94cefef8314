//! The real server on real sockets (`127.0.0.1:0`): config file edits and admin PUTs swap the
//! config while a client keeps calling with zero failed requests; a bad file is rejected and
//! the old revision keeps serving; a restart on the same `--state-dir` serves the same
//! revision and config.

mod http_support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use allot_server::app::{self, Server};
use allot_server::settings::Settings;
use http_support::{CONFIG, eventually};
use serde_json::Value;

const TOKEN: &str = "live-token";

/// The test config with one more layer, so each generation is a new document.
fn config_gen(n: u32) -> String {
    CONFIG.replacen(
        "  - { id: device, unit: device_id, buckets: 100 }",
        &format!("  - {{ id: device, unit: device_id, buckets: 100 }}\n  - {{ id: gen-{n} }}"),
        1,
    )
}

fn settings(args: &[&str]) -> Settings {
    let mut s = Settings::local();
    let parsed = <Settings as clap::Parser>::try_parse_from(
        ["allot-server"].iter().chain(args.iter()).copied(),
    )
    .unwrap();
    s.config = parsed.config;
    s.state_dir = parsed.state_dir;
    s.admin_token = parsed.admin_token;
    s.config_poll = parsed.config_poll;
    s
}

/// Writes `text` to `path` the way editors and ConfigMaps do: a temp file renamed over it.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    seen: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

/// A client calling `/v1/allocate` in a loop, recording the highest revision it saw.
fn load(server: &Server) -> Load {
    let url = format!("http://{}/v1/allocate", server.http_addr);
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(AtomicU64::new(0));
    let (s, o, f, sn) = (stop.clone(), ok.clone(), failed.clone(), seen.clone());
    let task = tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut errors = Vec::new();
        let mut i = 0u64;
        while !s.load(Ordering::Relaxed) {
            i += 1;
            let body = format!(r#"{{"context":{{"targetingKey":"m-{i}","device_id":"d-{i}"}}}}"#);
            let res = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            match res {
                Ok(r) if r.status().is_success() => {
                    let bytes = r.bytes().await.unwrap_or_default();
                    match serde_json::from_slice::<Value>(&bytes) {
                        Ok(v) => {
                            sn.fetch_max(v["revision"].as_u64().unwrap_or(0), Ordering::Relaxed);
                            o.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            f.fetch_add(1, Ordering::Relaxed);
                            errors.push(format!("bad body: {e}"));
                        }
                    }
                }
                Ok(r) => {
                    f.fetch_add(1, Ordering::Relaxed);
                    errors.push(format!("status {}", r.status()));
                }
                Err(e) => {
                    f.fetch_add(1, Ordering::Relaxed);
                    errors.push(format!("request: {e}"));
                }
            }
        }
        errors
    });
    Load {
        stop,
        ok,
        failed,
        seen,
        task,
    }
}

impl Load {
    /// Waits (at most 5 s) until the client has been served `revision`.
    async fn observes(&self, revision: u64) {
        let seen = self.seen.clone();
        let got = eventually(Duration::from_secs(5), || {
            let seen = seen.clone();
            async move { (seen.load(Ordering::Relaxed) >= revision).then_some(()) }
        })
        .await;
        assert!(
            got.is_some(),
            "client never saw revision {revision} (saw {})",
            self.seen.load(Ordering::Relaxed)
        );
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self.task.await.unwrap();
        assert_eq!(
            self.failed.load(Ordering::Relaxed),
            0,
            "failed requests: {errors:?}"
        );
        self.ok.load(Ordering::Relaxed)
    }
}

async fn admin_put(server: &Server, body: &str) -> (u16, Value) {
    let res = reqwest::Client::new()
        .put(format!("http://{}/admin/config", server.mgmt_addr))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let body = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap_or(Value::Null);
    (status, body)
}

async fn get_json(url: String) -> Value {
    let res = reqwest::get(url).await.unwrap();
    serde_json::from_slice(&res.bytes().await.unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_edits_and_admin_puts_swap_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("allot.yaml");
    std::fs::write(&file, config_gen(0)).unwrap();
    let server = app::start(settings(&[
        "--config",
        file.to_str().unwrap(),
        "--admin-token",
        TOKEN,
    ]))
    .await
    .unwrap();
    assert_eq!(server.store().revision(), Some(1));
    let load = load(&server);
    load.observes(1).await;

    // (a) File edits: renamed over, and rewritten in place.
    let mut expected = 1;
    for n in 1..=4 {
        if n % 2 == 0 {
            std::fs::write(&file, config_gen(n)).unwrap();
        } else {
            replace_file(&file, &config_gen(n));
        }
        expected += 1;
        load.observes(expected).await;
        assert_eq!(server.store().revision(), Some(expected));
    }

    // A bad file is rejected: the old revision keeps serving, the failure is counted.
    replace_file(&file, "layers: [{ id: bad }, { id: bad }]");
    let metrics_url = format!("http://{}/metrics", server.mgmt_addr);
    let counted = eventually(Duration::from_secs(5), || {
        let url = metrics_url.clone();
        async move {
            let text = reqwest::get(url).await.ok()?.text().await.ok()?;
            text.contains(r#"allot_config_reloads_total{source="file",result="failure"} 1"#)
                .then_some(())
        }
    })
    .await;
    assert!(
        counted.is_some(),
        "bad file was not counted as a failed reload"
    );
    assert_eq!(server.store().revision(), Some(expected));

    // (b) Admin PUTs while the client keeps going.
    for n in 10..13 {
        let (status, body) = admin_put(&server, &config_gen(n)).await;
        assert_eq!(status, 200, "{body}");
        expected += 1;
        assert_eq!(body["revision"], expected);
        load.observes(expected).await;
    }

    // Fixing the file makes it live again on top of the admin revisions.
    replace_file(&file, &config_gen(20));
    expected += 1;
    load.observes(expected).await;

    let served = load.finish().await;
    assert!(served > 0);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_serves_the_persisted_revision() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let state_arg = state.to_str().unwrap().to_owned();
    let first = app::start(settings(&[
        "--state-dir",
        &state_arg,
        "--admin-token",
        TOKEN,
    ]))
    .await
    .unwrap();
    // The embedded demo serves first.
    assert_eq!(first.store().revision(), Some(1));
    let (status, body) = admin_put(&first, &config_gen(1)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = admin_put(&first, &config_gen(2)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["revision"], 3);
    let before = get_json(format!("http://{}/v1/config", first.http_addr)).await;
    first.shutdown().await.unwrap();

    let second = app::start(settings(&["--state-dir", &state_arg]))
        .await
        .unwrap();
    let after = get_json(format!("http://{}/v1/config", second.http_addr)).await;
    assert_eq!(after, before, "same revision, hash and document");
    assert_eq!(after["revision"], 3);
    second.shutdown().await.unwrap();

    // With --config naming the same document, a restart adds no revision; a different one does.
    let file = dir.path().join("same.yaml");
    std::fs::write(&file, config_gen(2)).unwrap();
    let third = app::start(settings(&[
        "--state-dir",
        &state_arg,
        "--config",
        file.to_str().unwrap(),
    ]))
    .await
    .unwrap();
    assert_eq!(third.store().revision(), Some(3));
    third.shutdown().await.unwrap();
    std::fs::write(&file, config_gen(3)).unwrap();
    let fourth = app::start(settings(&[
        "--state-dir",
        &state_arg,
        "--config",
        file.to_str().unwrap(),
    ]))
    .await
    .unwrap();
    assert_eq!(fourth.store().revision(), Some(4));
    fourth.shutdown().await.unwrap();
    let fifth = app::start(settings(&["--state-dir", &state_arg]))
        .await
        .unwrap();
    assert_eq!(
        fifth.store().revision(),
        Some(4),
        "the file's revision was persisted"
    );
    fifth.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_file_at_startup_fails_without_state() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, "layers: [{ id: a }, { id: a }]").unwrap();
    let err = app::start(settings(&["--config", file.to_str().unwrap()]))
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("duplicate layer id"), "{err:#}");
}
