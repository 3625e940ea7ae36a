//! User records in PostgreSQL: the table an application team can query with SQL.
//!
//! Owns: the `users` and `user_events` rows (schema in [`super::migrations`], applied at start
//! under an advisory lock), one upsert per stored sign-in (`INSERT … ON CONFLICT (tenant_id,
//! oid)`), the events of each sign-in and of each access change, the connection pool
//! (tokio-postgres + deadpool-postgres, rustls), and what happens while PostgreSQL is down:
//! users found in the cache (Redis, sealed, when configured; this replica's copies otherwise)
//! sign in from it and their writes wait in a bounded queue that is flushed when PostgreSQL
//! answers again; a user found nowhere is a first sign-in and fails closed.
//! Must not: trust what it reads: a row whose `id` is not the one the gateway derives from
//! (tenant_id, oid) is refused (503), never turned into a session; read `disabled_at` as a
//! decision (Entra ID decides access); or write profile values into a log line.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;

use super::{
    AccessEvent, DirectoryError, MemoryUserStore, StoreCheck, SyncOutcome, UserRecord, UserStore, internal_user_id,
};
use crate::cache::StoreError;
use crate::cache::redis::RedisStore;
use crate::config::PostgresSettings;
use crate::metrics::Metrics;

/// How long a user record stays in Redis as the cache of PostgreSQL.
const SHARED_COPY_TTL: Duration = Duration::from_secs(30 * 86_400);
/// The most users whose writes wait for PostgreSQL; beyond it the oldest are dropped (logged).
const MAX_PENDING: usize = 10_000;
/// How often queued writes are retried while PostgreSQL is down.
const FLUSH_EVERY: Duration = Duration::from_secs(2);

const SELECT_USER: &str = "SELECT id, email, display_name, user_principal_name, given_name, surname, job_title, \
     department, created_at, updated_at, last_login_at FROM users WHERE tenant_id = $1 AND oid = $2";

const UPSERT_USER: &str = "INSERT INTO users (id, tenant_id, oid, email, display_name, user_principal_name, \
     given_name, surname, job_title, department, created_at, updated_at, last_login_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
     ON CONFLICT (tenant_id, oid) DO UPDATE SET email = EXCLUDED.email, display_name = EXCLUDED.display_name, \
     user_principal_name = EXCLUDED.user_principal_name, given_name = EXCLUDED.given_name, \
     surname = EXCLUDED.surname, job_title = EXCLUDED.job_title, department = EXCLUDED.department, \
     updated_at = EXCLUDED.updated_at, \
     last_login_at = GREATEST(users.last_login_at, EXCLUDED.last_login_at), disabled_at = NULL \
     WHERE users.updated_at <= EXCLUDED.updated_at \
     RETURNING id";

const SELECT_ID: &str = "SELECT id FROM users WHERE tenant_id = $1 AND oid = $2";

const INSERT_EVENT: &str =
    "INSERT INTO user_events (user_id, at, kind, changed_fields, reason) VALUES ($1, $2, $3, $4, $5)";

const MARK_DISABLED: &str = "UPDATE users SET disabled_at = $3 WHERE tenant_id = $1 AND oid = $2 \
     AND disabled_at IS NULL RETURNING id";

const CLEAR_DISABLED: &str = "UPDATE users SET disabled_at = NULL WHERE tenant_id = $1 AND oid = $2";

/// An access_revoked event, unless (`$5` false) the user's latest event is already one with
/// the same reason (the sync may see a change again after a restart).
const INSERT_REVOKED: &str = "INSERT INTO user_events (user_id, at, kind, reason) \
     SELECT u.id, $3, 'access_revoked', $4 FROM users u WHERE u.tenant_id = $1 AND u.oid = $2 \
     AND ($5 OR NOT EXISTS (SELECT 1 FROM (SELECT e.kind, e.reason FROM user_events e WHERE e.user_id = u.id \
     ORDER BY e.at DESC, e.id DESC LIMIT 1) last WHERE last.kind = 'access_revoked' AND last.reason = $4))";

/// One row of `user_events`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Event {
    kind: &'static str,
    at: SystemTime,
    changed_fields: Vec<&'static str>,
}

/// Why a statement failed.
#[derive(Debug)]
enum DbError {
    /// PostgreSQL could not be reached, was restarting, timed out or was out of connections.
    Outage(String),
    /// PostgreSQL answered and refused (a constraint, a missing table), or a row is not one the
    /// gateway wrote: never worked around.
    Refused(String),
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> DbError {
        let text = crate::outbound::error_chain(&e);
        if is_outage(&e) { DbError::Outage(text) } else { DbError::Refused(text) }
    }
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(e: deadpool_postgres::PoolError) -> DbError {
        DbError::Outage(format!("no connection: {}", crate::outbound::error_chain(&e)))
    }
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbError::Outage(why) | DbError::Refused(why) => f.write_str(why),
        }
    }
}

/// Errors PostgreSQL returns while it is unreachable, restarting, failing over or overloaded.
fn is_outage(e: &tokio_postgres::Error) -> bool {
    let Some(code) = e.code() else { return true };
    // 08 connection exception, 53 insufficient resources, 57 operator intervention (shutdown,
    // restart), 58 system error, 40 transaction rollback (serialization, deadlock); a standby
    // after a fail-over refuses writes.
    matches!(&code.code()[..2], "08" | "40" | "53" | "57" | "58") || *code == SqlState::READ_ONLY_SQL_TRANSACTION
}

/// Writes that wait for PostgreSQL: the newest record of each user with every event since.
#[derive(Default)]
struct Pending {
    writes: HashMap<(String, String), (UserRecord, Vec<Event>)>,
    order: std::collections::VecDeque<(String, String)>,
}

impl Pending {
    fn add(&mut self, record: UserRecord, events: Vec<Event>) -> Option<(String, String)> {
        let key = (record.tenant_id.clone(), record.oid.clone());
        if let Some((old, queued)) = self.writes.get_mut(&key) {
            *old = record;
            queued.extend(events);
            return None;
        }
        self.writes.insert(key.clone(), (record, events));
        self.order.push_back(key);
        if self.order.len() <= MAX_PENDING {
            return None;
        }
        let dropped = self.order.pop_front()?;
        self.writes.remove(&dropped);
        Some(dropped)
    }

    fn take(&mut self) -> Vec<(UserRecord, Vec<Event>)> {
        self.order.clear();
        self.writes.drain().map(|(_, v)| v).collect()
    }
}

/// The PostgreSQL user store.
pub struct PostgresUserStore {
    pool: Pool,
    timeout: Duration,
    shared: Option<Arc<RedisStore>>,
    local: MemoryUserStore,
    // std Mutex: each critical section is a few map operations, never held across an await.
    pending: Mutex<Pending>,
    /// The schema version once migrated; 0 until then (the store counts as down).
    schema: AtomicI32,
    up: AtomicBool,
    last_error: Mutex<Option<String>>,
    metrics: Metrics,
}

impl PostgresUserStore {
    /// A store whose pool connects lazily: nothing is dialled until [`Self::maintain`] migrates.
    pub fn new(
        settings: &PostgresSettings,
        tls: rustls::ClientConfig,
        shared: Option<Arc<RedisStore>>,
        metrics: Metrics,
    ) -> Result<PostgresUserStore, String> {
        let mut config: tokio_postgres::Config = settings.config.clone();
        if config.get_ssl_mode() != tokio_postgres::config::SslMode::Require && !all_local(&config) {
            tracing::warn!(
                "directory.postgres_url: without sslmode=require (or verify-full) the connection to PostgreSQL \
                 may be unencrypted, and a man in the middle can downgrade it"
            );
        }
        config.connect_timeout(settings.timeout);
        config.application_name("entra-gateway");
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls);
        let manager = Manager::from_config(config, tls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(settings.timeout))
            .create_timeout(Some(settings.timeout))
            .recycle_timeout(Some(settings.timeout))
            .build()
            .map_err(|e| format!("PostgreSQL pool: {e}"))?;
        metrics.user_store_up.with_label_values(&["postgres"]).set(0);
        Ok(PostgresUserStore {
            pool,
            timeout: settings.timeout,
            shared,
            local: MemoryUserStore::default(),
            pending: Mutex::default(),
            schema: AtomicI32::new(0),
            up: AtomicBool::new(false),
            last_error: Mutex::new(Some("not connected yet".into())),
            metrics,
        })
    }

    fn mark(&self, result: Result<(), &DbError>) {
        let up = !matches!(result, Err(DbError::Outage(_)));
        if self.up.swap(up, Ordering::Relaxed) != up {
            match result {
                Ok(()) | Err(DbError::Refused(_)) => tracing::info!("PostgreSQL user directory reachable"),
                Err(e) => tracing::warn!(
                    error = %e,
                    "PostgreSQL user directory unreachable: users in the cache sign in from it, first sign-ins are refused (503)"
                ),
            }
        }
        self.metrics.user_store_up.with_label_values(&["postgres"]).set(up as i64);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = result.err().map(ToString::to_string);
    }

    fn last_error(&self) -> String {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default()
    }

    /// `f` with a pooled connection, bounded by the statement timeout. Until the schema is
    /// migrated the store counts as down (with the migration's error).
    async fn with_client<T, F>(&self, operation: &'static str, f: F) -> Result<T, DbError>
    where
        F: AsyncFnOnce(&mut deadpool_postgres::Object) -> Result<T, DbError>,
    {
        if self.schema.load(Ordering::Relaxed) == 0 {
            return Err(DbError::Outage(format!("schema not migrated yet: {}", self.last_error())));
        }
        let span = crate::telemetry::Span::child("postgresql", opentelemetry::trace::SpanKind::Client);
        if let Some(span) = &span {
            span.set(opentelemetry::KeyValue::new("db.system.name", "postgresql"));
            span.set(opentelemetry::KeyValue::new("db.operation.name", operation));
        }
        let run = async {
            let mut client = self.pool.get().await?;
            f(&mut client).await
        };
        let result = match tokio::time::timeout(self.timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(DbError::Outage(format!("no answer within {:?}", self.timeout))),
        };
        if let (Some(span), Err(e)) = (&span, &result) {
            span.fail(e.to_string());
        }
        self.mark(result.as_ref().map(|_| ()));
        result
    }

    async fn read(&self, tid: &str, oid: &str) -> Result<Option<UserRecord>, DbError> {
        let (tid, oid) = (tid.to_ascii_lowercase(), oid.to_ascii_lowercase());
        self.with_client("select user", async |c| {
            let stmt = c.prepare_cached(SELECT_USER).await?;
            let Some(row) = c.query_opt(&stmt, &[&tid, &oid]).await? else { return Ok(None) };
            let id: uuid::Uuid = row.try_get(0)?;
            check_id(&tid, &oid, id)?;
            Ok(Some(UserRecord {
                id: id.to_string(),
                oid: oid.clone(),
                tenant_id: tid.clone(),
                email: row.try_get(1)?,
                display_name: row.try_get(2)?,
                user_principal_name: row.try_get(3)?,
                given_name: row.try_get(4)?,
                surname: row.try_get(5)?,
                job_title: row.try_get(6)?,
                department: row.try_get(7)?,
                created_at: rfc3339(row.try_get(8)?),
                updated_at: rfc3339(row.try_get(9)?),
                last_login_at: row.try_get::<_, Option<SystemTime>>(10)?.map(rfc3339).unwrap_or_default(),
            }))
        })
        .await
    }

    /// The upsert and its events, in one transaction.
    async fn write(&self, record: &UserRecord, events: &[Event]) -> Result<(), DbError> {
        self.with_client("upsert user", async |c| write_record(c, record, events).await).await
    }

    /// This replica's copy and, with Redis, the shared one (sealed) that other replicas read
    /// while PostgreSQL is down.
    async fn keep_copy(&self, record: &UserRecord) {
        let _ = self.local.put(record, &SyncOutcome::Unchanged).await;
        if let Some(redis) = self.shared.as_ref().filter(|r| r.is_healthy()) {
            let key = redis.key(&format!("user:{}:{}", record.tenant_id, record.oid));
            if let Err(e) = redis.set_json("users", &key, record, Some(SHARED_COPY_TTL)).await {
                tracing::debug!(error = %e, "user record not cached in Redis");
            }
        }
    }

    /// The cached copy of a user, while PostgreSQL is down.
    async fn cached(&self, tid: &str, oid: &str) -> Option<UserRecord> {
        if let Some(redis) = &self.shared {
            let key = redis.key(&format!("user:{tid}:{oid}"));
            if let Ok(Some(record)) = redis.get_json::<UserRecord>("users", &key).await
                && record.id == internal_user_id(tid, oid)
            {
                return Some(record);
            }
        }
        self.local.get(tid, oid).await.ok().flatten()
    }

    fn queue(&self, record: UserRecord, events: Vec<Event>) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((tid, oid)) = pending.add(record, events) {
            tracing::warn!(tid = %tid, user = %internal_user_id(&tid, &oid), "PostgreSQL down too long: a queued user write was dropped");
        }
        self.metrics.user_store_pending_writes.set(pending.writes.len() as i64);
    }

    /// Brings the schema up to date (retrying while PostgreSQL is unreachable), then every
    /// [`FLUSH_EVERY`] flushes queued writes, or checks that PostgreSQL answers (so that
    /// `entra_gateway_user_store_up` follows it even without sign-ins). Runs until dropped.
    pub async fn maintain(&self) {
        self.migrate().await;
        loop {
            tokio::time::sleep(FLUSH_EVERY).await;
            if self.pending.lock().unwrap_or_else(|p| p.into_inner()).writes.is_empty() {
                let _ = self.ping().await;
            } else {
                self.flush().await;
            }
        }
    }

    async fn ping(&self) -> Result<(), DbError> {
        self.with_client("ping", async |c| Ok(c.simple_query("SELECT 1").await.map(|_| ())?)).await
    }

    async fn migrate(&self) {
        let mut delay = Duration::from_millis(250);
        loop {
            let attempt = async {
                let mut client = self.pool.get().await.map_err(DbError::from)?;
                super::migrations::apply(&mut client).await.map_err(|e| match e {
                    e if e.is_outage() => DbError::Outage(e.to_string()),
                    e => DbError::Refused(e.to_string()),
                })
            };
            let result = tokio::time::timeout(self.timeout * 4, attempt)
                .await
                .unwrap_or_else(|_| Err(DbError::Outage("migration timed out".into())));
            match result {
                Ok(applied) => {
                    self.schema.store(applied.version.max(1), Ordering::Relaxed);
                    tracing::info!(
                        version = applied.version,
                        applied_now = ?applied.now,
                        "PostgreSQL user directory: schema up to date"
                    );
                    self.mark(Ok(()));
                    return;
                }
                Err(e) => {
                    match &e {
                        DbError::Outage(_) => {
                            tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "PostgreSQL user directory: cannot migrate yet")
                        }
                        DbError::Refused(_) => {
                            tracing::error!(error = %e, retry_in_ms = delay.as_millis() as u64, "PostgreSQL user directory: migration refused")
                        }
                    }
                    self.mark(Err(&e));
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }

    /// Writes what waited for PostgreSQL; what still fails waits again (newer writes win).
    async fn flush(&self) {
        let waiting = self.pending.lock().unwrap_or_else(|p| p.into_inner()).take();
        if waiting.is_empty() {
            return;
        }
        let mut failed = Vec::new();
        let mut written = 0;
        for (record, events) in waiting {
            if !failed.is_empty() {
                failed.push((record, events));
                continue;
            }
            match self.write(&record, &events).await {
                Ok(()) => written += 1,
                Err(DbError::Outage(_)) => failed.push((record, events)),
                Err(DbError::Refused(e)) => {
                    tracing::error!(error = %e, user = %record.id, "queued user write refused by PostgreSQL; dropped")
                }
            }
        }
        if written > 0 {
            tracing::info!(users = written, "queued user writes reached PostgreSQL");
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for (record, events) in failed {
            let key = (record.tenant_id.clone(), record.oid.clone());
            match pending.writes.remove(&key) {
                // A newer write arrived meanwhile: it wins, with the older events first.
                Some((newer, mut later)) => {
                    let mut all = events;
                    all.append(&mut later);
                    pending.writes.insert(key, (newer, all));
                }
                None => {
                    pending.add(record, events);
                }
            }
        }
        self.metrics.user_store_pending_writes.set(pending.writes.len() as i64);
    }

    async fn record_access(&self, changes: &[(String, String, AccessEvent)]) -> Result<(), DbError> {
        self.with_client("record access", async |c| {
            let tx = c.transaction().await?;
            let now = SystemTime::now();
            for (tid, oid, event) in changes {
                let (tid, oid) = (tid.to_ascii_lowercase(), oid.to_ascii_lowercase());
                match event {
                    AccessEvent::Disabled => {
                        let mark = tx.prepare_cached(MARK_DISABLED).await?;
                        if let Some(row) = tx.query_opt(&mark, &[&tid, &oid, &now]).await? {
                            let id: uuid::Uuid = row.try_get(0)?;
                            let insert = tx.prepare_cached(INSERT_EVENT).await?;
                            let none: &[&str] = &[];
                            tx.execute(&insert, &[&id, &now, &"disabled", &none, &None::<&str>]).await?;
                        }
                    }
                    AccessEvent::Restored => {
                        let clear = tx.prepare_cached(CLEAR_DISABLED).await?;
                        tx.execute(&clear, &[&tid, &oid]).await?;
                    }
                    AccessEvent::Revoked(reason) => {
                        let always = *reason == AccessEvent::KILL_SWITCH;
                        let insert = tx.prepare_cached(INSERT_REVOKED).await?;
                        tx.execute(&insert, &[&tid, &oid, &now, reason, &always]).await?;
                    }
                }
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }
}

/// Whether every host is a Unix socket or a loopback address (where TLS adds nothing).
fn all_local(config: &tokio_postgres::Config) -> bool {
    use tokio_postgres::config::Host;
    config.get_hosts().iter().all(|h| match h {
        Host::Tcp(name) => name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()),
        Host::Unix(_) => true,
    })
}

/// Applies the migrations once and disconnects (the `migrate` command).
pub async fn migrate_once(
    settings: &PostgresSettings,
    tls: rustls::ClientConfig,
) -> Result<super::migrations::Applied, String> {
    let mut config = settings.config.clone();
    config.connect_timeout(settings.timeout);
    config.application_name("entra-gateway migrate");
    let connect = config.connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls));
    let (mut client, connection) =
        connect.await.map_err(|e| format!("PostgreSQL: {}", crate::outbound::error_chain(&e)))?;
    let connection = tokio::spawn(connection);
    let applied = super::migrations::apply(&mut client).await.map_err(|e| e.to_string());
    drop(client);
    let _ = connection.await;
    applied
}

/// A row's id must be the one the gateway derives from (tenant_id, oid): anything else was
/// written by someone else, and would sign the user in as another.
fn check_id(tid: &str, oid: &str, id: uuid::Uuid) -> Result<(), DbError> {
    if id.to_string() == internal_user_id(tid, oid) {
        return Ok(());
    }
    Err(DbError::Refused(format!(
        "the users row of this user (tenant {tid}) has id {id}, which the gateway did not assign; \
         refusing it (restore the id or delete the row)"
    )))
}

async fn write_record(c: &mut deadpool_postgres::Object, record: &UserRecord, events: &[Event]) -> Result<(), DbError> {
    let (tid, oid) = (record.tenant_id.to_ascii_lowercase(), record.oid.to_ascii_lowercase());
    let expected: uuid::Uuid =
        internal_user_id(&tid, &oid).parse().map_err(|_| DbError::Refused("internal id is not a UUID".into()))?;
    let tx = c.transaction().await?;
    let upsert = tx.prepare_cached(UPSERT_USER).await?;
    let (created, updated, login) =
        (system_time(&record.created_at), system_time(&record.updated_at), system_time(&record.last_login_at));
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 13] = [
        &expected,
        &tid,
        &oid,
        &record.email,
        &record.display_name,
        &record.user_principal_name,
        &record.given_name,
        &record.surname,
        &record.job_title,
        &record.department,
        &created,
        &updated,
        &login,
    ];
    let id: uuid::Uuid = match tx.query_opt(&upsert, &params).await? {
        Some(row) => row.try_get(0)?,
        // The stored row is newer (another replica wrote a later profile): keep it.
        None => tx.query_one(&tx.prepare_cached(SELECT_ID).await?, &[&tid, &oid]).await?.try_get(0)?,
    };
    check_id(&tid, &oid, id)?;
    let insert = tx.prepare_cached(INSERT_EVENT).await?;
    for e in events {
        tx.execute(&insert, &[&id, &e.at, &e.kind, &e.changed_fields, &None::<&str>]).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The events a stored sign-in writes: `created` or `profile_changed` (with the field names),
/// and `signed_in` for every sign-in that reaches the store.
fn events_for(record: &UserRecord, outcome: &SyncOutcome) -> Vec<Event> {
    let at = system_time(&record.last_login_at);
    let event = |kind, changed_fields| Event { kind, at, changed_fields };
    match outcome {
        SyncOutcome::Created => vec![event("created", vec![]), event("signed_in", vec![])],
        SyncOutcome::Updated(fields) => vec![event("profile_changed", fields.clone()), event("signed_in", vec![])],
        SyncOutcome::Unchanged => vec![event("signed_in", vec![])],
    }
}

fn system_time(rfc3339: &str) -> SystemTime {
    humantime::parse_rfc3339(rfc3339).unwrap_or_else(|_| SystemTime::now())
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[async_trait::async_trait]
impl UserStore for PostgresUserStore {
    async fn get(&self, tid: &str, oid: &str) -> Result<Option<UserRecord>, DirectoryError> {
        match self.read(tid, oid).await {
            Ok(found) => Ok(found),
            Err(DbError::Refused(why)) => {
                tracing::error!(error = %why, "user record refused");
                Err(StoreError(format!("PostgreSQL user directory: {why}")).into())
            }
            Err(DbError::Outage(why)) => self.cached(tid, oid).await.map(Some).ok_or_else(|| {
                let why = format!("PostgreSQL user directory unreachable ({why}) and the user is not cached");
                DirectoryError::FirstSignIn(StoreError(why))
            }),
        }
    }

    async fn put(&self, record: &UserRecord, outcome: &SyncOutcome) -> Result<(), StoreError> {
        let events = events_for(record, outcome);
        match self.write(record, &events).await {
            Ok(()) => {}
            Err(DbError::Refused(why)) => {
                tracing::error!(error = %why, user = %record.id, "user record not written");
                return Err(StoreError(format!("PostgreSQL user directory: {why}")));
            }
            Err(DbError::Outage(why)) if *outcome == SyncOutcome::Created => {
                return Err(StoreError(format!("PostgreSQL user directory unreachable ({why})")));
            }
            Err(DbError::Outage(_)) => self.queue(record.clone(), events),
        }
        self.keep_copy(record).await;
        Ok(())
    }

    async fn access_changed(&self, changes: &[(String, String, AccessEvent)]) -> Result<(), StoreError> {
        self.record_access(changes).await.map_err(|e| StoreError(format!("PostgreSQL user directory: {e}")))
    }

    async fn check(&self) -> Option<StoreCheck> {
        let ping = self.ping().await;
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner()).writes.len();
        let schema = self.schema.load(Ordering::Relaxed);
        Some(match ping {
            Ok(()) => StoreCheck {
                store: "postgres",
                detail: format!("reachable, schema version {schema}, {pending} queued write(s)"),
            },
            Err(e) => StoreCheck {
                store: "postgres",
                detail: format!(
                    "degraded: unreachable ({e}); users in the cache sign in, first sign-ins are refused (503), \
                     {pending} queued write(s)"
                ),
            },
        })
    }

    async fn maintain(&self) {
        PostgresUserStore::maintain(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(oid: &str, at: &str) -> UserRecord {
        let mut r = UserRecord::for_test("t", oid);
        r.last_login_at = at.into();
        r
    }

    #[test]
    fn a_sign_in_records_its_kind_and_only_field_names() {
        let r = record("o", "2026-12-01T10:00:00Z");
        let kinds = |o: &SyncOutcome| events_for(&r, o).into_iter().map(|e| e.kind).collect::<Vec<_>>();
        assert_eq!(kinds(&SyncOutcome::Created), ["created", "signed_in"]);
        assert_eq!(kinds(&SyncOutcome::Unchanged), ["signed_in"]);
        let changed = events_for(&r, &SyncOutcome::Updated(vec!["displayName", "mail"]));
        assert_eq!(changed[0].changed_fields, ["displayName", "mail"]);
        assert_eq!(changed[0].at, humantime::parse_rfc3339("2026-12-01T10:00:00Z").unwrap());
    }

    #[test]
    fn the_pending_queue_keeps_the_newest_record_every_event_and_a_bound() {
        let mut p = Pending::default();
        let ev = |kind| Event { kind, at: SystemTime::UNIX_EPOCH, changed_fields: vec![] };
        assert!(p.add(record("o", "2026-12-01T10:00:00Z"), vec![ev("signed_in")]).is_none());
        assert!(p.add(record("o", "2026-12-01T11:00:00Z"), vec![ev("profile_changed")]).is_none());
        let taken = p.take();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].0.last_login_at, "2026-12-01T11:00:00Z");
        assert_eq!(taken[0].1.iter().map(|e| e.kind).collect::<Vec<_>>(), ["signed_in", "profile_changed"]);
        for i in 0..MAX_PENDING {
            assert!(p.add(record(&format!("o{i}"), "2026-12-01T10:00:00Z"), vec![]).is_none());
        }
        assert_eq!(p.add(record("last", "2026-12-01T10:00:00Z"), vec![]), Some(("t".into(), "o0".into())));
        assert_eq!(p.writes.len(), MAX_PENDING);
    }

    #[test]
    fn a_row_with_an_id_the_gateway_did_not_assign_is_refused() {
        assert!(check_id("t", "o", internal_user_id("t", "o").parse().unwrap()).is_ok());
        let other: uuid::Uuid = internal_user_id("t", "someone-else").parse().unwrap();
        assert!(matches!(check_id("t", "o", other), Err(DbError::Refused(_))));
    }
}
