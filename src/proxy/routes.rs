//! The route table: which upstream serves a path, and under which policy.
//!
//! Owns: longest-prefix matching on path-segment boundaries of the canonical path
//! ([`crate::path`]: dot segments, encoded slashes and the like never get this far), compared
//! case-insensitively (ASCII) unless a route sets `case_sensitive: true` (Express, ASP.NET Core
//! and IIS serve `/ADMIN/x` from the `/admin/` handlers), a prefix ending in `/` covering its
//! bare path too (`/admin/` covers `/admin` and `/admin?x`), the stricter policy whenever two
//! readings of a path differ (see [`RouteMatch`]), the empty-segment opt-in per route, forward-auth's settings (they change with the routes on a
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
    /// Whether `path` falls under this route, by the route's own reading (case folded unless
    /// `case_sensitive`).
    fn matches(&self, path: &str) -> bool {
        prefix_matches(&self.prefix, path, !self.case_sensitive)
    }

    /// Whether `path` falls under this route with the case compared exactly.
    fn matches_exactly(&self, path: &str) -> bool {
        prefix_matches(&self.prefix, path, false)
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

/// Whether `path` is under `prefix`: on a segment boundary (or anywhere after a prefix ending in
/// `/`), or the bare path of a prefix ending in `/` (`/admin` for `/admin/`); `fold`: ASCII case
/// ignored.
pub fn prefix_matches(prefix: &str, path: &str, fold: bool) -> bool {
    let (p, b) = (prefix.as_bytes(), path.as_bytes());
    let same = |a: &[u8], b: &[u8]| if fold { a.eq_ignore_ascii_case(b) } else { a == b };
    if b.len() >= p.len() && same(&b[..p.len()], p) {
        return p.ends_with(b"/") || b.len() == p.len() || b[p.len()] == b'/';
    }
    p.len() > 1 && p.ends_with(b"/") && b.len() == p.len() - 1 && same(b, &p[..p.len() - 1])
}

/// The outcome of matching a path: the route that serves it (its upstream, metrics, CORS), and
/// any other route whose policy must hold as well because another reading of the same path
/// reaches it. Readings: the routes' own (case folded unless `case_sensitive`), and the exact
/// case. When they choose different routes, or two routes match equally long, every policy
/// involved applies: the stricter one wins, whatever the upstream makes of the case.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    route: Arc<Route>,
    also: Vec<Arc<Route>>,
}

impl RouteMatch {
    /// The route that serves the request.
    pub fn route(&self) -> &Arc<Route> {
        &self.route
    }

    /// Every route whose policy applies: the serving one first.
    pub fn policies(&self) -> impl Iterator<Item = &Arc<Route>> {
        std::iter::once(&self.route).chain(self.also.iter())
    }

    /// Whether any of the policies needs a token.
    pub fn requires_auth(&self) -> bool {
        self.policies().any(|r| r.auth == crate::config::RouteAuth::Required)
    }

    /// The serving route.
    pub fn into_route(self) -> Arc<Route> {
        self.route
    }
}

impl std::ops::Deref for RouteMatch {
    type Target = Route;
    fn deref(&self) -> &Route {
        &self.route
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
    /// The table of `c`'s routes; `metrics`: the families their handles count in. Each table
    /// has its own copies (a worker's table is written by that worker alone, see `app::Live`),
    /// down to the upstream's `Host` value, which every request forwarded there takes a
    /// reference to.
    pub fn new(c: &ProxySettings, metrics: &Metrics) -> RouteTable {
        let own = |spec: &RouteSpec| {
            let mut spec = spec.clone();
            if let Ok(host) = http::HeaderValue::from_bytes(spec.host_header.as_bytes()) {
                spec.host_header = host;
            }
            spec
        };
        let mut routes: Vec<Arc<Route>> = c
            .routes
            .iter()
            .map(|spec| Arc::new(Route { metrics: RouteMetrics::new(&spec.label, metrics), spec: own(spec) }))
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        RouteTable { routes, original_uri: c.original_uri, unmatched: c.unmatched }
    }

    /// The route of a canonical path: the longest prefix matching its `for_matching` form by
    /// each route's own reading; an equally long match, or the longest exact-case match when it
    /// is another route, adds its policy (see [`RouteMatch`]).
    pub fn find(&self, path: &CanonicalPath) -> Option<RouteMatch> {
        let matching = path.for_matching();
        let mut candidates = self.routes.iter().filter(|r| r.matches(&matching));
        let first = candidates.next()?;
        let mut found = RouteMatch { route: first.clone(), also: Vec::new() };
        for tie in candidates.take_while(|r| r.prefix.len() == first.prefix.len()) {
            // Equally long: the exact-case one serves; both policies hold.
            if tie.matches_exactly(&matching) && !found.route.matches_exactly(&matching) {
                found.also.push(std::mem::replace(&mut found.route, tie.clone()));
            } else {
                found.also.push(tie.clone());
            }
        }
        if let Some(exact) = self.routes.iter().find(|r| r.matches_exactly(&matching))
            && !found.policies().any(|r| Arc::ptr_eq(r, exact))
        {
            found.also.push(exact.clone());
        }
        Some(found)
    }

    /// Every route prefix (tests and the property test's reference check).
    pub fn prefixes(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().map(|r| r.prefix.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_of(routes: Vec<crate::config::RouteConfig>) -> RouteTable {
        let cfg = crate::config::ProxyConfig { routes, ..Default::default() };
        RouteTable::new(&ProxySettings::try_from(&cfg).unwrap(), &Metrics::new())
    }

    fn table(routes: &[(&str, &str, bool)]) -> RouteTable {
        table_of(
            routes
                .iter()
                .map(|(p, u, strip)| crate::config::RouteConfig {
                    strip_prefix: *strip,
                    ..crate::config::RouteConfig::new(p, u)
                })
                .collect(),
        )
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
        assert_eq!(t.find(&path("/API/Admin/x")).unwrap().prefix, "/api/admin/", "case folded");
        assert_eq!(t.find(&path("/api")).unwrap().prefix, "/api/", "the bare path of a prefix ending in /");
        assert!(t.find(&path("/apix")).is_none());
    }

    #[test]
    fn when_two_readings_differ_every_policy_involved_applies() {
        let mut cs = crate::config::RouteConfig::new("/Docs/", "http://c:3");
        cs.case_sensitive = true;
        cs.auth = crate::config::RouteAuth::None;
        let t = table_of(vec![
            crate::config::RouteConfig::new("/api/", "http://a:1"),
            {
                let mut r = crate::config::RouteConfig::new("/API/public/", "http://b:2");
                r.auth = crate::config::RouteAuth::None;
                r
            },
            cs,
        ]);
        // Folded, /API/public/ is longer; exactly, only /api/ matches: both policies hold.
        let m = t.find(&path("/api/public/x")).unwrap();
        assert_eq!(m.prefix, "/API/public/");
        assert!(m.requires_auth(), "the protected reading wins");
        // A case-sensitive route is reached only by its exact case.
        assert!(t.find(&path("/docs/x")).is_none());
        let m = t.find(&path("/Docs/x")).unwrap();
        assert!(!m.requires_auth());
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
