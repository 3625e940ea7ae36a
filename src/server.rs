//! Server wiring: binds the listeners, starts the background tasks, serves until shutdown.
//!
//! Owns: the two listeners, the background tasks (JWKS warm-up, config and certificate reload,
//! rate-limit housekeeping), and the shutdown sequence (report not-ready, stop accepting, let
//! in-flight requests finish within `shutdown_grace`); [`conn`] the connections themselves.
//! Must not: contain request logic (see `http`) or build components (see `app`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use crate::app::{AppState, Check, StartError};
use crate::config::{Config, RawConfig};
use crate::http;

pub mod conn;
mod deadline;
pub use conn::{ConnEvents, ConnLimits, serve, serve_on_workers, serve_with_events};

/// The two bound listeners.
pub struct Listeners {
    pub public: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> Result<Listeners, StartError> {
        Ok(Listeners { public: bind(config.server.listen).await?, admin: bind(config.server.admin_listen).await? })
    }
}

async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr: addr.to_string(), source })
}

/// Where the config came from, for live reload: the file and the raw config in effect.
pub struct Reload {
    pub path: std::path::PathBuf,
    pub initial: RawConfig,
    /// SHA-256 of the file `initial` was read from, when known.
    pub initial_sha256: Option<[u8; 32]>,
}

/// Runs the gateway until `shutdown` completes, then drains within `shutdown_grace`. With
/// `config_path`, the config is reloaded on SIGHUP and when the file changes.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
    config_path: Option<std::path::PathBuf>,
    dropped_log_lines: crate::logging::DroppedLines,
) -> Result<(), StartError> {
    let reload =
        config_path.map(|path| Reload { path, initial: config.raw.clone(), initial_sha256: config.source_sha256 });
    let state = AppState::build(config)?;
    state.metrics.count_dropped_log_lines(dropped_log_lines);
    run_with_state(state, listeners, shutdown, reload).await;
    Ok(())
}

/// Runs a built gateway (tests and `demo` build the state themselves).
///
/// Shutdown: readiness turns 503 at once; the public listener stops accepting and in-flight
/// requests get up to `shutdown_grace` to finish; then the admin listener closes.
pub async fn run_with_state(
    state: Arc<AppState>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
    reload: Option<Reload>,
) {
    let (public_stop, public_rx) = watch::channel(false);
    let (admin_stop, admin_rx) = watch::channel(false);
    let mut background = JoinSet::new();
    for tid in state.exchange.entra().tenants().to_vec() {
        let state = state.clone();
        background.spawn(async move { warm_jwks(&state, &tid).await });
    }
    let feed_state = state.clone();
    background.spawn(async move { feed_state.access.follow_revocations().await });
    background.spawn(state.sync.clone().run());
    background.spawn(state.directory.clone().maintain());
    if let Some(Reload { path, initial, initial_sha256 }) = reload {
        background.spawn(crate::reload::config_reloader(state.clone(), path, initial, initial_sha256));
    }
    if let Some(cert) = state.server.listener_tls.clone() {
        background.spawn(crate::reload::tls_reloader(cert, state.metrics.clone()));
    }
    let limiter_state = state.clone();
    background.spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            limiter_state.limits.retain_recent();
        }
    });
    let grace = state.server.shutdown_grace;
    let limits = ConnLimits::from_config(&state.server);
    let tls = match &state.server.listener_tls {
        Some(cert) => match cert.server_config() {
            Ok(cfg) => Some(tokio_rustls::TlsAcceptor::from(cfg)),
            Err(e) => {
                tracing::error!(error = %e, "cannot build the TLS listener");
                return;
            }
        },
        None => None,
    };
    let public_state = state.clone();
    let events = ConnEvents::new(state.metrics.clone());
    let workers = state.server.workers;
    let public =
        tokio::spawn(serve_on_workers(listeners.public, tls, public_rx, limits, events, workers, move |worker| {
            let state = crate::app::WorkerState::new(public_state.clone());
            move |req, peer| http::public(state.clone(), req, peer, worker)
        }));
    let admin_state = state.clone();
    let admin = tokio::spawn(serve(listeners.admin, None, admin_rx, limits, move |req, peer| {
        http::admin::handle(admin_state.clone(), req, peer)
    }));
    shutdown.await;
    tracing::info!(grace_secs = grace.as_secs(), "shutting down: not ready, draining in-flight requests");
    state.begin_shutdown();
    let _ = public_stop.send(true);
    let _ = public.await;
    background.abort_all();
    let _ = admin_stop.send(true);
    let _ = admin.await;
    // The exporter's flush blocks (up to its timeout): off the runtime's threads.
    let flushing = state.clone();
    let _ = tokio::task::spawn_blocking(move || flushing.telemetry.shutdown()).await;
    tracing::info!("shutdown complete");
}

/// Fetches a tenant's JWKS at start-up, retrying with backoff until it works.
async fn warm_jwks(state: &AppState, tid: &str) {
    let mut delay = Duration::from_millis(500);
    loop {
        match state.exchange.entra().jwks().warm(tid).await {
            Ok(n) => {
                tracing::info!(tid, keys = n, "Entra signing keys loaded");
                return;
            }
            Err(e) => {
                tracing::warn!(tid, error = %e, retry_in_ms = delay.as_millis() as u64, "Entra signing keys not loaded yet")
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}
