//! Hop-by-hop header rules of the proxy.
//!
//! Owns: removing hop-by-hop headers (the fixed list and those named in `Connection`) and which
//! upgrades may pass (WebSocket only). The identity headers are `crate::identity`'s, the
//! forwarding headers `crate::forwarded`'s. Must not: decide whether a request is allowed.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::header_names::{FirstBytes, eq_dashed, remove_matching};

/// Hop-by-hop headers (RFC 9110 section 7.6.1 and the usual proxy extras); [`is_hop_by_hop`]
/// is what the proxy checks, this list is what the tests hold it to.
#[cfg(test)]
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// `proxy.strip_request_headers`: names removed in any spelling (lowercase, `_` read as `-`),
/// the path-override and identity-override headers frameworks act on.
#[derive(Debug, Clone)]
pub struct StripList {
    /// Lowercase, with `-`.
    names: Vec<String>,
    /// What they start with: a request's other names are passed on their first byte.
    first: FirstBytes,
}

impl StripList {
    /// `names`: lowercase, with `-` (as the config gives them).
    pub fn new(names: Vec<String>) -> StripList {
        let first = FirstBytes::of(names.iter().map(String::as_str));
        StripList { names, first }
    }
}

/// Removes every header whose name, lowercase and with `_` read as `-`, is on the list.
pub fn strip_named(headers: &mut HeaderMap, list: &StripList) {
    let listed = |n: &HeaderName| {
        let n = n.as_str();
        list.first.admits(n) && list.names.iter().any(|x| eq_dashed(n, x))
    };
    remove_matching(headers, listed);
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

/// Whether the request asks for a protocol upgrade (WebSocket).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    tokens(headers.get_all(header::CONNECTION).iter())
}

/// The tokens of `Connection` values.
fn tokens<'v>(values: impl Iterator<Item = &'v HeaderValue>) -> impl Iterator<Item = &'v str> {
    values.filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(str::trim).filter(|t| !t.is_empty())
}

/// Whether `name` is a hop-by-hop header (a match on the lowercase name: no list walked, no
/// name built).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Removes hop-by-hop headers and those named in `Connection`. With `keep_upgrade`, the
/// `Upgrade` header and `Connection: upgrade` survive (WebSocket handshakes).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names: most requests carry none, and every response of a keep-alive
    // upstream carries exactly `Connection: keep-alive`, which names no other header there
    // (`keep-alive` is hop-by-hop itself, and would have been found).
    let mut hops = headers.keys().filter(|n| is_hop_by_hop(n));
    let only_connection = match (hops.next(), hops.next()) {
        (None, _) => return,
        (Some(name), None) => *name == header::CONNECTION,
        _ => false,
    };
    // The header is found once (one hash of its name), read and removed through its entry.
    if only_connection
        && let header::Entry::Occupied(connection) = headers.entry(header::CONNECTION)
        && tokens(connection.iter()).all(|t| t.eq_ignore_ascii_case("keep-alive"))
    {
        connection.remove();
        return;
    }
    // A name listed in `Connection` is compared as text, not built.
    let named: Vec<&str> = connection_tokens(headers).collect();
    let listed = |n: &HeaderName| named.iter().any(|t| t.eq_ignore_ascii_case(n.as_str()));
    let found: Vec<HeaderName> = headers.keys().filter(|n| is_hop_by_hop(n) || listed(n)).cloned().collect();
    let upgrade = headers.get(header::UPGRADE).cloned();
    for name in &found {
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
    fn the_quick_check_knows_exactly_the_listed_names() {
        for name in &HOP_BY_HOP {
            assert!(is_hop_by_hop(name), "{name}");
        }
        for name in [header::HOST, header::AUTHORIZATION, HeaderName::from_static("x-te"), header::ACCEPT] {
            assert!(!is_hop_by_hop(&name), "{name}");
        }
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
    fn a_keep_alive_connection_header_alone_is_removed_and_nothing_else() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        h.insert(HeaderName::from_static("close"), HeaderValue::from_static("kept: not listed"));
        strip_hop_by_hop(&mut h, false);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["close", "content-type"]);
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, close"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["content-type"], "a listed name goes");
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["content-type"], "with another hop too");
        // Two `Connection` lines: the second one's names count too.
        h.append(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.append(header::CONNECTION, HeaderValue::from_static("close"));
        h.insert(HeaderName::from_static("close"), HeaderValue::from_static("listed on the second line"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["content-type"], "a second line's name goes");
    }

    #[test]
    fn names_listed_in_any_connection_header_in_any_case_are_removed_and_no_other() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("X-Secret-Hop ,, x_under"));
        h.append(header::CONNECTION, HeaderValue::from_static("AUTHORIZATION-HINT"));
        for name in ["x-secret-hop", "x_under", "authorization-hint", "x-under", "x-secret-hop-2"] {
            h.append(HeaderName::from_static(name), HeaderValue::from_static("v"));
        }
        h.append(HeaderName::from_static("x-secret-hop"), HeaderValue::from_static("second"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        strip_hop_by_hop(&mut h, false);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["x-secret-hop-2", "x-under"], "{h:?}");
    }

    #[test]
    fn listed_override_headers_are_removed_in_any_spelling() {
        let mut h = HeaderMap::new();
        for name in ["x-original-url", "X_Rewrite_Url", "true-client-ip", "x-forwarded-for"] {
            h.insert(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_static("/admin"));
        }
        let names: Vec<String> = ["x-original-url", "x-rewrite-url", "true-client-ip"].map(String::from).to_vec();
        strip_named(&mut h, &StripList::new(names));
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), vec!["x-forwarded-for"]);
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
