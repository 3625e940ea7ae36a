//! Header rules of the proxy and forward-auth: strip, then set.
//!
//! Owns: removing every client-sent header with the identity prefix (any case, `_` read as
//! `-`, every route: CGI, WSGI, PHP and Rack read `X_Auth_User_Id` as `HTTP_X_AUTH_USER_ID`,
//! the same variable as the real header) and the underscore twins of the forwarding headers
//! the gateway sets; removing hop-by-hop headers (the fixed list and those named in
//! `Connection`); which upgrades may pass (WebSocket only); and rendering identity values
//! (lists comma-separated, non-ASCII and `%` percent-encoded as UTF-8). Header names are
//! computed once from the config. The forwarding headers themselves are `crate::forwarded`'s.
//! Must not: decide whether a request is allowed.

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

/// Headers the gateway sets or vouches for, whose `_` spelling (`x_forwarded_for`) a CGI-style
/// upstream would read as the same variable: a client-sent twin with `_` is removed.
const UNDERSCORE_TWINS: [&str; 9] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-real-ip",
    "x-request-id",
    "x-original-url",
    "x-original-uri",
];

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
    /// `user` or `app`.
    pub principal_type: HeaderName,
    /// The app caller's client id.
    pub client_id: HeaderName,
}

impl IdentityHeaders {
    /// `prefix` was validated by the config (`X-Auth-` by default).
    pub fn new(prefix: &str) -> IdentityHeaders {
        let name = |suffix: &str| {
            HeaderName::from_bytes(format!("{prefix}{suffix}").as_bytes())
                .unwrap_or(HeaderName::from_static("x-auth-invalid"))
        };
        IdentityHeaders {
            prefix: prefix.to_ascii_lowercase().replace('_', "-"),
            user_id: name("User-Id"),
            oid: name("Oid"),
            tenant_id: name("Tenant-Id"),
            email: name("Email"),
            name: name("Name"),
            groups: name("Groups"),
            roles: name("Roles"),
            principal_type: name("Principal-Type"),
            client_id: name("Client-Id"),
        }
    }

    /// Removes every header whose name, with `_` read as `-`, starts with the prefix, and the
    /// `_` twins of the forwarding headers (names are lowercase in `http`).
    pub fn strip(&self, headers: &mut HeaderMap) {
        let spoofed = |n: &HeaderName| {
            let n = n.as_str();
            starts_with_dashed(n, &self.prefix)
                || (n.contains('_') && UNDERSCORE_TWINS.iter().any(|t| n.len() == t.len() && starts_with_dashed(n, t)))
        };
        if !headers.keys().any(spoofed) {
            return;
        }
        let names: Vec<HeaderName> = headers.keys().filter(|n| spoofed(n)).cloned().collect();
        for name in names {
            headers.remove(&name);
        }
    }

    /// The header values for a verified token, computed once per token.
    /// An app caller gets `Principal-Type: app`, its `Client-Id`, `Oid` (its service principal),
    /// `Tenant-Id`, `Roles` and empty `Groups`, and no `User-Id`, `Email` or `Name`: an
    /// upstream that needs a user finds none.
    pub fn values(&self, c: &InternalClaims) -> Vec<(HeaderName, HeaderValue)> {
        if c.is_app() {
            return vec![
                (self.principal_type.clone(), HeaderValue::from_static("app")),
                (self.client_id.clone(), encode(c.azp.as_deref().unwrap_or_default())),
                (self.oid.clone(), encode(&c.oid)),
                (self.tenant_id.clone(), encode(&c.tid)),
                (self.groups.clone(), HeaderValue::from_static("")),
                (self.roles.clone(), encode(&c.roles.join(","))),
            ];
        }
        let mut v = vec![
            (self.principal_type.clone(), HeaderValue::from_static("user")),
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

/// Whether `name`, with `_` read as `-`, starts with `prefix` (lowercase, with `-`).
fn starts_with_dashed(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len() && name.bytes().zip(prefix.bytes()).all(|(n, p)| n == p || (n == b'_' && p == b'-'))
}

/// Why an upgrade request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("only WebSocket upgrades are accepted (`Upgrade: websocket`)")]
pub struct UpgradeRefused;

/// `Ok(true)` for a WebSocket upgrade, `Ok(false)` for no upgrade at all; any other `Upgrade`
/// (`h2c`, a list, two headers) is refused: an `h2c` upgrade to a lenient upstream would be a
/// raw tunnel past routing.
pub fn check_upgrade(headers: &HeaderMap) -> Result<bool, UpgradeRefused> {
    let mut values = headers.get_all(header::UPGRADE).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(false),
        (Some(v), None) if v.as_bytes().eq_ignore_ascii_case(b"websocket") => Ok(is_upgrade(headers)),
        _ => Err(UpgradeRefused),
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
    fn underscore_spellings_of_identity_and_forwarding_headers_are_stripped() {
        let ids = IdentityHeaders::new("X-Auth-");
        let mut h = HeaderMap::new();
        for name in ["x_auth_user_id", "x-auth_groups", "x_forwarded_for", "x_real_ip", "x_request_id"] {
            h.insert(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_static("evil"));
        }
        h.insert(HeaderName::from_static("x-forwarded-for"), HeaderValue::from_static("kept for forwarded.rs"));
        h.insert(HeaderName::from_static("x_custom_app"), HeaderValue::from_static("keep"));
        h.insert(HeaderName::from_static("x_auth"), HeaderValue::from_static("keep: shorter than the prefix"));
        ids.strip(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left.len(), 3, "{left:?}");
        assert!(h.contains_key("x-forwarded-for") && h.contains_key("x_custom_app") && h.contains_key("x_auth"));
        let ids = IdentityHeaders::new("X_Auth_");
        let mut h = HeaderMap::new();
        h.insert(HeaderName::from_static("x-auth-user-id"), HeaderValue::from_static("evil"));
        ids.strip(&mut h);
        assert!(h.is_empty(), "a prefix written with _ strips the - spelling too");
    }

    #[test]
    fn only_websocket_upgrades_pass() {
        let mut h = HeaderMap::new();
        assert_eq!(check_upgrade(&h), Ok(false));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        assert_eq!(check_upgrade(&h), Ok(true));
        for bad in ["h2c", "websocket, h2c", "HTTP/2.0", ""] {
            h.insert(header::UPGRADE, HeaderValue::from_static(bad));
            assert_eq!(check_upgrade(&h), Err(UpgradeRefused), "{bad}");
        }
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.append(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(check_upgrade(&h), Err(UpgradeRefused), "two Upgrade headers");
    }
}
