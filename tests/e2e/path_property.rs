//! Property test of the path canonicaliser (`entra_gateway::path`) and the route table:
//! for arbitrary input, either the request is refused, or the path forwarded resolves, by an
//! independent reference resolution (full percent-decoding, `\` read as `/`, `;` parameters
//! removed, RFC 3986 `remove_dot_segments`), to a path under the matched route's prefix and
//! under no longer (stricter) prefix. That is: whatever a lenient upstream (Tomcat, Spring,
//! IIS, a CGI script) makes of the forwarded path, it is a path of the route that was checked.
//!
//! The test command runs 4096 cases; a long run:
//!   PROPTEST_CASES=1000000 cargo test --release --test e2e path_property

use entra_gateway::config::{ProxyConfig, ProxySettings, RouteAuth, RouteConfig};
use entra_gateway::path::CanonicalPath;
use entra_gateway::proxy::routes::RouteTable;
use proptest::prelude::*;

const PREFIXES: &[(&str, bool)] = &[
    ("/", true),
    ("/api/", false),
    ("/admin/", false),
    ("/admin/secret/", false),
    ("/public/", false),
    ("/docs", false),
    ("/files/", true),
];

fn table() -> RouteTable {
    let cfg = ProxyConfig {
        routes: PREFIXES
            .iter()
            .map(|(p, empty)| RouteConfig {
                auth: RouteAuth::Required,
                allow_empty_segments: *empty,
                ..RouteConfig::new(p, "http://127.0.0.1:1")
            })
            .collect(),
        ..ProxyConfig::default()
    };
    RouteTable::new(&ProxySettings::try_from(&cfg).unwrap(), &entra_gateway::metrics::Metrics::new())
}

/// Full percent-decoding (every `%XX`, once per pass, until nothing changes: what a server
/// that decodes twice would see), `\` as `/`, `;` parameters removed, dot segments resolved,
/// runs of `/` merged.
fn reference_resolution(path: &str) -> Vec<u8> {
    let mut bytes = path.as_bytes().to_vec();
    loop {
        let decoded: Vec<u8> = percent_encoding::percent_decode(&bytes).collect();
        if decoded == bytes {
            break;
        }
        bytes = decoded;
    }
    let slashed: Vec<u8> = bytes.iter().map(|&b| if b == b'\\' { b'/' } else { b }).collect();
    let without_params: Vec<Vec<u8>> = slashed
        .split(|&b| b == b'/')
        .map(|seg| seg.split(|&b| b == b';').next().unwrap_or_default().to_vec())
        .collect();
    let joined = without_params.join(&b'/');
    let resolved = remove_dot_segments(&joined);
    let mut merged = Vec::with_capacity(resolved.len());
    for b in resolved {
        if b != b'/' || merged.last() != Some(&b'/') {
            merged.push(b);
        }
    }
    merged
}

/// RFC 3986 section 5.2.4, on bytes.
fn remove_dot_segments(input: &[u8]) -> Vec<u8> {
    let mut input = input.to_vec();
    let mut output: Vec<u8> = Vec::new();
    while !input.is_empty() {
        if input.starts_with(b"../") {
            input.drain(..3);
        } else if input.starts_with(b"./") || input.starts_with(b"/./") {
            input.drain(..2);
        } else if input == b"/." {
            input = b"/".to_vec();
        } else if input.starts_with(b"/../") || input == b"/.." {
            if input == b"/.." {
                input = b"/".to_vec()
            } else {
                input.drain(..3);
            }
            match output.iter().rposition(|&b| b == b'/') {
                Some(i) => output.truncate(i),
                None => output.clear(),
            }
        } else if input == b"." || input == b".." {
            input.clear();
        } else {
            let start = usize::from(input[0] == b'/');
            let end = input[start..].iter().position(|&b| b == b'/').map(|i| i + start).unwrap_or(input.len());
            output.extend(input.drain(..end));
        }
    }
    output
}

/// Whether a resolved path is under `prefix` for an upstream that ignores case (the routes here
/// are all case-insensitive), the bare path of a prefix ending in `/` included.
fn under(path: &[u8], prefix: &str) -> bool {
    let p = prefix.as_bytes();
    let head = |n: usize| path.len() >= n && path[..n].eq_ignore_ascii_case(&p[..n]);
    (head(p.len()) && (p.ends_with(b"/") || path.len() == p.len() || path[p.len()] == b'/'))
        || (p.len() > 1 && p.ends_with(b"/") && path.len() == p.len() - 1 && head(p.len() - 1))
}

/// A piece of a segment: route names, dots and their spellings, parameters, escapes.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(vec![
            "..", ".", "%2e", "%2E", ".%2e", "%2e.", "%2e%2e", "...", ";", ";x=1", "%3b", "%3B",
            "admin", "api", "public", "secret", "docs", "files", "%61dmin", "%61pi", "%64ocs", "ADMIN",
            "x", "%20", " ", "é", "%c3%a9", "%e9", "%c0%ae", "%5c", "%5C", "\\", "%2f", "%2F", "%25",
            "%252e", "%252f", "%", "%2", "%u002e", "~", "%7e", "|", "?", "#", ":", "@", "%00", "%0a",
        ]).prop_map(str::to_string),
        1 => any::<char>().prop_map(|c| c.to_string()),
    ]
}

/// What separates segments: mostly `/`, sometimes a disguised or doubled one.
fn separator() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["/", "/", "/", "/", "/", "//", "\\", "%2f", "/;/", "/./"])
}

/// A raw path: segments of one to three pieces.
fn raw_path() -> impl Strategy<Value = String> {
    (
        prop::bool::weighted(0.95),
        prop::collection::vec((separator(), prop::collection::vec(piece(), 0..3)), 0..8),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(lead, segments, trailing)| {
            let mut raw = String::from(if lead { "/" } else { "" });
            for (i, (sep, pieces)) in segments.iter().enumerate() {
                if i > 0 {
                    raw.push_str(sep);
                }
                raw.push_str(&pieces.concat());
            }
            if trailing {
                raw.push('/');
            }
            raw
        })
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(4096)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn a_forwarded_path_resolves_under_the_route_that_was_checked(raw in raw_path()) {
        let table = table();
        let Ok(path) = CanonicalPath::parse(&raw) else { return Ok(()) };
        let Some(found) = table.find(&path) else { return Ok(()) };
        let route = found.route();
        if route.check_empty_segments(&path).is_err() {
            return Ok(());
        }
        let reference = reference_resolution(path.as_str());
        prop_assert!(
            under(&reference, &route.prefix),
            "{raw:?} -> {:?} resolves to {:?}, outside {}", path.as_str(), String::from_utf8_lossy(&reference), route.prefix
        );
        for stricter in table.prefixes().filter(|p| p.len() > route.prefix.len()) {
            prop_assert!(
                !under(&reference, stricter),
                "{raw:?} -> {:?} resolves to {:?}, under the stricter {stricter} but matched {}",
                path.as_str(), String::from_utf8_lossy(&reference), route.prefix
            );
        }
    }

    #[test]
    fn canonicalising_twice_changes_nothing(raw in raw_path()) {
        if let Ok(p) = CanonicalPath::parse(&raw) {
            let again = CanonicalPath::parse(p.as_str()).expect("a canonical path is accepted");
            prop_assert_eq!(again.as_str(), p.as_str());
        }
    }
}

/// RFC 3986 Appendix B, by hand (an independent parser): scheme, authority, path, query and
/// fragment of a URI reference.
fn rfc3986_parts(uri: &str) -> (Option<&str>, Option<&str>, &str) {
    let mut rest = uri;
    let scheme = match rest.find([':', '/', '?', '#']) {
        Some(i) if i > 0 && rest.as_bytes()[i] == b':' => {
            let s = &rest[..i];
            rest = &rest[i + 1..];
            Some(s)
        }
        _ => None,
    };
    let authority = match rest.strip_prefix("//") {
        Some(after) => {
            let end = after.find(['/', '?', '#']).unwrap_or(after.len());
            rest = &after[end..];
            Some(&after[..end])
        }
        None => None,
    };
    let path_end = rest.find(['?', '#']).unwrap_or(rest.len());
    (scheme, authority, &rest[..path_end])
}

/// Text for the parts of a URL: characters that end or disguise an authority, and plain ones.
fn url_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::sample::select(vec![
                "app.example", "app.example.com", ":443", ":", "?", "#", "/", "@", "[", "]", "::1", "%2f", "%3f",
                "admin", "secret", "public", "x", ".", "..", " ", "\\", "%", "80", "99999", "a_b", "-",
            ]).prop_map(str::to_string),
            1 => any::<char>().prop_map(|c| c.to_string()),
        ],
        0..6,
    )
    .prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// For arbitrary authority, path, query and fragment text, the path forward-auth checks is
    /// the path RFC 3986 reads (empty meaning `/`), or the URL is refused.
    #[test]
    fn the_original_url_path_is_what_rfc_3986_reads_or_the_request_is_refused(
        authority in url_text(), path in url_text(), query in prop::option::of(url_text()),
        fragment in prop::option::of(url_text()),
    ) {
        let mut url = format!("https://{authority}{path}");
        if let Some(q) = &query { url.push('?'); url.push_str(q); }
        if let Some(f) = &fragment { url.push('#'); url.push_str(f); }
        if let Ok(checked) = entra_gateway::path::original_uri_path(&url) {
            let (scheme, auth, reference) = rfc3986_parts(&url);
            prop_assert_eq!(scheme, Some("https"));
            let auth = auth.unwrap_or_default();
            prop_assert!(entra_gateway::path::is_host_port(auth), "{url:?}: accepted authority {auth:?}");
            let want = if reference.is_empty() { "/" } else { reference };
            prop_assert_eq!(checked, want, "{:?}", url);
            prop_assert!(!reference.is_empty() || url.len() == "https://".len() + auth.len(),
                "{url:?}: an empty path followed by a query or fragment was accepted");
        }
    }

    /// ingress-nginx builds `$scheme://$http_host$request_uri` from the client's own `Host`:
    /// whatever that header holds (nginx itself refuses a `/` or NUL in it with 400), the path
    /// checked is the path of the request nginx serves, or the request is refused.
    #[test]
    fn a_crafted_host_never_changes_the_path_forward_auth_checks(host in url_text(), tail in url_text()) {
        prop_assume!(!host.contains('/') && !host.contains('\0'));
        let request_uri = format!("/admin/{tail}");
        let url = format!("https://{host}{request_uri}");
        if let Ok(checked) = entra_gateway::path::original_uri_path(&url) {
            let served = request_uri.split(['?', '#']).next().unwrap_or_default();
            prop_assert_eq!(checked, served, "Host {:?}", host);
        }
    }
}
