//! Header rules of the proxy and forward-auth: strip, then set.
//!
//! Owns: removing every client-sent header with the identity prefix (any case, every route),
//! removing hop-by-hop headers (the fixed list and those named in `Connection`), setting
//! `X-Forwarded-For/-Proto/-Host`, and rendering identity values (lists comma-separated,
//! non-ASCII and `%` percent-encoded as UTF-8). Header names are computed once from the config.
//! Must not: decide whether a request is allowed.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

use crate::issuer::InternalClaims;

/// Controls, `%` (so that decoding is unambiguous) and every non-ASCII byte are encoded.
const VALUE_ENCODE: &AsciiSet = &CONTROLS.add(b'%');

/// Hop-by-hop headers (RFC 9110 section 7.6.1 and the usual proxy extras).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The identity header names for a configured prefix.
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    prefix: String,
    pub user_id: HeaderName,
    pub oid: HeaderName,
    pub tenant_id: HeaderName,
    pub email: HeaderName,
    pub name: HeaderName,
    pub groups: HeaderName,
    pub roles: HeaderName,
}

impl IdentityHeaders {
    /// `prefix` was validated by the config (`X-Auth-` by default).
    pub fn new(prefix: &str) -> IdentityHeaders {
        let name = |suffix: &str| {
            HeaderName::from_bytes(format!("{prefix}{suffix}").as_bytes())
                .unwrap_or(HeaderName::from_static("x-auth-invalid"))
        };
        IdentityHeaders {
            prefix: prefix.to_ascii_lowercase(),
            user_id: name("User-Id"),
            oid: name("Oid"),
            tenant_id: name("Tenant-Id"),
            email: name("Email"),
            name: name("Name"),
            groups: name("Groups"),
            roles: name("Roles"),
        }
    }

    /// Removes every header whose name starts with the prefix (names are lowercase in `http`).
    pub fn strip(&self, headers: &mut HeaderMap) {
        let spoofed: Vec<HeaderName> =
            headers.keys().filter(|n| n.as_str().starts_with(&self.prefix)).cloned().collect();
        for name in spoofed {
            headers.remove(&name);
        }
    }

    /// The header values for a verified token, computed once per token.
    pub fn values(&self, c: &InternalClaims) -> Vec<(HeaderName, HeaderValue)> {
        let mut v = vec![
            (self.user_id.clone(), encode(&c.sub)),
            (self.oid.clone(), encode(&c.oid)),
            (self.tenant_id.clone(), encode(&c.tid)),
            (self.groups.clone(), encode(&c.groups.join(","))),
            (self.roles.clone(), encode(&c.roles.join(","))),
        ];
        if let Some(e) = &c.email {
            v.push((self.email.clone(), encode(e)));
        }
        if let Some(n) = &c.name {
            v.push((self.name.clone(), encode(n)));
        }
        v
    }
}

/// A header value: printable ASCII kept, everything else percent-encoded UTF-8.
pub fn encode(value: &str) -> HeaderValue {
    let encoded = utf8_percent_encode(value, VALUE_ENCODE).to_string();
    HeaderValue::from_str(&encoded).unwrap_or(HeaderValue::from_static(""))
}

/// Whether the request asks for a protocol upgrade (WebSocket).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop headers and those named in `Connection`. With `keep_upgrade`, the
/// `Upgrade` header and `Connection: upgrade` survive (WebSocket handshakes).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> =
        connection_tokens(headers).filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok()).collect();
    let upgrade = headers.get(header::UPGRADE).cloned();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    if keep_upgrade && let Some(u) = upgrade {
        headers.insert(header::UPGRADE, u);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Appends the peer to `X-Forwarded-For` and sets `X-Forwarded-Proto` and `X-Forwarded-Host`.
pub fn set_forwarded(headers: &mut HeaderMap, peer: IpAddr, proto: &'static str) {
    let chain = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.trim().is_empty() => format!("{prior}, {peer}"),
        _ => peer.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&chain) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    if let Some(host) = headers.get(header::HOST).cloned() {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_identity_headers_whatever_their_case() {
        let ids = IdentityHeaders::new("X-Auth-");
        let mut h = HeaderMap::new();
        h.insert(HeaderName::from_static("x-auth-user-id"), HeaderValue::from_static("evil"));
        h.insert(HeaderName::from_bytes(b"X-AUTH-ROLES").unwrap(), HeaderValue::from_static("admin"));
        h.insert(HeaderName::from_static("x-authorization-hint"), HeaderValue::from_static("keep"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        ids.strip(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert!(h.contains_key("x-authorization-hint"));
    }

    #[test]
    fn removes_all_hop_by_hop_headers_including_those_named_in_connection() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, X-Secret-Hop"));
        h.insert(HeaderName::from_static("x-secret-hop"), HeaderValue::from_static("1"));
        h.insert(HeaderName::from_static("keep-alive"), HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
    }

    #[test]
    fn upgrade_survives_only_when_asked() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
    }

    #[test]
    fn non_ascii_values_are_percent_encoded_utf8() {
        assert_eq!(encode("Alice Jørgensen"), "Alice J%C3%B8rgensen");
        assert_eq!(encode("100%"), "100%25");
        assert_eq!(encode("a\r\nb"), "a%0D%0Ab");
        assert_eq!(encode("plain ascii, ok"), "plain ascii, ok");
    }

    #[test]
    fn forwarded_headers_append_the_peer() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("app.example"));
        h.insert(X_FORWARDED_FOR.clone(), HeaderValue::from_static("10.0.0.1"));
        set_forwarded(&mut h, "127.0.0.1".parse().unwrap(), "https");
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1, 127.0.0.1");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert_eq!(h[&X_FORWARDED_HOST], "app.example");
    }
}
