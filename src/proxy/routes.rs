//! The route table: which upstream serves a path, and under which policy.
//!
//! Owns: longest-prefix matching on path-segment boundaries, refusing paths with dot-segments
//! (plain or percent-encoded) so that `/api/../admin/` cannot slip past a route's groups, and
//! building the upstream URI (optional prefix strip; path and query otherwise unchanged, byte
//! for byte). Must not: touch headers or bodies.

use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use http::uri::{Authority, PathAndQuery, Scheme};
use percent_encoding::percent_decode_str;

use crate::config::{ProxyConfig, RouteAuth, RouteConfig};

/// One configured route, ready for the hot path.
#[derive(Debug)]
pub struct Route {
    /// The metrics/log label: `name`, or the path prefix.
    pub label: String,
    pub prefix: String,
    pub auth: RouteAuth,
    pub timeout: Duration,
    /// Lowercase group ids; `None` means any authenticated user.
    pub groups: Option<Vec<String>>,
    pub strip_prefix: bool,
    scheme: Scheme,
    authority: Authority,
    base_path: String,
}

/// Why no upstream URI could be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("the path contains `.` or `..` segments")]
    DotSegments,
    #[error("the upstream URI is invalid")]
    InvalidUri,
}

impl Route {
    fn from_config(c: &RouteConfig) -> Option<Route> {
        let url = url::Url::parse(&c.upstream).ok()?;
        let scheme = if url.scheme() == "https" { Scheme::HTTPS } else { Scheme::HTTP };
        let host = url.host_str()?;
        let authority = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        Some(Route {
            label: c.name.clone().unwrap_or_else(|| c.path_prefix.clone()),
            prefix: c.path_prefix.clone(),
            auth: c.auth,
            timeout: c.timeout,
            groups: c.allowed_groups.as_ref().map(|g| g.iter().map(|x| x.to_ascii_lowercase()).collect()),
            strip_prefix: c.strip_prefix,
            scheme,
            authority: authority.parse().ok()?,
            base_path: url.path().trim_end_matches('/').to_string(),
        })
    }

    /// Whether `path` falls under this route (segment boundary unless the prefix ends in `/`).
    fn matches(&self, path: &str) -> bool {
        match path.strip_prefix(self.prefix.as_str()) {
            Some(rest) => self.prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }

    /// `host:port` of the upstream (for logs).
    pub fn upstream_authority(&self) -> String {
        self.authority.to_string()
    }

    /// The upstream URI for an incoming one.
    pub fn upstream_uri(&self, incoming: &Uri) -> Result<Uri, RouteError> {
        let path = incoming.path();
        let tail = if self.strip_prefix { &path[self.prefix.len().min(path.len())..] } else { path };
        let tail = tail.strip_prefix('/').unwrap_or(tail);
        let mut pq = format!("{}/{tail}", self.base_path);
        if let Some(q) = incoming.query() {
            pq.push('?');
            pq.push_str(q);
        }
        let pq: PathAndQuery = pq.parse().map_err(|_| RouteError::InvalidUri)?;
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|_| RouteError::InvalidUri)
    }
}

/// Routes sorted by prefix length, longest first.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
}

impl RouteTable {
    pub fn from_config(c: &ProxyConfig) -> RouteTable {
        let mut routes: Vec<Arc<Route>> = c.routes.iter().filter_map(Route::from_config).map(Arc::new).collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        RouteTable { routes }
    }

    /// The route of `path`: the longest matching prefix.
    pub fn find(&self, path: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| r.matches(path))
    }
}

/// Refuses `.`/`..` segments, also when percent-encoded or separated by `\`.
pub fn check_path(path: &str) -> Result<(), RouteError> {
    let decoded = percent_decode_str(path).decode_utf8_lossy();
    if decoded.split(['/', '\\']).any(|seg| seg == "." || seg == "..") {
        return Err(RouteError::DotSegments);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: &[(&str, &str, bool)]) -> RouteTable {
        let cfg = ProxyConfig {
            routes: routes
                .iter()
                .map(|(p, u, strip)| RouteConfig {
                    path_prefix: p.to_string(),
                    upstream: u.to_string(),
                    auth: RouteAuth::Required,
                    timeout: Duration::from_secs(30),
                    allowed_groups: None,
                    strip_prefix: *strip,
                    name: None,
                })
                .collect(),
            ..ProxyConfig::default()
        };
        RouteTable::from_config(&cfg)
    }

    #[test]
    fn longest_prefix_wins_on_segment_boundaries() {
        let t = table(&[
            ("/api/", "http://a:1", false),
            ("/api/admin/", "http://b:2", false),
            ("/docs", "http://c:3", false),
        ]);
        assert_eq!(t.find("/api/admin/x").unwrap().prefix, "/api/admin/");
        assert_eq!(t.find("/api/users").unwrap().prefix, "/api/");
        assert_eq!(t.find("/docs").unwrap().prefix, "/docs");
        assert_eq!(t.find("/docs/a").unwrap().prefix, "/docs");
        assert!(t.find("/docsx").is_none());
        assert!(t.find("/other").is_none());
    }

    #[test]
    fn upstream_uri_keeps_path_and_query_byte_for_byte_and_can_strip_the_prefix() {
        let t = table(&[("/api/", "http://127.0.0.1:3000", false), ("/s/", "https://up.example/base/", true)]);
        let u: Uri = "/api/a%2Fb/c?x=1&y=%20z".parse().unwrap();
        assert_eq!(t.find(u.path()).unwrap().upstream_uri(&u).unwrap(), "http://127.0.0.1:3000/api/a%2Fb/c?x=1&y=%20z");
        let u: Uri = "/s/x/y?q".parse().unwrap();
        assert_eq!(t.find(u.path()).unwrap().upstream_uri(&u).unwrap(), "https://up.example/base/x/y?q");
    }

    #[test]
    fn dot_segments_are_refused_even_when_encoded() {
        for p in ["/api/../admin", "/api/./x", "/api/%2e%2e/admin", "/api/..%2fadmin", "/api/..\\admin", "/api/%2E%2E"]
        {
            assert_eq!(check_path(p), Err(RouteError::DotSegments), "{p}");
        }
        assert!(check_path("/api/a..b/c.d").is_ok());
    }
}
