//! The route table: which upstream serves a path, and under which policy.
//!
//! Owns: longest-prefix matching on path-segment boundaries of the canonical path
//! ([`crate::path`]: dot segments, encoded slashes and the like never get this far), the
//! empty-segment opt-in per route, forward-auth's settings (they change with the routes on a
//! reload), and building the upstream URI from the same canonical path (optional prefix strip;
//! the query unchanged, byte for byte). Must not: touch headers or bodies.

use std::sync::Arc;

use crate::config::{OriginalUriSource, ProxySettings, RouteSpec, Unmatched};
use crate::metrics::{Metrics, RouteMetrics};
use crate::path::{CanonicalPath, PathError};
use http::Uri;
use http::uri::PathAndQuery;

/// One configured route, ready for the hot path: its settings (parsed by the config) and its
/// metric handles.
#[derive(Debug)]
pub struct Route {
    spec: RouteSpec,
    pub metrics: RouteMetrics,
}

impl std::ops::Deref for Route {
    type Target = RouteSpec;
    fn deref(&self) -> &RouteSpec {
        &self.spec
    }
}

/// Why no upstream URI could be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("the upstream URI is invalid")]
    InvalidUri,
}

impl RouteSpec {
    /// Whether `path` falls under this route (segment boundary unless the prefix ends in `/`).
    fn matches(&self, path: &str) -> bool {
        match path.strip_prefix(self.prefix.as_str()) {
            Some(rest) => self.prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }

    /// Refuses `//` unless this route accepts it.
    pub fn check_empty_segments(&self, path: &CanonicalPath) -> Result<(), PathError> {
        if path.has_empty_segments() && !self.allow_empty_segments {
            return Err(PathError::EmptySegment);
        }
        Ok(())
    }

    /// The upstream request target (origin form): the canonical path (prefix stripped if
    /// configured) under the upstream's base path, and the query.
    pub fn upstream_path(&self, path: &CanonicalPath, query: Option<&str>) -> Result<PathAndQuery, RouteError> {
        let tail = if self.strip_prefix { path.after_prefix(&self.prefix) } else { &path.as_str()[1..] };
        let mut pq = String::with_capacity(self.base_path.len() + tail.len() + 2 + query.map_or(0, str::len));
        pq.push_str(&self.base_path);
        pq.push('/');
        pq.push_str(tail);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        PathAndQuery::from_maybe_shared(bytes::Bytes::from(pq)).map_err(|_| RouteError::InvalidUri)
    }

    /// The upstream URI: scheme, authority and [`RouteSpec::upstream_path`].
    pub fn upstream_uri(&self, path: &CanonicalPath, query: Option<&str>) -> Result<Uri, RouteError> {
        let pq = self.upstream_path(path, query)?;
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|_| RouteError::InvalidUri)
    }
}

/// Routes sorted by prefix length, longest first, and forward-auth's settings.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
    /// Where `/auth/verify` reads the original URI; `None`: forward-auth is off.
    pub original_uri: Option<OriginalUriSource>,
    /// What `/auth/verify` answers for a path no route matches.
    pub unmatched: Unmatched,
}

impl RouteTable {
    /// The table of `c`'s routes; `metrics`: the families their handles count in.
    pub fn new(c: &ProxySettings, metrics: &Metrics) -> RouteTable {
        let mut routes: Vec<Arc<Route>> = c
            .routes
            .iter()
            .map(|spec| Arc::new(Route { metrics: RouteMetrics::new(&spec.label, metrics), spec: spec.clone() }))
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        RouteTable { routes, original_uri: c.original_uri, unmatched: c.unmatched }
    }

    /// The route of a canonical path: the longest prefix matching its `for_matching` form.
    pub fn find(&self, path: &CanonicalPath) -> Option<&Arc<Route>> {
        let matching = path.for_matching();
        self.routes.iter().find(|r| r.matches(&matching))
    }

    /// Every route prefix (tests and the property test's reference check).
    pub fn prefixes(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().map(|r| r.prefix.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: &[(&str, &str, bool)]) -> RouteTable {
        let cfg = crate::config::ProxyConfig {
            routes: routes
                .iter()
                .map(|(p, u, strip)| crate::config::RouteConfig {
                    path_prefix: p.to_string(),
                    upstream: u.to_string(),
                    auth: crate::config::RouteAuth::Required,
                    timeout: std::time::Duration::from_secs(30),
                    allowed_groups: None,
                    strip_prefix: *strip,
                    name: None,
                    allow_empty_segments: false,
                    allow_apps: false,
                    cors: true,
                })
                .collect(),
            ..Default::default()
        };
        RouteTable::new(&ProxySettings::try_from(&cfg).unwrap(), &Metrics::new())
    }

    fn path(p: &str) -> CanonicalPath {
        CanonicalPath::parse(p).unwrap()
    }

    #[test]
    fn longest_prefix_wins_on_segment_boundaries() {
        let t = table(&[
            ("/api/", "http://a:1", false),
            ("/api/admin/", "http://b:2", false),
            ("/docs", "http://c:3", false),
        ]);
        assert_eq!(t.find(&path("/api/admin/x")).unwrap().prefix, "/api/admin/");
        assert_eq!(t.find(&path("/api/users")).unwrap().prefix, "/api/");
        assert_eq!(t.find(&path("/docs")).unwrap().prefix, "/docs");
        assert_eq!(t.find(&path("/docs/a")).unwrap().prefix, "/docs");
        assert!(t.find(&path("/docsx")).is_none());
        assert!(t.find(&path("/other")).is_none());
        assert!(t.find(&path("/API/admin/x")).is_none(), "matching is case-sensitive");
    }

    #[test]
    fn empty_segments_choose_the_route_they_would_reach_and_need_its_opt_in() {
        let t = table(&[("/", "http://a:1", false), ("/admin/", "http://b:2", false)]);
        let p = path("//admin//x");
        let route = t.find(&p).unwrap();
        assert_eq!(route.prefix, "/admin/", "never the catch-all");
        assert_eq!(route.check_empty_segments(&p), Err(PathError::EmptySegment));
    }

    #[test]
    fn upstream_uri_is_the_canonical_path_and_the_query_and_can_strip_the_prefix() {
        let t = table(&[("/api/", "http://127.0.0.1:3000", false), ("/s/", "https://up.example/base/", true)]);
        let p = path("/api/%61b/c%20d");
        let uri = t.find(&p).unwrap().upstream_uri(&p, Some("x=1&y=%20z")).unwrap();
        assert_eq!(uri, "http://127.0.0.1:3000/api/ab/c%20d?x=1&y=%20z");
        let p = path("/s/x/y");
        assert_eq!(t.find(&p).unwrap().upstream_uri(&p, Some("q")).unwrap(), "https://up.example/base/x/y?q");
    }
}
