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
                path_prefix: p.to_string(),
                upstream: "http://127.0.0.1:1".into(),
                auth: RouteAuth::Required,
                timeout: std::time::Duration::from_secs(1),
                allowed_groups: None,
                strip_prefix: false,
                name: None,
                allow_empty_segments: *empty,
                allow_apps: false,
                cors: true,
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

fn under(path: &[u8], prefix: &str) -> bool {
    let p = prefix.as_bytes();
    path.starts_with(p) && (p.ends_with(b"/") || path.len() == p.len() || path[p.len()] == b'/')
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
        let Some(route) = table.find(&path) else { return Ok(()) };
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
