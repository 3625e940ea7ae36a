//! Live reload: the config file on SIGHUP or when it changes (Kubernetes ConfigMap updates), and
//! the listener's TLS certificate when its files change.
//!
//! Owns: watching the files' directories (Kubernetes swaps a symlink, it never edits the file),
//! deciding what a new config changes, applying `authorization` and `proxy.routes` atomically
//! (in-flight requests keep the snapshot they started with; no connection is dropped), refusing
//! an invalid new config while the old one keeps serving, and counting reloads. Must not:
//! apply settings that need a restart (it says which ones in the log instead).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::app::AppState;
use crate::config::{Config, ConfigError, FileChecks, ProcessEnv};
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::proxy::routes::RouteTable;
use crate::tls::ReloadingCert;

/// Files are also re-checked this often, for mounts that send no change events.
const POLL_INTERVAL: Duration = Duration::from_secs(30);

/// Watches the directories of `files`; each change event sends `()` (coalesced).
fn watch(files: &[&Path]) -> Option<(RecommendedWatcher, mpsc::Receiver<()>)> {
    let (tx, rx) = mpsc::channel(1);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "file watching unavailable; polling only"))
    .ok()?;
    for f in files {
        let dir = f.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch; polling only");
        }
    }
    Some((watcher, rx))
}

fn hash(path: &Path) -> Option<[u8; 32]> {
    std::fs::read(path).ok().map(|b| Sha256::digest(&b).into())
}

/// Waits for the next trigger: a file event, the poll interval, or (with `hup`) SIGHUP.
/// Returns true for SIGHUP (reload even when the file looks unchanged).
async fn next_trigger(events: &mut Option<mpsc::Receiver<()>>, hup: &mut Option<tokio::signal::unix::Signal>) -> bool {
    let event = async {
        if let Some(rx) = events.as_mut()
            && rx.recv().await.is_some()
        {
            return;
        }
        std::future::pending::<()>().await
    };
    let signal = async {
        if let Some(s) = hup.as_mut()
            && s.recv().await.is_some()
        {
            return;
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        () = event => false,
        () = signal => true,
        () = tokio::time::sleep(POLL_INTERVAL) => false,
    }
}

/// Reloads the config at `path` on SIGHUP and on change, for as long as the task runs.
pub async fn config_reloader(state: Arc<AppState>, path: PathBuf) {
    let watched = watch(&[&path]);
    let (_watcher, mut events) = match watched {
        Some((w, rx)) => (Some(w), Some(rx)),
        None => (None, None),
    };
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| tracing::warn!(error = %e, "no SIGHUP handler"))
        .ok();
    // What is in effect is the config loaded at start, whatever the file says by the time this
    // task runs: the first check compares against it, never against a hash taken here.
    let mut current = (*state.config).clone();
    let mut last = None;
    // The first check runs at once, after the watcher is registered: a change made before it
    // was watching is caught here, any later one sends an event.
    let mut first = true;
    loop {
        let forced = if std::mem::take(&mut first) { false } else { next_trigger(&mut events, &mut hup).await };
        let now = hash(&path);
        if !forced && now.is_some() && now == last {
            continue;
        }
        last = now;
        match reload(&state, &current, &path, forced) {
            Ok(Some(new)) => current = new,
            Ok(None) => {}
            Err(e) => {
                state.metrics.config_reloads_total.with_label_values(&["error"]).inc();
                tracing::error!(problems = %e.to_string().trim_end(), "new configuration refused; the previous one keeps serving");
            }
        }
    }
}

fn section<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_default()
}

/// Loads and applies a new config; returns it (the new "current") when valid, `None` when a
/// file event brought nothing new (SIGHUP always reloads).
pub fn reload(state: &AppState, current: &Config, path: &Path, forced: bool) -> Result<Option<Config>, ConfigError> {
    let new = Config::load(path, &ProcessEnv, FileChecks::Read)?;
    if !forced && section(&new) == section(current) {
        return Ok(None);
    }
    let mut applied = Vec::new();
    let routes_changed = section(&new.proxy.routes) != section(&current.proxy.routes);
    if section(&new.authorization) != section(&current.authorization) || routes_changed {
        state.policy.store(Arc::new(Policy::from_config(&new)));
        applied.push("authorization");
    }
    if routes_changed || section(&new.proxy.forward_auth) != section(&current.proxy.forward_auth) {
        state.routes.store(Arc::new(RouteTable::from_config(&new.proxy)));
        applied.push("proxy.routes, proxy.forward_auth");
    }
    let restart: Vec<&str> = [
        ("server", section(&new.server) != section(&current.server)),
        ("entra", section(&new.entra) != section(&current.entra)),
        ("issuer", section(&new.issuer) != section(&current.issuer)),
        ("cache", section(&new.cache) != section(&current.cache)),
        ("logging", section(&new.logging) != section(&current.logging)),
        (
            "proxy (other than routes)",
            new.proxy.identity_header_prefix != current.proxy.identity_header_prefix
                || new.proxy.forward_token != current.proxy.forward_token,
        ),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect();
    if !restart.is_empty() {
        tracing::warn!(sections = %restart.join(", "), "these changes take effect after a restart");
    }
    state.metrics.config_reloads_total.with_label_values(&["success"]).inc();
    tracing::info!(applied = %applied.join(", "), "configuration reloaded");
    Ok(Some(new))
}

/// Swaps the listener certificate when its files change.
pub async fn tls_reloader(cert: Arc<ReloadingCert>, metrics: Metrics) {
    let files = cert.files();
    let (_watcher, mut events) = match watch(&files) {
        Some((w, rx)) => (Some(w), Some(rx)),
        None => (None, None),
    };
    let mut no_hup = None;
    loop {
        next_trigger(&mut events, &mut no_hup).await;
        match cert.reload() {
            Ok(false) => {}
            Ok(true) => {
                metrics.tls_reloads_total.with_label_values(&["success"]).inc();
                tracing::info!("TLS certificate reloaded");
            }
            Err(e) => {
                metrics.tls_reloads_total.with_label_values(&["error"]).inc();
                tracing::error!(error = %e, "new TLS certificate refused; the previous one keeps serving");
            }
        }
    }
}
