//! Assembles a running server from [`Settings`]: loads the first config, binds the three ports
//! (TLS on all of them with `--tls-cert`/`--tls-key`, and `--max-connections` on the evaluation
//! ports, see [`crate::listen`]), puts the evaluation APIs behind one [`Guard`] (client tokens,
//! saturation shedding with its probe, concurrency limit, request timeout), starts the
//! watchers, and shuts everything down in order.
//!
//! Startup order of config sources: the state persisted in `--state-dir` (same revision as
//! before the restart), then the `--config` file on top of it (an identical document is not a
//! new revision), else the embedded demo unless `--upstream` will deliver one. Shutdown: stop
//! accepting, drain in-flight requests on every port, stop the watchers, then flush the
//! assignment log.

use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::access::ClientTokens;
use crate::admin::{self, AdminState};
use crate::guard::{self, Guard, GuardOptions};
use crate::listen::{self, HttpLimits, Listener};
use crate::metrics::Metrics;
use crate::service::{Limits, Service};
use crate::settings::Settings;
use crate::source::{self, FileError};
use crate::state::{ApplyError, ConfigStore, Source};
use crate::{grpc, http, log, upstream};

/// A running server.
#[derive(Debug)]
pub struct Server {
    /// The bound evaluation HTTP address.
    pub http_addr: SocketAddr,
    /// The bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// The bound management address.
    pub mgmt_addr: SocketAddr,
    /// The service every transport calls.
    pub service: Service,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    cancel: CancellationToken,
    stop: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)>,
    log_writer: Option<log::Writer>,
}

/// Loads the first config, binds every port and starts serving.
pub async fn start(settings: Settings) -> anyhow::Result<Server> {
    let metrics = Metrics::new();
    // Access and transport settings first: a bad one fails before any config is touched.
    let tls = match (&settings.tls_cert, &settings.tls_key) {
        (Some(cert), Some(key)) => Some(listen::server_config(cert, key)?),
        (None, None) => None,
        (Some(_), None) => bail!("--tls-cert is set but --tls-key is not: give both or neither"),
        (None, Some(_)) => bail!("--tls-key is set but --tls-cert is not: give both or neither"),
    };
    let tokens = match &settings.client_tokens {
        Some(path) => {
            let tokens = ClientTokens::load(path)?;
            if let Some(admin) = &settings.admin_token
                && tokens.contains(admin.as_bytes())
            {
                bail!(
                    "--client-tokens {}: a client token equals --admin-token; they must differ",
                    path.display()
                );
            }
            tracing::info!(
                count = tokens.len(),
                "evaluation APIs require a client token"
            );
            Some(tokens)
        }
        None => None,
    };
    let guard = Guard::new(GuardOptions {
        tokens,
        max_concurrency: usize::try_from(settings.max_concurrency).unwrap_or(usize::MAX),
        request_timeout: settings.request_timeout(),
        in_flight: metrics.in_flight_gauge(),
    });
    let store = Arc::new(ConfigStore::new());
    load_initial(&settings, &store, &metrics).await?;

    let limits = Limits {
        max_context_keys: settings.max_context_keys,
        stamp_budget: settings.stamp_budget,
    };
    let mut service = Service::new(store.clone(), limits).with_metrics(metrics.clone());
    let mut log_writer = None;
    if let Some(options) = settings.assignment_log_options() {
        let (log, writer) = log::open(&options, Some(metrics.clone()))
            .with_context(|| format!("opening assignment log {:?}", options.target))?;
        service = service.with_assignment_log(log);
        log_writer = Some(writer);
    }

    let handshake_timeout = Duration::from(settings.tls_handshake_timeout);
    let limits = HttpLimits {
        header_read_timeout: Duration::from(settings.header_read_timeout),
        max_header_bytes: usize::try_from(settings.max_header_bytes).unwrap_or(usize::MAX),
        drain_timeout: grpc::DRAIN_TIMEOUT,
    };

    let bind = |addr: SocketAddr, what: &'static str, alpn: &'static [&'static [u8]]| {
        let tls = tls.as_deref().map(|c| listen::acceptor(c, alpn));
        async move {
            let tcp = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the {what} port {addr}"))?;
            anyhow::Ok(Listener::new(tcp, tls, handshake_timeout))
        }
    };
    let mut http_listener = bind(settings.http_addr, "HTTP", listen::ALPN_HTTP).await?;
    let mut grpc_listener = bind(settings.grpc_addr, "gRPC", listen::ALPN_GRPC).await?;
    if let Some(max) = settings.max_connections() {
        let refusal = guard::refusal::<guard::Http>(Some(&metrics));
        http_listener = http_listener.with_max_connections(max, refusal);
        let refusal = guard::refusal::<guard::Grpc>(Some(&metrics));
        grpc_listener = grpc_listener.with_max_connections(max, refusal);
    }
    let mgmt_listener = bind(settings.mgmt_addr, "management", listen::ALPN_HTTP).await?;
    let http_addr = http_listener.local_addr()?;
    let grpc_addr = grpc_listener.local_addr()?;
    let mgmt_addr = mgmt_listener.local_addr()?;

    let cancel = CancellationToken::new();
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)> = Vec::new();

    if let Some(options) = settings.saturation() {
        let (g, c) = (guard.clone(), cancel.clone());
        tasks.push((
            "saturation probe",
            tokio::spawn(async move {
                guard::watch_saturation(g, options, c).await;
                Ok(())
            }),
        ));
    }

    let app = http::guarded(service.clone(), &guard);
    let c = cancel.clone();
    tasks.push((
        "http",
        tokio::spawn(async move {
            listen::serve_http(http_listener, app, limits, c.cancelled_owned())
                .await
                .context("HTTP server")
        }),
    ));

    let mgmt = admin::router(AdminState {
        service: service.clone(),
        token: settings.admin_token.as_deref().map(Arc::from),
        metrics: metrics.clone(),
        private_reads: guard.requires_tokens(),
    });
    let c = cancel.clone();
    tasks.push((
        "management",
        tokio::spawn(async move {
            listen::serve_http(mgmt_listener, mgmt, limits, c.cancelled_owned())
                .await
                .context("management server")
        }),
    ));

    let c = cancel.clone();
    let svc = service.clone();
    tasks.push((
        "grpc",
        tokio::spawn(async move {
            grpc::serve_with(grpc_listener, svc, &guard, limits, c.cancelled_owned()).await
        }),
    ));

    if let Some(path) = settings.config.clone() {
        let (s, m, c) = (store.clone(), metrics.clone(), cancel.clone());
        let interval = settings.poll_interval();
        tasks.push((
            "config watcher",
            tokio::spawn(async move {
                source::watch_file(path, s, m, interval, c).await;
                Ok(())
            }),
        ));
    }
    if let Some(url) = settings.upstream.clone() {
        let (s, m) = (store.clone(), metrics.clone());
        let token = settings.upstream_token.clone();
        let rx = stop_rx.clone();
        tasks.push((
            "upstream",
            tokio::spawn(async move {
                upstream::follow_authorized(url, token, s, rx, Some(m)).await;
                Ok(())
            }),
        ));
    }

    tracing::info!(
        %http_addr, %grpc_addr, %mgmt_addr,
        revision = ?store.revision(),
        "allot-server listening"
    );
    Ok(Server {
        http_addr,
        grpc_addr,
        mgmt_addr,
        service,
        metrics,
        cancel,
        stop,
        tasks,
        log_writer,
    })
}

// === impl Server ===

impl Server {
    /// The config store.
    pub fn store(&self) -> &Arc<ConfigStore> {
        self.service.store()
    }

    /// Stops accepting, drains in-flight requests, stops the watchers and flushes the
    /// assignment log. Returns the first error any part reported.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        let _ = self.stop.send(true);
        let mut first: Option<anyhow::Error> = None;
        for (name, task) in self.tasks {
            let result = match task.await {
                Ok(r) => r,
                Err(e) => Err(anyhow::anyhow!("{name} task failed: {e}")),
            };
            if let Err(e) = result {
                tracing::error!("{e:#}");
                first.get_or_insert(e);
            }
        }
        if let Some(writer) = self.log_writer
            && let Err(e) = writer.close().await
        {
            tracing::error!(error = %e, "assignment log");
            first.get_or_insert(anyhow::Error::new(e).context("flushing the assignment log"));
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Applies the first config(s) and installs persistence.
async fn load_initial(
    settings: &Settings,
    store: &Arc<ConfigStore>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<()> {
    let settings = settings.clone();
    let (store, metrics) = (store.clone(), metrics.clone());
    tokio::task::spawn_blocking(move || load_initial_blocking(&settings, &store, &metrics))
        .await
        .context("startup task")?
}

fn load_initial_blocking(
    settings: &Settings,
    store: &Arc<ConfigStore>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<()> {
    let mut persisted = None;
    if let Some(dir) = &settings.state_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating --state-dir {}", dir.display()))?;
        if let Some(state) = source::load_persisted(dir)? {
            let snap = source::apply_counted(
                store,
                metrics,
                Source::Persisted,
                &state.config,
                Some(state.revision),
            )
            .map_err(|e| match e {
                ApplyError::Invalid(errors) => anyhow::anyhow!(
                    "the persisted config in {} is rejected: {errors}",
                    dir.display()
                ),
                other => anyhow::Error::new(other),
            })?;
            tracing::info!(revision = snap.revision(), dir = %dir.display(), "serving the persisted config");
            persisted = Some((snap.revision(), snap.content_hash()));
        }
    }
    if let Some(path) = &settings.config {
        let applied = match source::read_file(path) {
            Ok(config) => source::apply_counted(store, metrics, Source::File, &config, None)
                .map_err(|e| format!("{}: {e}", path.display())),
            Err(e) => {
                if matches!(e, FileError::Invalid { .. }) {
                    metrics.reload(Source::File, false);
                }
                Err(e.to_string())
            }
        };
        match applied {
            Ok(snap) => {
                tracing::info!(revision = snap.revision(), path = %path.display(), "serving the config file");
            }
            Err(e) if store.revision().is_some() => {
                tracing::error!("{e}; serving the persisted config instead");
            }
            Err(e) => bail!("{e}"),
        }
    } else if store.revision().is_none() && settings.upstream.is_none() {
        let config = source::embedded()
            .map_err(|e| anyhow::anyhow!("the embedded demo config is rejected: {e}"))?;
        let snap = source::apply_counted(store, metrics, Source::Embedded, &config, None)
            .map_err(|e| anyhow::anyhow!("the embedded demo config is rejected: {e}"))?;
        tracing::info!(
            revision = snap.revision(),
            "serving the embedded demo config"
        );
    }
    if let Some(dir) = settings.state_dir.clone() {
        let m = metrics.clone();
        let persist = move |snap: &allot::Snapshot| {
            if let Err(e) = source::persist(&dir, snap) {
                m.persist_failure();
                tracing::error!(error = %e, dir = %dir.display(), revision = snap.revision(), "cannot persist the accepted config");
            }
        };
        // Whatever serves now came from a file or the demo if it differs from the saved state.
        if let Some(snap) = store.load_full()
            && persisted != Some((snap.revision(), snap.content_hash()))
        {
            persist(&snap);
        }
        store.set_on_accept(Box::new(persist));
    }
    Ok(())
}
