//! User directory: the gateway's local record of each user who signed in.
//!
//! Owns: the stable internal user id for (tid, oid), creating the record on first sign-in,
//! updating changed profile fields on later ones (one structured log line naming the changed
//! fields), and `created_at` / `updated_at` / `last_login_at`. Storage sits behind
//! [`UserStore`]: in-process here, Redis in `cache::redis`, PostgreSQL in [`postgres`] (with
//! its schema in [`migrations`]). A user who signs in again with an unchanged profile is
//! answered from this replica's copy of the record: the store is not read, and
//! `last_login_at` is written at most once per [`LAST_LOGIN_EVERY`], after the response (a
//! changed profile always goes to the store at once). Must not: call Graph, derive the id
//! from email or UPN, log profile values (only field names), or decide access (what the sync
//! records here is history; Entra ID decides).

pub mod migrations;
pub mod postgres;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// Namespace of the stable user id: `uuid_v5(NAMESPACE, "{tid}:{oid}")`.
const USER_ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6f1c_2b8e_4a3d_4f0e_9c57_2d1e_8b6a_0c33);

/// The stable internal id of a user: the same for (tid, oid) on every replica and after every
/// restart, and never derived from mutable attributes such as email or UPN.
pub fn internal_user_id(tid: &str, oid: &str) -> String {
    let name = format!("{}:{}", tid.to_ascii_lowercase(), oid.to_ascii_lowercase());
    uuid::Uuid::new_v5(&USER_ID_NAMESPACE, name.as_bytes()).to_string()
}

/// Namespace of app callers' ids: `uuid_v5(APP_ID_NAMESPACE, "{tid}:{client_id}")`.
const APP_ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x0c5e_79aa_52d1_4f8b_a0e3_7f6d_4c1b_9e2a);

/// The stable internal id of an app caller in a tenant (never equal to a user's).
pub fn internal_app_id(tid: &str, client_id: &str) -> String {
    let name = format!("{}:{}", tid.to_ascii_lowercase(), client_id.to_ascii_lowercase());
    uuid::Uuid::new_v5(&APP_ID_NAMESPACE, name.as_bytes()).to_string()
}

/// Profile attributes read from Graph (or, in `claims` mode, from the token).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub mail: Option<String>,
    pub display_name: Option<String>,
    pub user_principal_name: Option<String>,
    pub given_name: Option<String>,
    pub surname: Option<String>,
    #[serde(default)]
    pub job_title: Option<String>,
    #[serde(default)]
    pub department: Option<String>,
}

/// One user as the gateway knows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub id: String,
    pub oid: String,
    pub tenant_id: String,
    pub email: Option<String>,
    pub display_name: Option<String>,
    pub user_principal_name: Option<String>,
    pub given_name: Option<String>,
    pub surname: Option<String>,
    #[serde(default)]
    pub job_title: Option<String>,
    #[serde(default)]
    pub department: Option<String>,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub updated_at: String,
    pub last_login_at: String,
}

impl UserRecord {
    fn new(tid: &str, oid: &str, profile: &Profile, now: &str) -> UserRecord {
        UserRecord {
            id: internal_user_id(tid, oid),
            oid: oid.to_string(),
            tenant_id: tid.to_string(),
            email: profile.mail.clone(),
            display_name: profile.display_name.clone(),
            user_principal_name: profile.user_principal_name.clone(),
            given_name: profile.given_name.clone(),
            surname: profile.surname.clone(),
            job_title: profile.job_title.clone(),
            department: profile.department.clone(),
            created_at: now.to_string(),
            updated_at: now.to_string(),
            last_login_at: now.to_string(),
        }
    }

    /// Applies `profile`, returning the names of the fields that changed.
    fn apply(&mut self, profile: &Profile) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut set = |name: &'static str, field: &mut Option<String>, value: &Option<String>| {
            if field != value {
                field.clone_from(value);
                changed.push(name);
            }
        };
        set("mail", &mut self.email, &profile.mail);
        set("displayName", &mut self.display_name, &profile.display_name);
        set("userPrincipalName", &mut self.user_principal_name, &profile.user_principal_name);
        set("givenName", &mut self.given_name, &profile.given_name);
        set("surname", &mut self.surname, &profile.surname);
        set("jobTitle", &mut self.job_title, &profile.job_title);
        set("department", &mut self.department, &profile.department);
        changed
    }

    #[cfg(test)]
    pub fn for_test(tid: &str, oid: &str) -> UserRecord {
        UserRecord::new(tid, oid, &Profile::default(), "2026-01-01T00:00:00Z")
    }
}

pub use crate::cache::StoreError;

/// Why a user record could not be read or a sign-in recorded.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// The store cannot tell whether the user signed in before (it is down and the user is in
    /// no cache), or cannot create the record: a first sign-in is refused.
    #[error("the user directory cannot record a first sign-in: {0}")]
    FirstSignIn(StoreError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What continuous access or the kill switch did to a user, for the store's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessEvent {
    /// The account was disabled in Entra ID.
    Disabled,
    /// Access came back (enabled, added back to a group).
    Restored,
    /// Access was revoked: `deleted`, `removed`, `sessions_revoked` or [`Self::KILL_SWITCH`].
    Revoked(&'static str),
}

impl AccessEvent {
    pub const KILL_SWITCH: &'static str = "kill_switch";
}

/// A store's own readiness line: its name and what it says (`degraded: …` while down).
#[derive(Debug, Clone)]
pub struct StoreCheck {
    pub store: &'static str,
    pub detail: String,
}

/// Where user records live.
#[async_trait::async_trait]
pub trait UserStore: Send + Sync {
    /// The record of (tid, oid); [`DirectoryError::FirstSignIn`] when the store is down and
    /// the user is in none of its caches (it cannot tell whether they signed in before).
    async fn get(&self, tid: &str, oid: &str) -> Result<Option<UserRecord>, DirectoryError>;
    /// Writes the record of a sign-in; `outcome` is what the sign-in did to it (a store with a
    /// history records it).
    async fn put(&self, record: &UserRecord, outcome: &SyncOutcome) -> Result<(), StoreError>;
    /// Records access changes `(tid, oid, event)` in the store's history, when it keeps one.
    async fn access_changed(&self, _changes: &[(String, String, AccessEvent)]) -> Result<(), StoreError> {
        Ok(())
    }
    /// The store's readiness line, when it has its own (Redis is checked by `app`).
    async fn check(&self) -> Option<StoreCheck> {
        None
    }
    /// The store's background work (schema, queued writes); returns at once when it has none.
    async fn maintain(&self) {}
}

/// In-process store: records live as long as the process.
#[derive(Default)]
pub struct MemoryUserStore {
    // std Mutex: every critical section is one map operation, never held across an await.
    records: std::sync::Mutex<std::collections::HashMap<(String, String), UserRecord>>,
}

#[async_trait::async_trait]
impl UserStore for MemoryUserStore {
    async fn get(&self, tid: &str, oid: &str) -> Result<Option<UserRecord>, DirectoryError> {
        let map = self.records.lock().map_err(|_| StoreError("poisoned".into()))?;
        Ok(map.get(&(tid.to_string(), oid.to_string())).cloned())
    }

    async fn put(&self, record: &UserRecord, _outcome: &SyncOutcome) -> Result<(), StoreError> {
        let mut map = self.records.lock().map_err(|_| StoreError("poisoned".into()))?;
        map.insert((record.tenant_id.clone(), record.oid.clone()), record.clone());
        Ok(())
    }
}

/// User records in Redis (durable, shared by the replicas), with this replica's own copies as
/// the fallback while Redis is down. The id is derived from (tid, oid), so a record created
/// while Redis is down has the same id; it is not written to Redis until Redis answers again,
/// so that a degraded replica never overwrites the durable record.
pub struct RedisUserStore {
    redis: Arc<crate::cache::redis::RedisStore>,
    local: MemoryUserStore,
}

impl RedisUserStore {
    pub fn new(redis: Arc<crate::cache::redis::RedisStore>) -> RedisUserStore {
        RedisUserStore { redis, local: MemoryUserStore::default() }
    }

    fn key(&self, tid: &str, oid: &str) -> String {
        self.redis.key(&format!("user:{tid}:{oid}"))
    }
}

#[async_trait::async_trait]
impl UserStore for RedisUserStore {
    async fn get(&self, tid: &str, oid: &str) -> Result<Option<UserRecord>, DirectoryError> {
        match self.redis.get_json::<UserRecord>("users", &self.key(tid, oid)).await {
            Ok(found) => Ok(found),
            Err(_) => self.local.get(tid, oid).await,
        }
    }

    async fn put(&self, record: &UserRecord, outcome: &SyncOutcome) -> Result<(), StoreError> {
        self.local.put(record, outcome).await?;
        if self.redis.is_healthy() {
            let key = self.key(&record.tenant_id, &record.oid);
            if let Err(e) = self.redis.set_json("users", &key, record, None).await {
                tracing::warn!(error = %e, "user record kept in process only");
            }
        }
        Ok(())
    }
}

/// What a sign-in did to the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOutcome {
    Created,
    Updated(Vec<&'static str>),
    Unchanged,
}

/// `last_login_at` of a user who keeps signing in is written at most this often.
pub const LAST_LOGIN_EVERY: Duration = Duration::from_secs(60);

/// This replica's copy of a record it wrote, with the profile it was written from.
struct Recent {
    record: UserRecord,
    profile: Profile,
    written: tokio::time::Instant,
}

/// The user directory.
#[derive(Clone)]
pub struct Directory {
    store: Arc<dyn UserStore>,
    recent: moka::sync::Cache<(String, String), Arc<Recent>>,
}

impl Directory {
    pub fn new(store: Arc<dyn UserStore>) -> Directory {
        let recent = moka::sync::Cache::builder().max_capacity(100_000).time_to_idle(Duration::from_secs(600)).build();
        Directory { store, recent }
    }

    fn remember(&self, key: (String, String), record: &UserRecord, profile: &Profile) {
        let recent = Recent { record: record.clone(), profile: profile.clone(), written: tokio::time::Instant::now() };
        self.recent.insert(key, Arc::new(recent));
    }

    /// A repeat sign-in with the profile this replica last wrote: the record without a store
    /// read; `last_login_at` refreshed and written in the background once it is older than
    /// [`LAST_LOGIN_EVERY`].
    fn repeat_login(&self, key: &(String, String), profile: &Profile) -> Option<UserRecord> {
        let recent = self.recent.get(key).filter(|r| r.profile == *profile)?;
        if recent.written.elapsed() < LAST_LOGIN_EVERY {
            return Some(recent.record.clone());
        }
        let mut record = recent.record.clone();
        record.last_login_at = now_rfc3339();
        self.remember(key.clone(), &record, profile);
        let (store, written) = (self.store.clone(), record.clone());
        tokio::spawn(async move {
            if let Err(e) = store.put(&written, &SyncOutcome::Unchanged).await {
                tracing::warn!(error = %e, user_id = %written.id, "last_login_at not written");
            }
        });
        Some(record)
    }

    pub async fn find(&self, tid: &str, oid: &str) -> Result<Option<UserRecord>, StoreError> {
        self.store.get(tid, oid).await.map_err(|e| match e {
            DirectoryError::FirstSignIn(e) | DirectoryError::Store(e) => e,
        })
    }

    /// Records access changes in the store's history, after the caller moves on (history is
    /// never on the path of a decision; a failure is logged).
    pub fn record_access(&self, changes: Vec<(String, String, AccessEvent)>) {
        if changes.is_empty() {
            return;
        }
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.access_changed(&changes).await {
                tracing::warn!(error = %e, users = changes.len(), "access changes not recorded in the user directory");
            }
        });
    }

    /// The store's own readiness line, if it has one.
    pub async fn check(&self) -> Option<StoreCheck> {
        self.store.check().await
    }

    /// The store's background work; runs until dropped.
    pub async fn maintain(self) {
        self.store.maintain().await
    }

    /// Creates or updates the record of a user who just signed in.
    pub async fn sync_login(
        &self,
        tid: &str,
        oid: &str,
        profile: &Profile,
    ) -> Result<(UserRecord, SyncOutcome), DirectoryError> {
        let key = (tid.to_string(), oid.to_string());
        if let Some(record) = self.repeat_login(&key, profile) {
            return Ok((record, SyncOutcome::Unchanged));
        }
        let now = now_rfc3339();
        let found = self.store.get(tid, oid).await?;
        let (record, outcome) = match found {
            None => (UserRecord::new(tid, oid, profile, &now), SyncOutcome::Created),
            Some(mut rec) => {
                let changed = rec.apply(profile);
                rec.last_login_at.clone_from(&now);
                if changed.is_empty() {
                    (rec, SyncOutcome::Unchanged)
                } else {
                    rec.updated_at.clone_from(&now);
                    (rec, SyncOutcome::Updated(changed))
                }
            }
        };
        match self.store.put(&record, &outcome).await {
            Ok(()) => {}
            Err(e) if outcome == SyncOutcome::Created => return Err(DirectoryError::FirstSignIn(e)),
            Err(e) => return Err(e.into()),
        }
        self.remember(key, &record, profile);
        match &outcome {
            SyncOutcome::Created => {
                tracing::info!(user_id = %record.id, tid = %tid, "user created")
            }
            SyncOutcome::Updated(fields) => {
                tracing::info!(user_id = %record.id, tid = %tid, changed = %fields.join(","), "user updated")
            }
            SyncOutcome::Unchanged => {}
        }
        Ok((record, outcome))
    }
}

/// Current time, RFC 3339 UTC with seconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store that counts reads and reports writes.
    #[derive(Default)]
    struct Counting {
        inner: MemoryUserStore,
        gets: std::sync::atomic::AtomicUsize,
        puts: tokio::sync::Mutex<Option<tokio::sync::mpsc::UnboundedSender<UserRecord>>>,
    }

    #[async_trait::async_trait]
    impl UserStore for Counting {
        async fn get(&self, tid: &str, oid: &str) -> Result<Option<UserRecord>, DirectoryError> {
            self.gets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.inner.get(tid, oid).await
        }
        async fn put(&self, record: &UserRecord, outcome: &SyncOutcome) -> Result<(), StoreError> {
            if let Some(tx) = self.puts.lock().await.as_ref() {
                let _ = tx.send(record.clone());
            }
            self.inner.put(record, outcome).await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn repeat_sign_ins_skip_the_store_and_write_last_login_at_at_most_once_a_minute() {
        let store = Arc::new(Counting::default());
        let (tx, mut puts) = tokio::sync::mpsc::unbounded_channel();
        *store.puts.lock().await = Some(tx);
        let dir = Directory::new(store.clone());
        let gets = || store.gets.load(std::sync::atomic::Ordering::Relaxed);
        let (first, _) = dir.sync_login("t", "o", &profile("Ann")).await.unwrap();
        assert_eq!((gets(), puts.recv().await.is_some()), (1, true), "first sign-in: read and written");
        for _ in 0..5 {
            let (again, out) = dir.sync_login("t", "o", &profile("Ann")).await.unwrap();
            assert_eq!((out, again), (SyncOutcome::Unchanged, first.clone()));
        }
        assert_eq!(gets(), 1, "repeat sign-ins do not read the store");
        assert!(puts.try_recv().is_err(), "nor write it within a minute");

        tokio::time::advance(LAST_LOGIN_EVERY).await;
        let (later, out) = dir.sync_login("t", "o", &profile("Ann")).await.unwrap();
        assert_eq!(out, SyncOutcome::Unchanged);
        let written = puts.recv().await.expect("last_login_at written after the response");
        assert_eq!(written, later);
        assert_eq!(gets(), 1);
        dir.sync_login("t", "o", &profile("Ann")).await.unwrap();
        assert!(puts.try_recv().is_err(), "once per minute");

        let (changed, out) = dir.sync_login("t", "o", &profile("Anne")).await.unwrap();
        assert_eq!(out, SyncOutcome::Updated(vec!["displayName"]));
        assert_eq!((gets(), puts.recv().await), (2, Some(changed)), "a changed profile goes to the store at once");
    }

    fn profile(name: &str) -> Profile {
        Profile { display_name: Some(name.into()), mail: Some("a@b.c".into()), ..Default::default() }
    }

    #[test]
    fn internal_id_is_stable_for_tid_and_oid_and_case_insensitive() {
        assert_eq!(internal_user_id("T", "O"), internal_user_id("t", "o"));
        assert_ne!(internal_user_id("t", "o1"), internal_user_id("t", "o2"));
        assert_ne!(internal_user_id("t1", "o"), internal_user_id("t2", "o"));
    }

    #[tokio::test]
    async fn first_login_creates_a_change_updates_and_the_same_profile_leaves_it_alone() {
        let dir = Directory::new(Arc::new(MemoryUserStore::default()));
        let (a, out) = dir.sync_login("t", "o", &profile("Ann")).await.unwrap();
        assert_eq!(out, SyncOutcome::Created);
        let (b, out) = dir.sync_login("t", "o", &profile("Ann")).await.unwrap();
        assert_eq!(out, SyncOutcome::Unchanged);
        assert_eq!(
            (a.id.as_str(), a.created_at.as_str(), a.updated_at.as_str()),
            (b.id.as_str(), b.created_at.as_str(), b.updated_at.as_str())
        );
        let (c, out) = dir.sync_login("t", "o", &profile("Anne")).await.unwrap();
        assert_eq!(out, SyncOutcome::Updated(vec!["displayName"]));
        assert_eq!(c.display_name.as_deref(), Some("Anne"));
        assert_eq!(c.created_at, a.created_at);
    }
}
