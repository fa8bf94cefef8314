//! Crash safety of the persisted config: the real `allot-server` binary is killed with SIGKILL
//! at varying moments while an admin PUT is in flight, then restarted on the same
//! `--state-dir`. Every restart must come up (a torn state file would fail startup) serving
//! either the config from before the PUT or the one it sent, and the new one whenever the PUT
//! was acknowledged (persistence happens before the 200).

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const TOKEN: &str = "crash-test-token";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server {
    child: Child,
    mgmt: String,
}

impl Server {
    async fn start(state: &Path) -> Self {
        let (http, grpc, mgmt) = (free_port(), free_port(), free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_allot-server"))
            .args([
                "--state-dir",
                state.to_str().unwrap(),
                "--admin-token",
                TOKEN,
            ])
            .args(["--http-addr", &format!("127.0.0.1:{http}")])
            .args(["--grpc-addr", &format!("127.0.0.1:{grpc}")])
            .args(["--mgmt-addr", &format!("127.0.0.1:{mgmt}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Self {
            child,
            mgmt: format!("http://127.0.0.1:{mgmt}"),
        };
        // Bounded wait for readiness; a server that exits (e.g. a corrupt state file) fails here.
        for _ in 0..200 {
            if let Ok(r) = reqwest::get(format!("{}/readyz", server.mgmt)).await
                && r.status().is_success()
            {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("allot-server did not become ready on {}", server.mgmt);
    }

    /// The serving config's content hash.
    async fn content_hash(&self) -> String {
        let text = reqwest::get(format!("{}/admin/config", self.mgmt))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_str(&text).unwrap();
        body["content_hash"].as_str().unwrap().to_owned()
    }

    fn kill(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

/// A config whose content differs per `k`.
fn config(k: u32) -> String {
    format!(
        r#"{{"layers": [{{"id": "home", "buckets": {}}}],
            "experiments": [{{"id": "e", "layer": "home", "ranges": ["0..50"],
                              "cells": [{{"id": "a", "flags": {{"f": "on"}}}}, {{"id": "b"}}]}}],
            "flags": [{{"key": "f", "type": "bool", "variants": {{"on": true, "off": false}}, "default": "off"}}]}}"#,
        100 + k
    )
}

fn hash_of(k: u32) -> String {
    format!(
        "{:016x}",
        allot::Config::parse(&config(k)).unwrap().content_hash()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_admin_puts_leaves_old_or_new_config() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path()).await;
    let client = reqwest::Client::new();
    let mut serving = server.content_hash().await; // the embedded demo at first
    let (mut acknowledged, mut lost) = (0, 0);
    for k in 0..24u32 {
        let put = tokio::spawn(
            client
                .put(format!("{}/admin/config", server.mgmt))
                .bearer_auth(TOKEN)
                .header("content-type", "application/json")
                .body(config(k))
                .send(),
        );
        // Kill at a different moment each round: before, during and after the PUT's work
        // (parse, compile, write, fsync, rename take a few milliseconds here).
        tokio::time::sleep(Duration::from_micros(u64::from(k % 8) * 1500)).await;
        server.kill();
        let result = put.await.unwrap();
        let ok = matches!(&result, Ok(r) if r.status().is_success());

        server = Server::start(dir.path()).await;
        let now = server.content_hash().await;
        let new = hash_of(k);
        if ok {
            acknowledged += 1;
            assert_eq!(now, new, "round {k}: an acknowledged PUT was lost");
        } else {
            if now != new {
                lost += 1;
            }
            assert!(
                now == serving || now == new,
                "round {k}: serving {now}, neither old {serving} nor new {new}"
            );
        }
        serving = now;
    }
    // The kills must interrupt some PUTs and let others finish, or the test proves little.
    assert!(acknowledged > 0, "no PUT ever completed before the kill");
    assert!(acknowledged < 24, "the kill never interrupted a PUT");
    eprintln!(
        "{acknowledged} of 24 PUTs acknowledged before the kill; {lost} interrupted before persisting"
    );
    server.kill();
}
