//! Prometheus metrics: typed families with bounded label sets, rendered on the admin listener.
//!
//! Owns: metric names (the contract's `entra_gateway_*`), label names and the fixed vocabularies
//! of their values. Must not: take label values from requests (raw paths, user ids, tokens):
//! callers pass `&'static str` outcomes or route names that come from the config.

use std::sync::{Arc, Mutex, OnceLock, Weak};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Buckets from 100µs to 30s, so that sub-millisecond proxy overhead is visible.
const LATENCY_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Every metric family of the gateway, registered in its own registry (no global state).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// The routes' tallies not yet added to their families (see [`RouteMetrics`]): added at
    /// every rendering.
    route_tallies: Arc<Mutex<Vec<Weak<RouteSeries>>>>,
    pub exchange_total: IntCounterVec,
    pub exchange_duration: HistogramVec,
    pub proxy_requests_total: IntCounterVec,
    pub proxy_duration: HistogramVec,
    pub cache_requests_total: IntCounterVec,
    pub graph_requests_total: IntCounterVec,
    pub jwks_refresh_total: IntCounterVec,
    pub redis_latency: HistogramVec,
    pub config_reloads_total: IntCounterVec,
    pub tls_reloads_total: IntCounterVec,
    pub rate_limited_total: IntCounterVec,
    pub http_requests_total: IntCounterVec,
    pub connection_events_total: IntCounterVec,
    pub open_connections: IntGauge,
    pub jwks_stale: IntGaugeVec,
    pub revocation_feed_up: IntGauge,
    pub cache_integrity_failures_total: IntCounterVec,
    pub revocations_local: IntGauge,
    pub revocations_evicted_total: IntCounter,
    pub directory_sync_last_success: IntGauge,
    pub directory_sync_changes_total: IntCounterVec,
    pub directory_sync_errors_total: IntCounter,
    pub access_revoked_total: IntCounterVec,
    pub user_store_up: IntGaugeVec,
    pub user_store_pending_writes: IntGauge,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry.register(Box::new(c.clone())).expect("metric registered once");
    c
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    let h = HistogramVec::new(opts, labels).expect("static metric definition");
    registry.register(Box::new(h.clone())).expect("metric registered once");
    h
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("static metric definition");
    registry.register(Box::new(g.clone())).expect("metric registered once");
    g
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        // Process metrics (RSS, open fds, CPU seconds, start time) of this process.
        #[cfg(target_os = "linux")]
        {
            let _ = r.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()));
        }
        Metrics {
            exchange_total: counter(&r, "entra_gateway_exchange_total", "Token exchanges by outcome.", &["outcome"]),
            exchange_duration: histogram(
                &r,
                "entra_gateway_exchange_duration_seconds",
                "Time to answer /auth/exchange.",
                &[],
            ),
            proxy_requests_total: counter(
                &r,
                "entra_gateway_proxy_requests_total",
                "Proxied requests by route and status.",
                &["route", "status"],
            ),
            proxy_duration: histogram(
                &r,
                "entra_gateway_proxy_duration_seconds",
                "Time to answer a proxied request (headers).",
                &["route"],
            ),
            cache_requests_total: counter(
                &r,
                "entra_gateway_cache_requests_total",
                "Cache look-ups by cache and result (hit, miss, error).",
                &["cache", "result"],
            ),
            graph_requests_total: counter(
                &r,
                "entra_gateway_graph_requests_total",
                "Calls to Entra token endpoint and Microsoft Graph by endpoint and HTTP status (or `error`).",
                &["endpoint", "status"],
            ),
            jwks_refresh_total: counter(
                &r,
                "entra_gateway_jwks_refresh_total",
                "Entra JWKS fetches by result.",
                &["result"],
            ),
            redis_latency: histogram(
                &r,
                "entra_gateway_redis_command_duration_seconds",
                "Redis command latency by command.",
                &["command"],
            ),
            config_reloads_total: counter(
                &r,
                "entra_gateway_config_reloads_total",
                "Configuration reloads by result (success, error).",
                &["result"],
            ),
            tls_reloads_total: counter(
                &r,
                "entra_gateway_tls_reloads_total",
                "Listener certificate reloads by result (success, error).",
                &["result"],
            ),
            rate_limited_total: counter(
                &r,
                "entra_gateway_rate_limited_total",
                "Exchanges refused by a rate limit, by limit (ip, user).",
                &["limit"],
            ),
            http_requests_total: counter(
                &r,
                "entra_gateway_http_requests_total",
                "Requests on the public listener by endpoint (or route) and status.",
                &["endpoint", "status"],
            ),
            connection_events_total: counter(
                &r,
                "entra_gateway_connection_events_total",
                "Connections closed (or HTTP/2 streams reset) by the gateway's limits, by event (rejected_limit, \
                 first_request_timeout, idle_timeout, tls_handshake_timeout, tls_handshake_failed, \
                 write_timeout, stream_write_timeout).",
                &["event"],
            ),
            open_connections: {
                let g = IntGauge::new("entra_gateway_open_connections", "Open connections on the public listener.")
                    .expect("static metric definition");
                r.register(Box::new(g.clone())).expect("metric registered once");
                g
            },
            jwks_stale: {
                let opts = Opts::new(
                    "entra_gateway_jwks_stale",
                    "1 while a tenant's Entra signing keys are served past jwks_ttl because Entra cannot be reached.",
                );
                let g = IntGaugeVec::new(opts, &["tenant"]).expect("static metric definition");
                r.register(Box::new(g.clone())).expect("metric registered once");
                g
            },
            revocation_feed_up: {
                let g = IntGauge::new(
                    "entra_gateway_revocation_feed_up",
                    "1 while this replica follows logouts through Redis pub/sub (no Redis call per request).",
                )
                .expect("static metric definition");
                r.register(Box::new(g.clone())).expect("metric registered once");
                g
            },
            cache_integrity_failures_total: counter(
                &r,
                "entra_gateway_cache_integrity_failures_total",
                "Values read from Redis whose integrity check (HMAC) failed, by kind; each is ignored as a miss.",
                &["kind"],
            ),
            revocations_local: gauge(
                &r,
                "entra_gateway_revocations",
                "Revoked tokens this replica holds in process (bounded by cache.max_revocations).",
            ),
            revocations_evicted_total: {
                let c = IntCounter::new(
                    "entra_gateway_revocations_evicted_total",
                    "Revocations dropped from the in-process set because it was full (the soonest-expiring first).",
                )
                .expect("static metric definition");
                r.register(Box::new(c.clone())).expect("metric registered once");
                c
            },
            directory_sync_last_success: gauge(
                &r,
                "entra_gateway_directory_sync_last_success_timestamp_seconds",
                "When this replica last completed a directory sync poll (Unix seconds; 0: never).",
            ),
            directory_sync_changes_total: counter(
                &r,
                "entra_gateway_directory_sync_changes_total",
                "Users whose access the directory sync changed, by kind (disabled, deleted, removed, \
                 sessions_revoked, restored).",
                &["kind"],
            ),
            directory_sync_errors_total: {
                let c = IntCounter::new(
                    "entra_gateway_directory_sync_errors_total",
                    "Directory sync polls that failed (throttled, resync, Graph error).",
                )
                .expect("static metric definition");
                r.register(Box::new(c.clone())).expect("metric registered once");
                c
            },
            access_revoked_total: counter(
                &r,
                "entra_gateway_access_revoked_total",
                "Users whose access was taken away, by reason (disabled, deleted, removed, sessions_revoked, \
                 kill_switch).",
                &["reason"],
            ),
            user_store_up: {
                let opts = Opts::new(
                    "entra_gateway_user_store_up",
                    "1 while the user store answers (store: memory, redis, postgres); 0 while it is unreachable.",
                );
                let g = IntGaugeVec::new(opts, &["store"]).expect("static metric definition");
                r.register(Box::new(g.clone())).expect("metric registered once");
                g
            },
            user_store_pending_writes: gauge(
                &r,
                "entra_gateway_user_store_pending_writes",
                "Users whose record writes wait for PostgreSQL to answer again (bounded; flushed when it does).",
            ),
            registry: r,
            route_tallies: Arc::default(),
        }
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        self.add_route_tallies();
        let mut buf = Vec::new();
        let families = self.registry.gather();
        if TextEncoder::new().encode(&families, &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Exposes the access log's dropped lines as `entra_gateway_log_lines_dropped_total`.
    pub fn count_dropped_log_lines(&self, dropped: crate::logging::DroppedLines) {
        let _ = self.registry.register(Box::new(DroppedLogLines::new(dropped)));
    }

    pub fn cache(&self, cache: &'static str, result: &'static str) {
        self.cache_requests_total.with_label_values(&[cache, result]).inc();
    }
}

/// Reads the log writer's dropped-lines count when the metrics are scraped.
struct DroppedLogLines {
    dropped: crate::logging::DroppedLines,
    desc: prometheus::core::Desc,
}

impl DroppedLogLines {
    const NAME: &str = "entra_gateway_log_lines_dropped_total";
    const HELP: &str = "Log lines dropped because the log writer could not keep up (stdout too slow).";

    fn new(dropped: crate::logging::DroppedLines) -> DroppedLogLines {
        let desc = prometheus::core::Desc::new(Self::NAME.into(), Self::HELP.into(), vec![], Default::default())
            .expect("static metric definition");
        DroppedLogLines { dropped, desc }
    }
}

impl prometheus::core::Collector for DroppedLogLines {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let c = prometheus::IntCounter::new(Self::NAME, Self::HELP).expect("static metric definition");
        c.inc_by(self.dropped.get());
        c.collect()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The bounded status labels, in the order of [`status_slot`].
const STATUS_LABELS: [&str; 18] = [
    "200", "201", "204", "400", "401", "403", "404", "429", "500", "502", "503", "504", "1xx", "2xx", "3xx", "4xx",
    "5xx", "error",
];

/// The index in [`STATUS_LABELS`] of a status (`None`: no answer at all).
fn status_slot(status: Option<u16>) -> usize {
    match status {
        Some(200) => 0,
        Some(201) => 1,
        Some(204) => 2,
        Some(400) => 3,
        Some(401) => 4,
        Some(403) => 5,
        Some(404) => 6,
        Some(429) => 7,
        Some(500) => 8,
        Some(502) => 9,
        Some(503) => 10,
        Some(504) => 11,
        Some(s) if s < 200 => 12,
        Some(s) if s < 300 => 13,
        Some(s) if s < 400 => 14,
        Some(s) if s < 500 => 15,
        Some(_) => 16,
        None => 17,
    }
}

/// A bounded label for an HTTP status from an outbound call.
pub fn status_label(status: Option<u16>) -> &'static str {
    STATUS_LABELS[status_slot(status)]
}

/// One proxy route's metric series, each looked up by label once (on first use, so that a
/// route's series appear when it is first used, as before) and then used directly.
///
/// A route table belongs to one worker thread (see `app::Live`), so its routes' requests are
/// tallied here, on memory that worker alone writes, and added to the shared series when the
/// metrics are rendered (and when the route is dropped after a reload): a request costs an
/// uncontended lock and two additions, not five atomic operations on lines every worker
/// writes. A scrape sees every request that ended before it.
pub struct RouteMetrics(Arc<RouteSeries>);

struct RouteSeries {
    label: String,
    families: Metrics,
    duration: OnceLock<Histogram>,
    /// Per status slot: (`proxy_requests_total`, `http_requests_total`) of this route.
    requests: [OnceLock<(IntCounter, IntCounter)>; STATUS_LABELS.len()],
    tally: Mutex<Tally>,
}

/// What a route's requests added since the last rendering.
#[derive(Default)]
struct Tally {
    /// Requests per status slot (each counts in both of the slot's counters).
    requests: [u64; STATUS_LABELS.len()],
    duration: Option<prometheus::local::LocalHistogram>,
}

impl RouteMetrics {
    pub fn new(label: &str, families: &Metrics) -> RouteMetrics {
        let series = Arc::new(RouteSeries {
            label: label.to_string(),
            families: families.clone(),
            duration: OnceLock::new(),
            requests: std::array::from_fn(|_| OnceLock::new()),
            tally: Mutex::default(),
        });
        let mut tallies = families.route_tallies.lock().unwrap_or_else(|p| p.into_inner());
        tallies.retain(|t| t.strong_count() > 0);
        tallies.push(Arc::downgrade(&series));
        RouteMetrics(series)
    }

    /// A request of this route answered with `status` after `elapsed` (counted in
    /// `proxy_requests_total`, `http_requests_total` and `proxy_duration_seconds`).
    pub fn served(&self, status: u16, elapsed: std::time::Duration) {
        let mut tally = self.0.lock_tally();
        tally.requests[status_slot(Some(status))] += 1;
        tally.duration.get_or_insert_with(|| self.0.duration().local()).observe(elapsed.as_secs_f64());
    }
}

impl RouteSeries {
    fn lock_tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn duration(&self) -> &Histogram {
        self.duration.get_or_init(|| self.families.proxy_duration.with_label_values(&[self.label.as_str()]))
    }

    fn counters(&self, slot: usize) -> &(IntCounter, IntCounter) {
        self.requests[slot].get_or_init(|| {
            let values = [self.label.as_str(), STATUS_LABELS[slot]];
            (
                self.families.proxy_requests_total.with_label_values(&values),
                self.families.http_requests_total.with_label_values(&values),
            )
        })
    }

    /// Adds the tally to the series and starts a new one.
    fn add_tally(&self) {
        let mut tally = self.lock_tally();
        for (slot, count) in tally.requests.iter_mut().enumerate() {
            let n = std::mem::take(count);
            if n > 0 {
                let (proxied, answered) = self.counters(slot);
                proxied.inc_by(n);
                answered.inc_by(n);
            }
        }
        if let Some(duration) = &tally.duration {
            duration.flush();
        }
    }
}

impl Drop for RouteSeries {
    fn drop(&mut self) {
        self.add_tally();
    }
}

impl Metrics {
    /// Adds every route's tally to its series.
    fn add_route_tallies(&self) {
        let live: Vec<Arc<RouteSeries>> = {
            let mut tallies = self.route_tallies.lock().unwrap_or_else(|p| p.into_inner());
            tallies.retain(|t| t.strong_count() > 0);
            tallies.iter().filter_map(Weak::upgrade).collect()
        };
        for series in live {
            series.add_tally();
        }
    }
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics").field("label", &self.0.label).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_as_exact_prometheus_lines() {
        let m = Metrics::new();
        m.exchange_total.with_label_values(&["success"]).inc();
        m.cache("groups", "hit");
        let text = m.render();
        assert!(text.contains("entra_gateway_exchange_total{outcome=\"success\"} 1\n"), "{text}");
        assert!(text.contains("entra_gateway_cache_requests_total{cache=\"groups\",result=\"hit\"} 1\n"), "{text}");
    }

    #[test]
    fn route_handles_count_in_the_same_series_as_label_look_ups() {
        let m = Metrics::new();
        let route = RouteMetrics::new("api", &m);
        assert!(!m.render().contains("route=\"api\""), "no series before the first request");
        route.served(200, std::time::Duration::from_millis(2));
        route.served(200, std::time::Duration::from_millis(2));
        route.served(418, std::time::Duration::from_millis(2));
        m.proxy_requests_total.with_label_values(&["api", "200"]).inc();
        let text = m.render();
        assert!(text.contains("entra_gateway_proxy_requests_total{route=\"api\",status=\"200\"} 3\n"), "{text}");
        assert!(text.contains("entra_gateway_proxy_requests_total{route=\"api\",status=\"4xx\"} 1\n"), "{text}");
        assert!(text.contains("entra_gateway_proxy_duration_seconds_count{route=\"api\"} 3\n"), "{text}");
        assert!(text.contains("entra_gateway_http_requests_total{endpoint=\"api\",status=\"200\"} 2\n"), "{text}");
        route.served(200, std::time::Duration::from_millis(2));
        let text = m.render();
        assert!(text.contains("entra_gateway_proxy_requests_total{route=\"api\",status=\"200\"} 4\n"), "{text}");
        assert!(text.contains("entra_gateway_proxy_duration_seconds_count{route=\"api\"} 4\n"), "{text}");
    }

    #[test]
    fn a_routes_tally_survives_the_route() {
        let m = Metrics::new();
        let route = RouteMetrics::new("old", &m);
        route.served(502, std::time::Duration::from_millis(2));
        drop(route);
        let text = m.render();
        assert!(text.contains("entra_gateway_proxy_requests_total{route=\"old\",status=\"502\"} 1\n"), "{text}");
        assert!(text.contains("entra_gateway_proxy_duration_seconds_count{route=\"old\"} 1\n"), "{text}");
    }

    #[test]
    fn dropped_log_lines_are_exposed_even_when_none_were_dropped() {
        let m = Metrics::new();
        assert!(!m.render().contains("entra_gateway_log_lines_dropped_total"));
        m.count_dropped_log_lines(crate::logging::DroppedLines::default());
        assert!(m.render().contains("entra_gateway_log_lines_dropped_total 0\n"), "{}", m.render());
    }

    #[test]
    fn status_labels_stay_bounded() {
        assert_eq!(status_label(Some(418)), "4xx");
        assert_eq!(status_label(None), "error");
        assert_eq!(status_label(Some(504)), "504");
        assert_eq!(status_label(Some(302)), "3xx", "a redirect is not a client error");
        assert_eq!(status_label(Some(101)), "1xx");
        assert_eq!(status_label(Some(599)), "5xx");
        assert_eq!(status_label(Some(204)), "204");
    }
}
