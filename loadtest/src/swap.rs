//! Config swaps during a run: `PUT /admin/config` on the server's management port at a fixed
//! interval, cycling through the given documents, so that the load shows what a swap costs
//! the requests around it.
//!
//! One HTTP/1.1 connection, reopened after a failure; a swap that fails is counted, never
//! retried. The swapper stops at the end of the measured window.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::header::{AUTHORIZATION, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;

/// Where and what to swap.
#[derive(Debug, Clone)]
pub struct Swap {
    /// The admin endpoint, e.g. `http://127.0.0.1:8014/admin/config`.
    pub url: String,
    /// The admin bearer token.
    pub token: String,
    /// Time between two swaps.
    pub every: Duration,
    /// Config documents (YAML or JSON), pushed in turn; at least two, so every push changes
    /// the serving config.
    pub documents: Vec<String>,
}

/// What the swapper did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SwapReport {
    /// Swaps the server accepted (HTTP 200).
    pub ok: u64,
    /// Swaps that failed, of any kind.
    pub failed: u64,
    /// Failures by kind (`connect`, `io`, `timeout`, `http_status_XXX`).
    pub failed_by_kind: BTreeMap<String, u64>,
}

/// A validated [`Swap`], ready to run.
#[derive(Debug)]
pub(crate) struct Swapper {
    addr: String,
    host: HeaderValue,
    path: Uri,
    auth: HeaderValue,
    every: Duration,
    documents: Vec<Bytes>,
}

// === impl Swapper ===

impl Swapper {
    /// Checks `swap` before any load is sent.
    pub(crate) fn new(swap: &Swap) -> anyhow::Result<Self> {
        ensure!(
            swap.documents.len() >= 2,
            "config swaps need at least two documents to alternate"
        );
        ensure!(!swap.every.is_zero(), "the swap interval must be positive");
        let url: Uri = swap
            .url
            .parse()
            .with_context(|| format!("bad admin URL `{}`", swap.url))?;
        if url.scheme_str() != Some("http") {
            bail!("{url}: only http:// admin URLs are supported");
        }
        let authority = url.authority().with_context(|| format!("{url}: no host"))?;
        let path = match url.path_and_query().map(|p| p.as_str()) {
            None | Some("" | "/") => Uri::from_static("/admin/config"),
            Some(p) => p.parse()?,
        };
        Ok(Self {
            addr: format!(
                "{}:{}",
                authority.host(),
                authority.port_u16().unwrap_or(80)
            ),
            host: HeaderValue::from_str(authority.as_str())?,
            path,
            auth: HeaderValue::from_str(&format!("Bearer {}", swap.token))
                .context("the admin token is not a valid header value")?,
            every: swap.every,
            documents: swap
                .documents
                .iter()
                .map(|d| Bytes::from(d.clone()))
                .collect(),
        })
    }

    /// Swaps every `every` from `start` (the first one an interval later) until `end`.
    pub(crate) async fn run(self, start: Instant, end: Instant) -> SwapReport {
        let mut report = SwapReport::default();
        let mut sender = None;
        let end = tokio::time::Instant::from_std(end);
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::from_std(start + self.every),
            self.every,
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for document in self.documents.iter().cycle() {
            tokio::select! {
                _ = tick.tick() => {}
                _ = tokio::time::sleep_until(end) => break,
            }
            let put = self.put(&mut sender, document.clone());
            // A swap never outlives the run, and a slow one delays the next.
            let result = match tokio::time::timeout_at(end + self.every, put).await {
                Ok(r) => r,
                Err(_) => Err("timeout".to_owned()),
            };
            match result {
                Ok(()) => report.ok += 1,
                Err(kind) => {
                    sender = None;
                    report.failed += 1;
                    *report.failed_by_kind.entry(kind).or_default() += 1;
                }
            }
        }
        report
    }

    async fn put(
        &self,
        sender: &mut Option<http1::SendRequest<Full<Bytes>>>,
        document: Bytes,
    ) -> Result<(), String> {
        let s = match sender {
            Some(s) if !s.is_closed() => s,
            _ => sender.insert(self.open().await.map_err(|_| "connect".to_owned())?),
        };
        s.ready().await.map_err(|_| "io".to_owned())?;
        let request = Request::builder()
            .method(Method::PUT)
            .uri(self.path.clone())
            .header(HOST, self.host.clone())
            .header(AUTHORIZATION, self.auth.clone())
            .body(Full::new(document))
            .map_err(|_| "io".to_owned())?;
        let response = s.send_request(request).await.map_err(|_| "io".to_owned())?;
        let status = response.status();
        response
            .into_body()
            .collect()
            .await
            .map_err(|_| "io".to_owned())?;
        if status == StatusCode::OK {
            Ok(())
        } else {
            Err(format!("http_status_{}", status.as_u16()))
        }
    }

    async fn open(&self) -> anyhow::Result<http1::SendRequest<Full<Bytes>>> {
        let stream = TcpStream::connect(&self.addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn swap(documents: usize) -> Swap {
        Swap {
            url: "http://127.0.0.1:8014".to_owned(),
            token: "t".to_owned(),
            every: Duration::from_millis(100),
            documents: vec!["layers: []".to_owned(); documents],
        }
    }

    #[test]
    fn validates_before_load() {
        let s = Swapper::new(&swap(2)).unwrap();
        assert_eq!(s.path, "/admin/config");
        assert_eq!(s.addr, "127.0.0.1:8014");
        assert!(Swapper::new(&swap(1)).is_err());
        assert!(
            Swapper::new(&Swap {
                every: Duration::ZERO,
                ..swap(2)
            })
            .is_err()
        );
        assert!(
            Swapper::new(&Swap {
                url: "https://x".to_owned(),
                ..swap(2)
            })
            .is_err()
        );
    }
}
