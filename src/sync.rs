//! Continuous access: the directory sync (Graph delta queries) and the operator's kill switch,
//! shared by every replica.
//!
//! Owns: polling `users/delta` and `groups/delta` for the allowed groups and every group nested
//! in them (`entra.continuous_access`), with the gateway's app credentials, every
//! `poll_interval`; starting over on a 410 or `syncStateNotFound`/`resyncRequired`; backing off
//! on 429 (its `Retry-After`) and exponentially on other failures; with Redis, one replica polls
//! at a time ([`lease`]) and shares the model (`{prefix}sync:state`, sealed) and each change
//! (`{prefix}access` channel, sealed) so that every replica applies it within a second;
//! without Redis the process polls itself. The kill switch (`kill`) reaches every replica the
//! same way (`{prefix}killed:{tid}:{oid}`). What is decided lands in [`UserAccess`], which the
//! request path reads. Must not: call Graph or Redis on the request path, or grant access (the
//! sync only takes access away, or gives back what it took).

mod delta;
mod lease;
pub mod model;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::cache::StoreError;
use crate::cache::redis::RedisStore;
use crate::clock::unix_now;
use crate::directory::{AccessEvent, Directory};
use crate::graph::{DeltaError, GraphClient};
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::user_access::{DenyReason, KEEP_SECS, UserAccess, UserEntry};
use model::{Change, Model};

pub use crate::config::SyncSettings;

/// The longest back-off between failed polls.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How often a replica re-reads the shared model and kills while its feed is live.
const RESYNC_EVERY: Duration = Duration::from_secs(10);

/// How the last polls went, for readiness and `/metrics`.
#[derive(Debug, Default, Clone)]
struct Status {
    last_success: Option<u64>,
    last_error: Option<String>,
    /// Graph requests of the last successful poll.
    last_requests: u64,
}

/// The directory sync and the kill switch of one replica.
pub struct DirectorySync {
    access: Arc<UserAccess>,
    graph: Option<Arc<GraphClient>>,
    redis: Option<Arc<RedisStore>>,
    policy: Arc<ArcSwap<Policy>>,
    settings: SyncSettings,
    metrics: Metrics,
    /// Where each change is recorded as history (the PostgreSQL store keeps it).
    directory: Directory,
    /// This replica's id in the lease.
    id: String,
    /// What this replica derived or applied last (for the changes it counts).
    applied: Mutex<HashMap<String, UserEntry>>,
    status: Mutex<Status>,
}

impl DirectorySync {
    pub fn new(
        access: Arc<UserAccess>,
        graph: Option<Arc<GraphClient>>,
        redis: Option<Arc<RedisStore>>,
        policy: Arc<ArcSwap<Policy>>,
        settings: SyncSettings,
        metrics: Metrics,
        directory: Directory,
    ) -> Arc<DirectorySync> {
        Arc::new(DirectorySync {
            access,
            graph,
            redis,
            policy,
            settings,
            metrics,
            directory,
            id: uuid::Uuid::new_v4().to_string(),
            applied: Mutex::default(),
            status: Mutex::default(),
        })
    }

    pub fn enabled(&self) -> bool {
        self.settings.enabled && self.graph.is_some()
    }

    /// The readiness detail: the sync's lag is reported, never a reason to fail readiness.
    pub fn readiness_detail(&self) -> Option<String> {
        if !self.enabled() {
            return None;
        }
        let s = self.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let limit = self.settings.poll_interval.as_secs() * 3 + 10;
        Some(match s.last_success {
            Some(at) if unix_now().saturating_sub(at) <= limit => {
                format!("in sync (last success {}s ago)", unix_now().saturating_sub(at))
            }
            Some(at) => format!(
                "degraded: last success {}s ago{}",
                unix_now().saturating_sub(at),
                s.last_error.map(|e| format!(" ({e})")).unwrap_or_default()
            ),
            None if self.redis.is_some() => match s.last_error {
                Some(e) => format!("degraded: not synced yet ({e})"),
                None => "degraded: not synced yet (another replica may be polling)".into(),
            },
            None => format!("degraded: not synced yet{}", s.last_error.map(|e| format!(" ({e})")).unwrap_or_default()),
        })
    }

    /// The kill switch: every token of the user issued until now is refused on every replica;
    /// the user is let in again by a sign-in after it. Returns the new "not before".
    pub async fn kill(&self, tid: &str, oid: &str) -> Result<u64, StoreError> {
        let key = UserAccess::key(tid, oid);
        let not_before = unix_now() + 1;
        self.access.kill(&key, not_before);
        self.metrics.access_revoked_total.with_label_values(&["kill_switch"]).inc();
        tracing::warn!(tid, oid, not_before, "kill switch: every token of the user refused until they sign in again");
        self.directory.record_access(vec![(tid.into(), oid.into(), AccessEvent::Revoked(AccessEvent::KILL_SWITCH))]);
        if let Some(redis) = &self.redis {
            let stored = redis.key(&format!("killed:{key}"));
            redis.set_sealed(&stored, not_before.to_string().as_bytes(), Some(Duration::from_secs(KEEP_SECS))).await?;
            redis.publish_sealed(&self.channel(redis), format!("kill {key} {not_before}").as_bytes()).await?;
        }
        Ok(not_before)
    }

    fn channel(&self, redis: &RedisStore) -> String {
        redis.key("access")
    }

    /// Runs until dropped: the feed from the other replicas (with Redis), and the poller (when
    /// continuous access is on).
    pub async fn run(self: Arc<Self>) {
        let feed = {
            let me = self.clone();
            async move { me.follow().await }
        };
        let poll = {
            let me = self.clone();
            async move {
                if me.enabled() {
                    me.poll_loop().await
                }
            }
        };
        tokio::join!(feed, poll);
    }

    // === polling ===

    async fn poll_loop(&self) {
        let Some(graph) = self.graph.clone() else { return };
        let lease = self.redis.as_ref().map(|r| lease::Lease::new(r, &self.id));
        let mut model: Option<Model> = None;
        let mut backoff = Duration::from_secs(1);
        let mut next_poll = tokio::time::Instant::now();
        loop {
            if let (Some(lease), Some(redis)) = (&lease, &self.redis) {
                let (held, new) = lease.refresh(redis).await;
                if !held {
                    model = None;
                    tokio::time::sleep(lease::EVERY).await;
                    continue;
                }
                if new {
                    tracing::info!("directory sync: this replica polls Graph now");
                    model = self.shared_model(redis).await;
                    next_poll = tokio::time::Instant::now();
                }
                if tokio::time::Instant::now() < next_poll {
                    tokio::time::sleep(lease::EVERY.min(next_poll - tokio::time::Instant::now())).await;
                    continue;
                }
            } else {
                tokio::time::sleep_until(next_poll).await;
            }
            let m = model.get_or_insert_with(|| self.new_model());
            let started = tokio::time::Instant::now();
            let outcome = self.poll(&graph, m, lease.as_ref()).await;
            match outcome {
                Ok(requests) => {
                    backoff = Duration::from_secs(1);
                    let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
                    s.last_success = Some(unix_now());
                    s.last_error = None;
                    s.last_requests = requests;
                    drop(s);
                    self.metrics.directory_sync_last_success.set(unix_now() as i64);
                    next_poll = started + self.settings.poll_interval;
                }
                Err(e) => {
                    self.metrics.directory_sync_errors_total.inc();
                    let wait = match &e {
                        DeltaError::Resync(why) => {
                            tracing::info!(reason = %why, "directory sync: delta link expired; starting a full round");
                            Duration::ZERO
                        }
                        DeltaError::Throttled(Some(after)) => *after,
                        DeltaError::Throttled(None) | DeltaError::Failed(_) => {
                            let wait = backoff;
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                            wait
                        }
                    };
                    if !matches!(e, DeltaError::Resync(_)) {
                        tracing::warn!(error = ?e, retry_in_ms = wait.as_millis() as u64, "directory sync failed; keeping the last known state");
                    }
                    self.status.lock().unwrap_or_else(|p| p.into_inner()).last_error = Some(describe(&e));
                    next_poll = tokio::time::Instant::now() + wait;
                }
            }
        }
    }

    fn new_model(&self) -> Model {
        let policy = self.policy.load();
        Model::new(&self.settings.tenant, policy.allowed_groups())
    }

    /// The model the previous poller left in Redis, when it opens.
    async fn shared_model(&self, redis: &RedisStore) -> Option<Model> {
        let raw = redis.get_sealed("sync", &redis.key("sync:state")).await.ok()??;
        serde_json::from_slice::<Model>(&raw).ok().filter(|m| m.tenant == self.settings.tenant)
    }

    /// One poll: the users round, then the groups rounds until no new nested group turns up;
    /// then the derivation, applied here and shared. Returns the Graph requests it took.
    async fn poll(&self, graph: &GraphClient, m: &mut Model, lease: Option<&lease::Lease>) -> Result<u64, DeltaError> {
        let tid = self.settings.tenant.clone();
        let mut requests = 0;
        let policy = self.policy.load_full();
        let allowed = policy.allowed_groups().clone();
        let check_groups = !policy.allows_any_tenant_user();
        let users_url = m.users_link.clone().unwrap_or_else(|| delta::users_start(graph));
        let users = delta::round(graph, &tid, "users_delta", &users_url, &mut requests).await;
        let (entries, link) = match users {
            Ok(r) => r,
            Err(e @ DeltaError::Resync(_)) => {
                m.users_link = None;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let now = unix_now();
        m.apply_users(&entries, now);
        m.users_link = Some(link);
        if check_groups {
            if !allowed.is_subset(&m.watched) {
                m.watched.extend(allowed.iter().cloned());
                m.groups_links.clear();
            }
            for _ in 0..10 {
                let found = self.groups_rounds(graph, &tid, m, &mut requests).await?;
                if found.is_empty() {
                    break;
                }
                m.watched.extend(found);
                m.groups_links.clear();
            }
        }
        m.complete = true;
        m.synced_at = now;
        m.update(&allowed, check_groups, now);
        let entries = m.entries();
        let changes = self.apply(entries);
        if let Some(redis) = &self.redis {
            if lease.is_some_and(|l| !l.held()) {
                return Ok(requests);
            }
            if let Ok(blob) = serde_json::to_vec(&*m) {
                let _ = redis.set_sealed(&redis.key("sync:state"), &blob, None).await;
            }
            if !changes.is_empty() {
                let _ = redis.publish_sealed(&self.channel(redis), b"state").await;
            }
        }
        for (key, change) in &changes {
            tracing::info!(user = %key, change = change.kind(), "directory sync: access changed");
        }
        // Only the poller records the changes it found: each is written once.
        self.directory.record_access(changes.iter().filter_map(|(key, change)| history(key, *change)).collect());
        Ok(requests)
    }

    /// One round per batch of up to 50 watched groups (full when its link is missing); the
    /// groups found nested in them that are not watched yet.
    async fn groups_rounds(
        &self,
        graph: &GraphClient,
        tid: &str,
        m: &mut Model,
        requests: &mut u64,
    ) -> Result<BTreeSet<String>, DeltaError> {
        let ids: Vec<String> = m.watched.iter().cloned().collect();
        let mut found = BTreeSet::new();
        for batch in ids.chunks(delta::GROUPS_PER_FILTER) {
            let key = batch.join(",");
            let link = m.groups_links.get(&key).cloned();
            let full = link.is_none();
            let url = link.unwrap_or_else(|| delta::groups_start(graph, batch));
            match delta::round(graph, tid, "groups_delta", &url, requests).await {
                Ok((entries, delta_link)) => {
                    found.extend(m.apply_groups(&entries, full.then_some(batch)));
                    m.groups_links.insert(key, delta_link);
                }
                Err(e @ DeltaError::Resync(_)) => {
                    m.groups_links.remove(&key);
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(found)
    }

    /// Puts a derivation in effect on this replica; counts and returns what changed.
    fn apply(&self, entries: HashMap<String, UserEntry>) -> Vec<(String, Change)> {
        let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        let changes = model::changes(&applied, &entries);
        for (_, change) in &changes {
            self.metrics.directory_sync_changes_total.with_label_values(&[change.kind()]).inc();
            if let Change::Denied(reason) = change {
                self.metrics.access_revoked_total.with_label_values(&[reason.label()]).inc();
            } else if *change == Change::SessionsRevoked {
                self.metrics.access_revoked_total.with_label_values(&["sessions_revoked"]).inc();
            }
        }
        self.access.set_sync(entries.clone());
        *applied = entries;
        changes
    }

    // === the feed (with Redis) ===

    /// Follows the other replicas' changes and kills until dropped; resubscribes after a
    /// failure.
    async fn follow(&self) {
        let Some(redis) = self.redis.clone().filter(|r| r.has_feed()) else { return };
        let mut delay = Duration::from_millis(200);
        loop {
            let started = tokio::time::Instant::now();
            let why = self.follow_once(&redis).await.err().unwrap_or_default();
            if started.elapsed() > Duration::from_secs(30) {
                delay = Duration::from_millis(200);
            }
            tracing::debug!(error = %why, retry_in_ms = delay.as_millis() as u64, "access feed down");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }

    async fn follow_once(&self, redis: &RedisStore) -> Result<(), String> {
        let t = redis.timeout().max(Duration::from_secs(1));
        let channel = self.channel(redis);
        let mut feed = redis.subscribe(&channel).await?;
        self.resync(redis).await.map_err(|e| e.to_string())?;
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + Duration::from_secs(5), Duration::from_secs(5));
        let mut resync = tokio::time::interval_at(tokio::time::Instant::now() + RESYNC_EVERY, RESYNC_EVERY);
        loop {
            tokio::select! {
                msg = feed.next() => {
                    let Some(payload) = msg else { return Err("connection closed".into()) };
                    let Some(payload) = redis.open_message("access", &channel, &payload) else { continue };
                    self.on_message(redis, &payload).await;
                }
                _ = ping.tick() => feed.ping(t).await?,
                _ = resync.tick() => {
                    self.resync(redis).await.map_err(|e| e.to_string())?;
                }
            }
        }
    }

    async fn on_message(&self, redis: &RedisStore, payload: &[u8]) {
        let text = String::from_utf8_lossy(payload);
        let mut words = text.split(' ');
        match (words.next(), words.next(), words.next().and_then(|n| n.parse::<u64>().ok())) {
            (Some("state"), _, _) => {
                if let Err(e) = self.load_shared_entries(redis).await {
                    tracing::debug!(error = %e, "access feed: cannot read the shared state");
                }
            }
            (Some("kill"), Some(key), Some(not_before)) => self.access.kill(key, not_before),
            _ => tracing::debug!("access feed: ignored a message"),
        }
    }

    /// Re-reads the shared model and every kill.
    async fn resync(&self, redis: &RedisStore) -> Result<(), StoreError> {
        self.load_shared_entries(redis).await?;
        let prefix = redis.key("killed:");
        for (key, value) in redis.scan_sealed("access", &format!("{prefix}*")).await? {
            let (Some(user), Some(at)) =
                (key.strip_prefix(&prefix), std::str::from_utf8(&value).ok().and_then(|v| v.parse::<u64>().ok()))
            else {
                continue;
            };
            self.access.kill(user, at);
        }
        Ok(())
    }

    /// Applies the model another replica shared (not while this one polls: its own is newer).
    async fn load_shared_entries(&self, redis: &RedisStore) -> Result<(), StoreError> {
        if !self.enabled() {
            return Ok(());
        }
        let Some(raw) = redis.get_sealed("sync", &redis.key("sync:state")).await? else { return Ok(()) };
        let Ok(model) = serde_json::from_slice::<Model>(&raw) else { return Ok(()) };
        if model.tenant == self.settings.tenant {
            self.apply(model.entries());
            // Another replica polls: its last success is this replica's view of the sync.
            let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
            if s.last_success.is_none_or(|at| at < model.synced_at) {
                s.last_success = Some(model.synced_at);
                s.last_error = None;
                self.metrics.directory_sync_last_success.set(model.synced_at as i64);
            }
        }
        Ok(())
    }
}

/// A change as the user directory's history records it (`key` is `tid:oid`).
fn history(key: &str, change: Change) -> Option<(String, String, AccessEvent)> {
    let (tid, oid) = key.split_once(':')?;
    let event = match change {
        Change::Denied(DenyReason::Disabled) => AccessEvent::Disabled,
        Change::Denied(reason) => AccessEvent::Revoked(reason.label()),
        Change::SessionsRevoked => AccessEvent::Revoked("sessions_revoked"),
        Change::Restored => AccessEvent::Restored,
    };
    Some((tid.to_string(), oid.to_string(), event))
}

fn describe(e: &DeltaError) -> String {
    match e {
        DeltaError::Resync(why) => format!("resync: {why}"),
        DeltaError::Throttled(Some(d)) => format!("throttled by Graph for {}s", d.as_secs()),
        DeltaError::Throttled(None) => "throttled by Graph".into(),
        DeltaError::Failed(why) => why.clone(),
    }
}
