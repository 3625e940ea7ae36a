//! The Redis connection shared by the replicas: single node or Redis Cluster, TLS, timeouts.
//!
//! Owns: connecting (lazily, so the gateway starts and serves while Redis is down), reconnects
//! (the connection manager re-dials after a failure; the cluster connection is re-created),
//! the timeout of every command, the health flag and latency histogram, key namespacing under
//! `cache.key_prefix`, sealing every value it stores and opening every value it reads back
//! ([`crate::seal`]: an HMAC bound to the key name, so that whoever can write to Redis cannot
//! plant a value; one that fails is a miss, counted in
//! `entra_gateway_cache_integrity_failures_total` and logged without its content), and the
//! versioned value envelope (a value this version cannot read is a miss, never a crash). Only
//! lock values (`SET NX`, compared by this replica only) are stored unsealed: a planted lock
//! makes the others wait at most its few seconds, then they load themselves. Feeds
//! ([`RedisStore::subscribe`]): `SUBSCRIBE` on a single node; on a Redis Cluster sharded pub/sub
//! (`SSUBSCRIBE`/`SPUBLISH`, Redis 7) on a RESP3 cluster connection of the feed's own, so a
//! cluster follows logouts and access changes like a single node, without a round trip per
//! request; scans visit every primary of a cluster. Must not: decide what is cached or what a
//! failure means; callers fall back to their in-process state.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use prometheus::HistogramVec;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cache::StoreError;
use crate::config::{CacheSettings, RedisTarget};
use crate::metrics::Metrics;
use crate::seal::Sealer;

/// One channel followed: its messages' payloads (still sealed), and a check that it is alive.
pub struct Subscription(Feed);

enum Feed {
    Single { sink: redis::aio::PubSubSink, messages: redis::aio::PubSubStream },
    Cluster { conn: ClusterConnection, pushes: tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo> },
}

impl Subscription {
    /// The next message's payload; `None` once the connection is lost.
    pub async fn next(&mut self) -> Option<Vec<u8>> {
        use futures_util::StreamExt;
        match &mut self.0 {
            Feed::Single { messages, .. } => messages.next().await.map(|m| m.get_payload_bytes().to_vec()),
            Feed::Cluster { pushes, .. } => loop {
                let push = pushes.recv().await?;
                match push.kind {
                    // [channel, message]
                    redis::PushKind::SMessage => match push.data.into_iter().nth(1) {
                        Some(redis::Value::BulkString(payload)) => return Some(payload),
                        _ => continue,
                    },
                    // A node's connection dropped: messages may have been missed.
                    redis::PushKind::Disconnection => return None,
                    _ => continue,
                }
            },
        }
    }

    /// A PING on the subscription's connection, within `timeout`.
    pub async fn ping(&mut self, timeout: Duration) -> Result<(), String> {
        match &mut self.0 {
            Feed::Single { sink, .. } => within(timeout, "ping", sink.ping::<redis::Value>()).await.map(|_| ()),
            Feed::Cluster { conn, .. } => {
                within(timeout, "ping", redis::cmd("PING").query_async::<redis::Value>(conn)).await.map(|_| ())
            }
        }
    }
}

/// `fut` within `t`; a failure or the timeout named after `what`.
async fn within<T, E: std::fmt::Display>(
    t: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(t, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: timed out")),
    }
}

/// Version of the value envelope `{"v": 1, "d": ...}`.
const FORMAT_VERSION: u64 = 1;

enum Conn {
    Single(ConnectionManager),
    Cluster(Box<Cluster>),
}

struct Cluster {
    client: redis::cluster::ClusterClient,
    conn: tokio::sync::Mutex<Option<ClusterConnection>>,
}

/// What a cluster feed's own connection is built from.
struct ClusterFeed {
    urls: Vec<String>,
    ca_pem: Option<Vec<u8>>,
}

/// A handle on Redis.
pub struct RedisStore {
    conn: Conn,
    /// The single-node client, for dedicated pub/sub connections (`None` with a cluster).
    pubsub: Option<redis::Client>,
    /// With a cluster: how to open a sharded pub/sub connection.
    cluster_feed: Option<ClusterFeed>,
    prefix: String,
    timeout: Duration,
    healthy: AtomicBool,
    latency: HistogramVec,
    metrics: Metrics,
    sealer: Sealer,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("prefix", &self.prefix).finish()
    }
}

impl RedisStore {
    /// Prepares the connection without dialing; `None` when no Redis is configured. `sealer`
    /// seals what is stored and opens what is read.
    pub fn connect(cfg: &CacheSettings, metrics: Metrics, sealer: Sealer) -> Result<Option<Arc<RedisStore>>, String> {
        let Some(redis) = &cfg.redis else { return Ok(None) };
        let certs = redis.ca_pem.clone().map(|pem| redis::TlsCertificates { client_tls: None, root_cert: Some(pem) });
        let timeout = redis.timeout;
        let (conn, pubsub, cluster_feed) = match &redis.target {
            RedisTarget::Single(url) => {
                let url = redis.with_credentials(url)?;
                let client = match certs {
                    Some(c) => redis::Client::build_with_tls(url.expose(), c),
                    None => redis::Client::open(url.expose()),
                }
                .map_err(|e| format!("cache.redis_url: {e}"))?;
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(timeout))
                    .set_connection_timeout(Some(timeout.max(Duration::from_secs(1))))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_secs(2));
                let manager =
                    client.get_connection_manager_lazy(config).map_err(|e| format!("cache.redis_url: {e}"))?;
                (Conn::Single(manager), Some(client), None)
            }
            RedisTarget::Cluster(urls) => {
                let urls = urls.iter().map(|u| redis.with_credentials(u)).collect::<Result<Vec<_>, _>>()?;
                let urls: Vec<String> = urls.iter().map(|u| u.expose().to_string()).collect();
                let mut b = redis::cluster::ClusterClientBuilder::new(urls.clone())
                    .connection_timeout(timeout.max(Duration::from_secs(1)))
                    .response_timeout(timeout)
                    .retries(1);
                if let Some(c) = certs {
                    b = b.certs(c);
                }
                let client = b.build().map_err(|e| format!("cache.cluster_urls: {e}"))?;
                let feed = ClusterFeed { urls, ca_pem: redis.ca_pem.clone() };
                (Conn::Cluster(Box::new(Cluster { client, conn: tokio::sync::Mutex::new(None) })), None, Some(feed))
            }
        };
        Ok(Some(Arc::new(RedisStore {
            conn,
            pubsub,
            cluster_feed,
            prefix: cfg.key_prefix.clone(),
            timeout,
            healthy: AtomicBool::new(true),
            latency: metrics.redis_latency.clone(),
            metrics,
            sealer,
        })))
    }

    /// `{prefix}{name}`.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Follows `channel` (already prefixed) on a connection of its own: `SUBSCRIBE` on a
    /// single node, `SSUBSCRIBE` (sharded, on the channel's primary) on a cluster.
    pub async fn subscribe(&self, channel: &str) -> Result<Subscription, String> {
        let t = self.timeout.max(Duration::from_secs(1));
        if let Some(client) = &self.pubsub {
            let mut pubsub = within(t, "connect", client.get_async_pubsub()).await?;
            within(t, "subscribe", pubsub.subscribe(channel)).await?;
            let (sink, messages) = pubsub.split();
            return Ok(Subscription(Feed::Single { sink, messages }));
        }
        let feed = self.cluster_feed.as_ref().ok_or("no Redis to subscribe to")?;
        let (tx, pushes) = tokio::sync::mpsc::unbounded_channel();
        let mut b = redis::cluster::ClusterClientBuilder::new(feed.urls.clone())
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(tx)
            .connection_timeout(t)
            .response_timeout(t)
            .retries(1);
        if let Some(pem) = &feed.ca_pem {
            b = b.certs(redis::TlsCertificates { client_tls: None, root_cert: Some(pem.clone()) });
        }
        let client = b.build().map_err(|e| format!("cluster feed: {e}"))?;
        let mut conn = within(t, "connect", client.get_async_connection()).await?;
        within(t, "ssubscribe", conn.ssubscribe(channel)).await?;
        Ok(Subscription(Feed::Cluster { conn, pushes }))
    }

    /// Whether a feed can be followed (Redis is configured).
    pub fn has_feed(&self) -> bool {
        self.pubsub.is_some() || self.cluster_feed.is_some()
    }

    /// The command timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether the last command worked.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Runs one command with the timeout; records latency and health.
    async fn run<T: redis::FromRedisValue>(&self, name: &'static str, cmd: &redis::Cmd) -> Result<T, StoreError> {
        self.run_at(name, cmd, None).await
    }

    /// [`Self::run`] on one node of a cluster (`host`, `port`); on a single node, that node.
    async fn run_at<T: redis::FromRedisValue>(
        &self,
        name: &'static str,
        cmd: &redis::Cmd,
        node: Option<&(String, u16)>,
    ) -> Result<T, StoreError> {
        let span = crate::telemetry::Span::child("redis", opentelemetry::trace::SpanKind::Client);
        if let Some(span) = &span {
            span.set(opentelemetry::KeyValue::new("db.system.name", "redis"));
            span.set(opentelemetry::KeyValue::new("db.operation.name", name));
        }
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, self.query(cmd, node)).await;
        self.latency.with_label_values(&[name]).observe(started.elapsed().as_secs_f64());
        let result = match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError(format!("redis {name}: {e}"))),
            Err(_) => Err(StoreError(format!("redis {name}: timed out"))),
        };
        if let (Some(span), Err(e)) = (&span, &result) {
            span.fail(e.to_string());
        }
        drop(span);
        let ok = result.is_ok();
        if self.healthy.swap(ok, Ordering::Relaxed) != ok {
            if ok {
                tracing::info!("redis is reachable again");
            } else if let Err(e) = &result {
                tracing::warn!(error = %e, "redis unavailable; serving from in-process state");
            }
        }
        result
    }

    async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        node: Option<&(String, u16)>,
    ) -> redis::RedisResult<T> {
        match &self.conn {
            Conn::Single(m) => cmd.query_async(&mut m.clone()).await,
            Conn::Cluster(cluster) => {
                let Cluster { client, conn } = cluster.as_ref();
                // tokio Mutex: held across the connect await so that one task dials for all.
                let mut guard = conn.lock().await;
                if guard.is_none() {
                    *guard = Some(client.get_async_connection().await?);
                }
                let mut c = guard
                    .as_ref()
                    .map(Clone::clone)
                    .ok_or_else(|| redis::RedisError::from((redis::ErrorKind::Io, "no connection")))?;
                drop(guard);
                let r = match node {
                    None => cmd.query_async(&mut c).await,
                    Some((host, port)) => {
                        use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
                        let at = SingleNodeRoutingInfo::ByAddress { host: host.clone(), port: *port };
                        c.route_command(cmd.clone(), RoutingInfo::SingleNode(at))
                            .await
                            .and_then(|v| redis::from_redis_value(v).map_err(redis::RedisError::from))
                    }
                };
                if r.as_ref().is_err_and(|e| e.is_io_error() || e.is_connection_dropped()) {
                    *conn.lock().await = None;
                }
                r
            }
        }
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.run::<String>("ping", &redis::cmd("PING")).await.map(|_| ())
    }

    /// `SET key value [PX ttl]`.
    async fn set_raw(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value);
        if let Some(ttl) = ttl {
            cmd.arg("PX").arg(ttl.as_millis().max(1) as u64);
        }
        self.run::<()>("set", &cmd).await
    }

    /// `SET key value NX PX ttl`: true when this call created the key (a lock).
    pub async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value).arg("NX").arg("PX").arg(ttl.as_millis().max(1) as u64);
        self.run::<Option<String>>("set_nx", &cmd).await.map(|r| r.is_some())
    }

    /// Deletes `key` only while it still holds `value` (releasing our own lock, not a successor's).
    pub async fn del_if(&self, key: &str, value: &str) -> Result<(), StoreError> {
        const SCRIPT: &str =
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(SCRIPT).arg(1).arg(key).arg(value);
        self.run::<i64>("del_if", &cmd).await.map(|_| ())
    }

    /// Extends `key`'s expiry to `ttl` only while it still holds `value` (renewing our own
    /// lease, never a successor's); true when it did.
    pub async fn renew_if(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, StoreError> {
        const SCRIPT: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
             return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(SCRIPT).arg(1).arg(key).arg(value).arg(ttl.as_millis().max(1) as u64);
        self.run::<i64>("renew_if", &cmd).await.map(|n| n == 1)
    }

    /// `PUBLISH channel payload` (`SPUBLISH` on a cluster; channel already prefixed), the
    /// payload sealed for the channel.
    pub async fn publish_sealed(&self, channel: &str, payload: &[u8]) -> Result<(), StoreError> {
        let sealed = self.sealer.seal(channel, payload);
        let verb = if self.cluster_feed.is_some() { "SPUBLISH" } else { "PUBLISH" };
        self.run::<i64>("publish", redis::cmd(verb).arg(channel).arg(sealed)).await.map(|_| ())
    }

    /// The payload of a message heard on `channel`, when it opens (else `None`, counted).
    pub fn open_message(&self, kind: &'static str, channel: &str, message: &[u8]) -> Option<Vec<u8>> {
        self.open(kind, channel, message)
    }

    /// Every key matching `pattern` (already prefixed) with its opened value, by `SCAN` and
    /// `MGET` in batches; a key that expires in between, or whose value does not open, is left
    /// out.
    pub async fn scan_sealed(&self, kind: &'static str, pattern: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let keys = match &self.conn {
            Conn::Single(_) => self.scan_keys(pattern, None).await?,
            Conn::Cluster(_) => {
                let mut keys = Vec::new();
                for primary in self.primaries().await? {
                    keys.extend(self.scan_keys(pattern, Some(&primary)).await?);
                }
                keys
            }
        };
        let mut found = Vec::new();
        for batch in keys.chunks(1000) {
            let values: Vec<Option<Vec<u8>>> = match &self.conn {
                Conn::Single(_) => self.run("mget", redis::cmd("MGET").arg(batch)).await?,
                // A cluster's keys live in different slots, where MGET is refused: one GET each.
                Conn::Cluster(_) => {
                    let mut values = Vec::with_capacity(batch.len());
                    for key in batch {
                        values.push(self.run("get", redis::cmd("GET").arg(key)).await?);
                    }
                    values
                }
            };
            for (key, value) in batch.iter().zip(values) {
                if let Some(opened) = value.and_then(|v| self.open(kind, key, &v)) {
                    found.push((key.clone(), opened));
                }
            }
        }
        Ok(found)
    }

    /// Every key matching `pattern` on one node: the single node, or a cluster primary.
    async fn scan_keys(&self, pattern: &str, node: Option<&(String, u16)>) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        let mut cursor = 0u64;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000);
            let (next, found): (u64, Vec<String>) = self.run_at("scan", &scan, node).await?;
            keys.extend(found);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }

    /// The cluster's primaries (`host`, `port`), from `CLUSTER NODES`.
    async fn primaries(&self) -> Result<Vec<(String, u16)>, StoreError> {
        let text: String = self.run("cluster_nodes", &redis::cmd("CLUSTER").arg("NODES").clone()).await?;
        Ok(text
            .lines()
            .filter(|l| l.split(' ').nth(2).is_some_and(|flags| flags.split(',').any(|f| f == "master")))
            .filter_map(|l| {
                let addr = l.split(' ').nth(1)?.split('@').next()?;
                let (host, port) = addr.rsplit_once(':')?;
                Some((host.to_string(), port.parse().ok()?))
            })
            .collect())
    }

    /// `value` sealed for `key`, stored with an optional expiry.
    pub async fn set_sealed(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError> {
        self.set_raw(key, &self.sealer.seal(key, value), ttl).await
    }

    /// The opened value under `key`; one that does not open is a miss.
    pub async fn get_sealed(&self, kind: &'static str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_sealed_as("get", kind, key).await
    }

    /// [`Self::get_sealed`], its latency recorded under `command` (so that a caller's own
    /// reads can be told apart in the metrics).
    pub async fn get_sealed_as(
        &self,
        command: &'static str,
        kind: &'static str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let raw: Option<Vec<u8>> = self.run(command, redis::cmd("GET").arg(key)).await?;
        Ok(raw.and_then(|raw| self.open(kind, key, &raw)))
    }

    /// Opens a value read under `name`; a failure is counted and logged (never its content).
    fn open(&self, kind: &'static str, name: &str, raw: &[u8]) -> Option<Vec<u8>> {
        match self.sealer.open(name, raw) {
            Ok(payload) => Some(payload.to_vec()),
            Err(e) if e.is_integrity_failure() => {
                self.metrics.cache_integrity_failures_total.with_label_values(&[kind]).inc();
                tracing::warn!(
                    key = name,
                    kind,
                    error = %e,
                    "a value in redis failed its integrity check: ignored (was it written by someone else?)"
                );
                None
            }
            Err(e) => {
                tracing::debug!(key = name, kind, error = %e, "a value in redis was sealed with a rotated-out key");
                None
            }
        }
    }

    pub async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        self.run::<i64>("exists", redis::cmd("EXISTS").arg(key)).await.map(|n| n > 0)
    }

    /// A typed value; a garbage, foreign-version or unsealed value is a miss (counted as an
    /// error).
    pub async fn get_json<T: DeserializeOwned>(&self, cache: &'static str, key: &str) -> Result<Option<T>, StoreError> {
        let label = redis_label(cache);
        let raw = match self.get_sealed(cache, key).await {
            Ok(r) => r,
            Err(e) => {
                self.metrics.cache(label, "error");
                return Err(e);
            }
        };
        let Some(raw) = raw else {
            self.metrics.cache(label, "miss");
            return Ok(None);
        };
        match decode(&raw) {
            Some(v) => {
                self.metrics.cache(label, "hit");
                Ok(Some(v))
            }
            None => {
                tracing::warn!(key, "unreadable value in redis (other version or garbage); treated as a miss");
                self.metrics.cache(label, "error");
                Ok(None)
            }
        }
    }

    pub async fn set_json<T: Serialize>(
        &self,
        cache: &'static str,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        let r = self.set_sealed(key, &encode(value), ttl).await;
        if r.is_err() {
            self.metrics.cache(redis_label(cache), "error");
        }
        r
    }
}

/// The `cache` label of the Redis tier of a cache.
pub fn redis_label(cache: &'static str) -> &'static str {
    match cache {
        "groups" => "redis_groups",
        "profile" => "redis_profile",
        "jwks" => "redis_jwks",
        "users" => "redis_users",
        "revocations" => "redis_revocations",
        "locks" => "redis_locks",
        _ => "redis_other",
    }
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "v": FORMAT_VERSION, "d": value })).unwrap_or_default()
}

pub fn decode<T: DeserializeOwned>(raw: &[u8]) -> Option<T> {
    let v: serde_json::Value = serde_json::from_slice(raw).ok()?;
    if v.get("v")?.as_u64()? != FORMAT_VERSION {
        return None;
    }
    serde_json::from_value(v.get("d")?.clone()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_foreign_or_garbage_values_are_misses() {
        let raw = encode(&vec!["a".to_string()]);
        assert_eq!(decode::<Vec<String>>(&raw), Some(vec!["a".to_string()]));
        assert_eq!(decode::<Vec<String>>(br#"{"v": 2, "d": ["a"]}"#), None);
        assert_eq!(decode::<Vec<String>>(b"\x00\xffgarbage"), None);
        assert_eq!(decode::<Vec<String>>(br#"{"v": 1, "d": 5}"#), None);
    }
}
