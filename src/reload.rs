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
use tokio::sync::mpsc;

use crate::app::AppState;
use crate::config::{Config, ConfigError, ProcessEnv, RawConfig};
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::tls::ReloadingCert;

/// Files are also re-checked this often, for mounts that send no change events.
const POLL_INTERVAL: Duration = Duration::from_secs(30);
/// After a change event, the file is read once no further event came for this long: a file
/// written in pieces (an editor, `cat > file`) is read whole, not half-written.
const SETTLE: Duration = Duration::from_millis(500);

/// Watches the directories of `files`; each change event (not a read) sends `()` (coalesced).
fn watch(files: &[&Path]) -> Option<(RecommendedWatcher, mpsc::Receiver<()>)> {
    let (tx, rx) = mpsc::channel(1);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // Reads are not changes: a reloader reading its files (or the other reloader's, in a
        // shared directory) would otherwise keep the other one settling, and reloads would
        // wait for the poll interval.
        if res.is_ok_and(|event| is_change(&event)) {
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

/// Whether a file event is a change (not a read: opening or closing a file unwritten).
fn is_change(event: &notify::Event) -> bool {
    !event.kind.is_access()
}

/// SHA-256 of a file's bytes (what `Config::source_sha256` holds for the file it was loaded from).
pub(crate) fn hash(path: &Path) -> Option<[u8; 32]> {
    std::fs::read(path).ok().map(|b| crate::config::source_digest(&b))
}

/// Waits for the next trigger: a file event, the poll interval, or (with `hup`) SIGHUP.
/// Returns true for SIGHUP (reload even when the file looks unchanged).
async fn next_trigger(events: &mut Option<mpsc::Receiver<()>>, hup: &mut Option<tokio::signal::unix::Signal>) -> bool {
    let event = async {
        if let Some(rx) = events.as_mut()
            && rx.recv().await.is_some()
        {
            loop {
                tokio::time::sleep(SETTLE).await;
                if rx.try_recv().is_err() {
                    return;
                }
            }
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

/// Reloads the config at `path` on SIGHUP and on change, for as long as the task runs;
/// `initial` is the raw config the gateway started with, `initial_sha256` the hash of the
/// file's bytes it was read from (when known).
pub async fn config_reloader(
    state: Arc<AppState>,
    path: PathBuf,
    initial: RawConfig,
    initial_sha256: Option<[u8; 32]>,
) {
    let watched = watch(&[&path]);
    let (_watcher, mut events) = match watched {
        Some((w, rx)) => (Some(w), Some(rx)),
        None => (None, None),
    };
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| tracing::warn!(error = %e, "no SIGHUP handler"))
        .ok();
    // What is in effect is the config loaded at start, whatever the file says by the time this
    // task runs: the first check compares against the hash of the bytes it was read from (taken
    // when they were read, never here), and parses the file again only when it differs.
    let mut current = initial;
    let mut last = initial_sha256;
    // The first check runs at once, after the watcher is registered: a change made before it
    // was watching is caught here, any later one sends an event.
    let mut first = true;
    loop {
        let forced = if std::mem::take(&mut first) { false } else { next_trigger(&mut events, &mut hup).await };
        let mut now = hash(&path);
        if !forced && now.is_some() && now == last {
            continue;
        }
        // A file still being written (the first check can run while a writer is half-way, and
        // a slow writer outlasts one settle period): read it only once it holds still.
        for _ in 0..50 {
            tokio::time::sleep(SETTLE).await;
            let again = hash(&path);
            if again == now {
                break;
            }
            now = again;
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

/// The sections of `new` that differ from `current` and take effect only after a restart.
/// Raw configs compare by value, secrets included (a changed `cache.redis_url` is seen).
pub fn restart_needed(current: &RawConfig, new: &RawConfig) -> Vec<&'static str> {
    [
        ("server", new.server != current.server),
        ("entra", new.entra != current.entra),
        ("issuer", new.issuer != current.issuer),
        ("cache", new.cache != current.cache),
        ("logging", new.logging != current.logging),
        (
            "proxy (other than routes and forward_auth)",
            new.proxy.identity_header_prefix != current.proxy.identity_header_prefix
                || new.proxy.strip_request_headers != current.proxy.strip_request_headers
                || new.proxy.identity_headers != current.proxy.identity_headers,
        ),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect()
}

/// Loads and applies a new config; returns its raw form (the new "current") when valid, `None`
/// when a file event brought nothing new (SIGHUP always reloads).
pub fn reload(
    state: &AppState,
    current: &RawConfig,
    path: &Path,
    forced: bool,
) -> Result<Option<RawConfig>, ConfigError> {
    let new = Config::load(path, &ProcessEnv)?;
    if !forced && new.raw == *current {
        return Ok(None);
    }
    let mut applied = Vec::new();
    let routes_changed = new.raw.proxy.routes != current.proxy.routes;
    if new.raw.authorization != current.authorization || routes_changed {
        state.live.policy.store(Arc::new(Policy::new(&new.authorization)));
        applied.push("authorization");
    }
    if routes_changed || new.raw.proxy.forward_auth != current.proxy.forward_auth {
        state.live.set_routes(&new.proxy, &state.metrics);
        applied.push("proxy.routes, proxy.forward_auth");
    }
    let restart = restart_needed(current, &new.raw);
    if !restart.is_empty() {
        tracing::warn!(sections = %restart.join(", "), "these changes take effect after a restart");
    }
    state.metrics.config_reloads_total.with_label_values(&["success"]).inc();
    tracing::info!(applied = %applied.join(", "), "configuration reloaded");
    Ok(Some(new.raw))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_a_watched_file_is_not_a_change() {
        use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RenameMode};
        let event = |kind| notify::Event::new(kind);
        for read in [AccessKind::Open(AccessMode::Any), AccessKind::Close(AccessMode::Read), AccessKind::Read] {
            assert!(!is_change(&event(EventKind::Access(read))), "{read:?}");
        }
        // Writing, a finished write, Kubernetes' symlink swap: changes.
        assert!(is_change(&event(EventKind::Modify(ModifyKind::Any))));
        assert!(is_change(&event(EventKind::Create(CreateKind::File))));
        assert!(is_change(&event(EventKind::Modify(ModifyKind::Name(RenameMode::To)))));
        assert!(is_change(&event(EventKind::Any)));
    }

    fn raw(extra_env: &[(&str, &str)]) -> RawConfig {
        let yaml = "entra:\n  tenants: [\"11111111-1111-1111-1111-111111111111\"]\n  \
                    client_id: \"22222222-2222-2222-2222-222222222222\"\n  graph_mode: claims\n\
                    authorization:\n  allow_any_tenant_user: true\n\
                    issuer:\n  issuer: https://gw.example\n  signing_keys: [{ kid: k1, private_key_file: /x.pem }]\n";
        let env: Vec<(String, String)> = extra_env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        crate::config::check_yaml(yaml, &env, crate::config::FileChecks::Skip).unwrap()
    }

    #[test]
    fn a_changed_secret_is_seen_as_a_change_needing_a_restart() {
        let a = raw(&[("ENTRA_GATEWAY__CACHE__REDIS_URL", "redis://:one@127.0.0.1:6379")]);
        let b = raw(&[("ENTRA_GATEWAY__CACHE__REDIS_URL", "redis://:two@127.0.0.1:6379")]);
        assert_eq!(restart_needed(&a, &b), vec!["cache"]);
        assert!(restart_needed(&a, &a.clone()).is_empty());
        let c = raw(&[("ENTRA_GATEWAY__AUTHORIZATION__ALLOWED_GROUPS", "[\"33333333-3333-3333-3333-333333333333\"]")]);
        assert!(restart_needed(&raw(&[]), &c).is_empty(), "authorization applies live");
    }
}
