//! CORS: which browser origins may call the gateway, and the headers that tell the browser so.
//!
//! Owns: parsing an `Origin` strictly (scheme, host, port; nothing else), matching it against
//! `server.cors.allowed_origins` (exact, or `scheme://*.domain[:port]` for one label), answering
//! preflights (`OPTIONS` with `Access-Control-Request-Method`) in full, and decorating actual
//! responses (`Access-Control-Allow-Origin` with the caller's origin, `Vary: Origin`, the exposed
//! headers). A refused origin, method or header gets no CORS header at all. Must not:
//! authenticate (a preflight carries no token and is never refused with 401), forward a
//! preflight, or expose identity headers (the config refuses them in `expose_headers`).

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `server.cors`, parsed.
#[derive(Debug, Clone)]
pub struct CorsPolicy {
    origins: Vec<OriginRule>,
    /// Upper case; `HEAD` and `GET` are always simple.
    methods: Vec<String>,
    /// Lower case.
    headers: Vec<String>,
    allow_methods: HeaderValue,
    expose: Option<HeaderValue>,
    max_age: HeaderValue,
    credentials: bool,
}

/// One `allowed_origins` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OriginRule {
    /// Any origin (only without credentials).
    Any,
    Exact(Origin),
    /// `scheme://*.suffix[:port]`: exactly one more label in front of `suffix`.
    Subdomain {
        scheme: String,
        suffix: String,
        port: Option<u16>,
    },
}

/// A serialized origin: `scheme://host[:port]`, lower case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl Origin {
    /// Parses an `Origin` value; anything but `http(s)://host[:port]` (a path, a query, user
    /// info, `null`, an odd character) is `None`.
    pub fn parse(value: &str) -> Option<Origin> {
        let value = value.to_ascii_lowercase();
        let (scheme, rest) = value.split_once("://")?;
        if scheme != "http" && scheme != "https" {
            return None;
        }
        let (host, port) = match rest.strip_prefix('[') {
            Some(v6) => {
                let (h, after) = v6.split_once(']')?;
                let port = if after.is_empty() { None } else { Some(parse_port(after.strip_prefix(':')?)?) };
                if h.is_empty() || !h.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
                    return None;
                }
                return Some(Origin { scheme: scheme.to_string(), host: format!("[{h}]"), port });
            }
            None => match rest.split_once(':') {
                Some((h, p)) => (h, Some(parse_port(p)?)),
                None => (rest, None),
            },
        };
        let valid = !host.is_empty()
            && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            && !host.starts_with('.')
            && !host.ends_with('.')
            && !host.contains("..");
        valid.then(|| Origin { scheme: scheme.to_string(), host: host.to_string(), port })
    }

    fn serialize(&self) -> String {
        match self.port {
            Some(p) => format!("{}://{}:{p}", self.scheme, self.host),
            None => format!("{}://{}", self.scheme, self.host),
        }
    }
}

/// A port as an origin spells it: digits, no leading zero, 1..=65535.
fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || p.starts_with('0') || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse().ok().filter(|&n| n != 0)
}

impl OriginRule {
    fn parse(entry: &str) -> Result<OriginRule, String> {
        if entry == "*" {
            return Ok(OriginRule::Any);
        }
        if let Some((scheme, rest)) = entry.split_once("://*.") {
            let Some(o) = Origin::parse(&format!("{scheme}://{rest}")) else {
                return Err(format!("{entry:?} is not an origin pattern like https://*.example.com"));
            };
            if !o.host.contains('.') {
                return Err(format!("{entry:?}: the wildcard must stand for one label of a domain with a dot"));
            }
            return Ok(OriginRule::Subdomain { scheme: o.scheme, suffix: o.host, port: o.port });
        }
        match Origin::parse(entry) {
            Some(o) if o.serialize() == entry.to_ascii_lowercase() => Ok(OriginRule::Exact(o)),
            _ => Err(format!(
                "{entry:?} is not an origin: scheme://host[:port], no path or trailing slash \
                 (e.g. https://app.example.com or http://localhost:3000)"
            )),
        }
    }

    fn allows(&self, o: &Origin) -> bool {
        match self {
            OriginRule::Any => true,
            OriginRule::Exact(rule) => rule == o,
            OriginRule::Subdomain { scheme, suffix, port } => {
                *scheme == o.scheme
                    && *port == o.port
                    && o.host
                        .strip_suffix(suffix.as_str())
                        .and_then(|l| l.strip_suffix('.'))
                        .is_some_and(|label| !label.is_empty() && !label.contains('.'))
            }
        }
    }
}

/// The raw `server.cors` settings.
#[derive(Debug, Clone)]
pub struct CorsSettings<'a> {
    pub allowed_origins: &'a [String],
    pub allowed_methods: &'a [String],
    pub allowed_headers: &'a [String],
    pub expose_headers: &'a [String],
    pub max_age: Duration,
    pub allow_credentials: bool,
}

/// What a preflight gets.
#[derive(Debug, PartialEq, Eq)]
pub enum Preflight {
    /// Allowed: these headers on a 204.
    Allowed(HeaderMap),
    /// Refused: the reason (for the log and the body), no CORS headers.
    Refused(&'static str),
}

impl CorsPolicy {
    /// Builds the policy; every error names the entry.
    pub fn new(s: &CorsSettings<'_>) -> Result<CorsPolicy, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let mut origins = Vec::new();
        for (i, entry) in s.allowed_origins.iter().enumerate() {
            match OriginRule::parse(entry) {
                Ok(OriginRule::Any) if s.allow_credentials => errors.push((
                    format!("allowed_origins[{i}]"),
                    "\"*\" cannot be combined with allow_credentials: list the origins".to_string(),
                )),
                Ok(rule) => origins.push(rule),
                Err(e) => errors.push((format!("allowed_origins[{i}]"), e)),
            }
        }
        if s.allowed_origins.is_empty() {
            errors.push(("allowed_origins".into(), "list at least one origin, e.g. https://app.example.com".into()));
        }
        let token = |v: &str| !v.is_empty() && HeaderName::from_bytes(v.as_bytes()).is_ok();
        for (key, list) in [
            ("allowed_methods", s.allowed_methods),
            ("allowed_headers", s.allowed_headers),
            ("expose_headers", s.expose_headers),
        ] {
            for (i, v) in list.iter().enumerate() {
                if !token(v) {
                    errors.push((format!("{key}[{i}]"), format!("{v:?} is not a method or header name")));
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let methods: Vec<String> = s.allowed_methods.iter().map(|m| m.to_ascii_uppercase()).collect();
        let headers: Vec<String> = s.allowed_headers.iter().map(|h| h.to_ascii_lowercase()).collect();
        let join = |v: &[String]| HeaderValue::from_str(&v.join(", ")).ok();
        // WWW-Authenticate always: a page must read a claims challenge (step-up, CAE) to answer it.
        let mut expose: Vec<String> = s.expose_headers.iter().map(|h| h.to_ascii_lowercase()).collect();
        if !expose.iter().any(|h| h == "www-authenticate") {
            expose.push("www-authenticate".into());
        }
        Ok(CorsPolicy {
            allow_methods: join(&methods).unwrap_or(HeaderValue::from_static("GET")),
            expose: if expose.is_empty() { None } else { join(&expose) },
            max_age: HeaderValue::from(s.max_age.as_secs()),
            origins,
            methods,
            headers,
            credentials: s.allow_credentials,
        })
    }

    /// The request's origin when it is allowed: exactly one `Origin` header, well formed,
    /// matching a rule.
    pub fn allowed_origin(&self, request: &HeaderMap) -> Option<HeaderValue> {
        let mut values = request.get_all(header::ORIGIN).iter();
        let (Some(value), None) = (values.next(), values.next()) else { return None };
        let origin = Origin::parse(value.to_str().ok()?)?;
        if !self.origins.iter().any(|r| r.allows(&origin)) {
            return None;
        }
        HeaderValue::from_str(&origin.serialize()).ok()
    }

    /// Answers a preflight for an endpoint or route that has CORS on.
    pub fn preflight(&self, request: &HeaderMap) -> Preflight {
        let Some(origin) = self.allowed_origin(request) else { return Preflight::Refused("origin not allowed") };
        let method = request.get(header::ACCESS_CONTROL_REQUEST_METHOD).and_then(|m| m.to_str().ok()).unwrap_or("");
        let simple = matches!(method, "GET" | "HEAD" | "POST");
        if !simple && !self.methods.iter().any(|m| m == method) {
            return Preflight::Refused("method not allowed");
        }
        let requested: Vec<String> = request
            .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        if requested.iter().any(|h| !self.headers.contains(h)) {
            return Preflight::Refused("header not allowed");
        }
        let mut h = HeaderMap::new();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, self.allow_methods.clone());
        if !requested.is_empty()
            && let Ok(v) = HeaderValue::from_str(&requested.join(", "))
        {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        h.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        if self.credentials {
            h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        Preflight::Allowed(h)
    }

    /// Decorates an actual response: the upstream's own CORS headers are replaced by the
    /// gateway's (or removed, for an origin that is not allowed); `Vary: Origin` always.
    pub fn decorate(&self, request_origin: Option<HeaderValue>, response: &mut HeaderMap) {
        for name in [
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            header::ACCESS_CONTROL_ALLOW_METHODS,
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            header::ACCESS_CONTROL_MAX_AGE,
        ] {
            response.remove(name);
        }
        add_vary(response, "origin");
        let Some(origin) = request_origin else { return };
        response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        if let Some(expose) = &self.expose {
            response.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
        if self.credentials {
            response.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
    }
}

/// Whether a request is a CORS preflight: `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`.
pub fn is_preflight(method: &http::Method, headers: &HeaderMap) -> bool {
    method == http::Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// Adds `token` to `Vary` unless it is there (or `Vary: *`).
pub fn add_vary(response: &mut HeaderMap, token: &str) {
    let present = response
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == "*" || t.trim().eq_ignore_ascii_case(token));
    if !present && let Ok(v) = HeaderValue::from_str(token) {
        response.append(header::VARY, v);
    }
}

/// The `Vary` of a preflight answer.
pub fn preflight_vary(response: &mut HeaderMap) {
    for t in ["origin", "access-control-request-method", "access-control-request-headers"] {
        add_vary(response, t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(origins: &[&str]) -> CorsPolicy {
        let o: Vec<String> = origins.iter().map(|s| s.to_string()).collect();
        let m: Vec<String> = ["GET", "POST", "PUT", "DELETE"].iter().map(|s| s.to_string()).collect();
        let h: Vec<String> = ["authorization", "content-type"].iter().map(|s| s.to_string()).collect();
        let e = vec!["x-request-id".to_string()];
        CorsPolicy::new(&CorsSettings {
            allowed_origins: &o,
            allowed_methods: &m,
            allowed_headers: &h,
            expose_headers: &e,
            max_age: Duration::from_secs(600),
            allow_credentials: false,
        })
        .unwrap()
    }

    fn origin(p: &CorsPolicy, values: &[&str]) -> Option<String> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::ORIGIN, HeaderValue::from_str(v).unwrap());
        }
        p.allowed_origin(&h).map(|v| v.to_str().unwrap().to_string())
    }

    #[test]
    fn exact_origins_match_exactly_and_odd_spellings_do_not() {
        let p = policy(&["https://app.example.com", "http://localhost:3000"]);
        assert_eq!(origin(&p, &["https://app.example.com"]).as_deref(), Some("https://app.example.com"));
        assert_eq!(origin(&p, &["HTTPS://APP.EXAMPLE.COM"]).as_deref(), Some("https://app.example.com"), "case");
        assert_eq!(origin(&p, &["http://localhost:3000"]).as_deref(), Some("http://localhost:3000"));
        for refused in [
            "http://app.example.com",
            "https://app.example.com:443",
            "https://app.example.com/",
            "https://app.example.com.evil.test",
            "https://evil.test/https://app.example.com",
            "https://app.example.com@evil.test",
            "https://app%2eexample.com",
            "https://app_example.com",
            "http://localhost:03000",
            "http://localhost:3001",
            "null",
            "",
        ] {
            assert_eq!(origin(&p, &[refused]), None, "{refused}");
        }
        assert_eq!(origin(&p, &["https://app.example.com", "https://app.example.com"]), None, "two Origin headers");
    }

    #[test]
    fn a_wildcard_stands_for_exactly_one_label() {
        let p = policy(&["https://*.example.com"]);
        assert_eq!(origin(&p, &["https://a.example.com"]).as_deref(), Some("https://a.example.com"));
        for refused in [
            "https://example.com",
            "https://a.b.example.com",
            "https://aexample.com",
            "https://a.example.com.evil.test",
            "http://a.example.com",
            "https://a.example.com:8443",
            "https://.example.com",
        ] {
            assert_eq!(origin(&p, &[refused]), None, "{refused}");
        }
    }

    #[test]
    fn bad_entries_are_named_and_star_needs_credentials_off() {
        let bad = |o: &[&str], creds: bool| {
            let o: Vec<String> = o.iter().map(|s| s.to_string()).collect();
            CorsPolicy::new(&CorsSettings {
                allowed_origins: &o,
                allowed_methods: &[],
                allowed_headers: &[],
                expose_headers: &[],
                max_age: Duration::from_secs(1),
                allow_credentials: creds,
            })
            .unwrap_err()
        };
        assert_eq!(bad(&["https://app.example.com/"], false)[0].0, "allowed_origins[0]");
        assert_eq!(bad(&["https://*.com"], false)[0].0, "allowed_origins[0]");
        assert!(bad(&["*"], true)[0].1.contains("allow_credentials"));
        assert_eq!(bad(&[], false)[0].0, "allowed_origins");
    }

    fn preflight(p: &CorsPolicy, method: &str, headers: Option<&str>) -> Preflight {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, HeaderValue::from_static("https://app.example.com"));
        h.insert(header::ACCESS_CONTROL_REQUEST_METHOD, HeaderValue::from_str(method).unwrap());
        if let Some(v) = headers {
            h.insert(header::ACCESS_CONTROL_REQUEST_HEADERS, HeaderValue::from_str(v).unwrap());
        }
        p.preflight(&h)
    }

    #[test]
    fn preflights_check_method_and_headers() {
        let p = policy(&["https://app.example.com"]);
        let Preflight::Allowed(h) = preflight(&p, "PUT", Some("Authorization, Content-Type")) else { panic!() };
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_METHODS], "GET, POST, PUT, DELETE");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_HEADERS], "authorization, content-type");
        assert_eq!(h[header::ACCESS_CONTROL_MAX_AGE], "600");
        assert!(!h.contains_key(header::ACCESS_CONTROL_ALLOW_CREDENTIALS));
        assert_eq!(preflight(&p, "PATCH", None), Preflight::Refused("method not allowed"));
        assert_eq!(preflight(&p, "put", None), Preflight::Refused("method not allowed"), "methods are case-sensitive");
        assert_eq!(preflight(&p, "GET", Some("x-auth-user-id")), Preflight::Refused("header not allowed"));
    }

    #[test]
    fn decorating_replaces_the_upstreams_cors_headers_and_always_varies() {
        let p = policy(&["https://app.example.com"]);
        let mut resp = HeaderMap::new();
        resp.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        resp.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        p.decorate(None, &mut resp);
        assert!(!resp.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN), "a refused origin gets none");
        let vary: Vec<_> = resp.get_all(header::VARY).iter().collect();
        assert_eq!(vary, ["Accept-Encoding", "origin"]);
        p.decorate(Some(HeaderValue::from_static("https://app.example.com")), &mut resp);
        assert_eq!(resp[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        assert_eq!(
            resp[header::ACCESS_CONTROL_EXPOSE_HEADERS],
            "x-request-id, www-authenticate",
            "claims challenges are readable"
        );
        assert_eq!(resp.get_all(header::VARY).iter().count(), 2, "Vary: Origin once");
    }
}
