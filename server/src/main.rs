//! `allot-server` binary: parses settings, starts the server (see `allot_server::app`), and
//! shuts it down gracefully on SIGTERM or Ctrl-C.

use anyhow::Context as _;
use clap::Parser;

use allot_server::app;
use allot_server::settings::Settings;

/// mimalloc rather than glibc's malloc: a request makes a few dozen small allocations (the
/// context's strings, axum's boxed routes and futures, header maps, the response buffer), which
/// mimalloc serves in far fewer instructions (BENCHMARKS.md, "Server handler path").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let server = app::start(settings)
        .await
        .context("starting allot-server")?;
    shutdown_signal().await;
    tracing::info!("shutting down: draining requests and flushing the assignment log");
    server.shutdown().await
}

/// Completes on Ctrl-C or (on Unix) SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
