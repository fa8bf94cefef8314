//! `allot-hello`: the hello-world floor for server benchmarks (issue 7).
//!
//! An axum server with one handler, `POST /v1/allocate`, that ignores its body and answers a
//! fixed `{"revision":1}`, built and served the way allot-server serves its evaluation port
//! (axum 0.8, TCP_NODELAY, multi-threaded tokio). Measured in the same run as allot-server, it
//! shows what HTTP and the runtime cost on this machine, so allot's own cost is the difference.

use std::net::SocketAddr;

use anyhow::Context as _;
use axum::Router;
use axum::http::header;
use axum::routing::post;
use axum::serve::ListenerExt;
use clap::Parser;

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "Hello-world HTTP floor for allot server benchmarks")]
struct Args {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:8016")]
    addr: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let app = Router::new().route(
        "/v1/allocate",
        post(|| async {
            (
                [(header::CONTENT_TYPE, "application/json")],
                r#"{"revision":1}"#,
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("binding {}", args.addr))?;
    eprintln!("allot-hello listening on {}", args.addr);
    // Same as allot-server: Nagle off on every accepted connection.
    let listener = listener.tap_io(|s| {
        let _ = s.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
