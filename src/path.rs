//! Request-path canonicalisation: the one path every decision is made on and the upstream sees.
//!
//! Owns: turning the raw path of a request (or of forward-auth's original URI) into its
//! canonical form, or refusing it. The canonical path is computed once per request and used to
//! choose the gateway endpoint, to choose the proxy route, as the path forwarded upstream, and
//! as the path forward-auth checks, so that what the gateway allows is exactly what the
//! upstream serves. Must not: look at routes, headers or tokens.
//!
//! The rules (README "Security model" lists them with an example each):
//! - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded (`/%61dmin` is
//!   `/admin`); other escapes are kept, with upper-case hex digits;
//! - refused: an encoded `/` (`%2F`) or `\` (`%5C`), a raw `\`, a `;` (raw or `%3B`: Tomcat,
//!   Jetty and Spring strip `;` parameters, so `/admin;x/` would be served as `/admin/`), an
//!   encoded control character (NUL, CR, LF, ...), a `%` that is not followed by two hex digits,
//!   an escape that decodes to another escape (`%252e`), escapes that decode to invalid UTF-8,
//!   and any segment made only of dots and spaces in any spelling (`.`, `..`, `%2e%2E`, `.. `);
//! - empty segments (`//`) are noted: the route is chosen as if they were one `/`, and the
//!   request is refused unless that route sets `allow_empty_segments`;
//! - other characters outside RFC 3986 `pchar` (`|`, `{`, `^`, non-ASCII, ...) are
//!   percent-encoded as UTF-8, which is what a browser sends for them anyway.
//!
//! Case is kept as sent (the upstream sees `/ADMIN/` as `/ADMIN/`); routes compare it folded
//! unless they set `case_sensitive` (`proxy::routes`).

use std::borrow::Cow;

/// Why a path was refused. Each is a 400 `invalid_request`; the upstream sees nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path must start with `/`")]
    NotAbsolute,
    #[error("the path contains an encoded `/` (%2F)")]
    EncodedSlash,
    #[error("the path contains a backslash (raw or %5C)")]
    Backslash,
    #[error("the path contains `;` (path parameters are not accepted)")]
    Semicolon,
    #[error("the path contains a control character, a space or NUL")]
    ControlCharacter,
    #[error("the path contains a `%` that is not followed by two hex digits")]
    BadEscape,
    #[error("the path is percent-encoded twice (e.g. %252e)")]
    DoubleEncoded,
    #[error("the path's percent-encoded bytes are not UTF-8")]
    InvalidUtf8,
    #[error("the path contains a `.` or `..` segment (in some spelling)")]
    DotSegment,
    #[error("the path contains an empty segment (`//`)")]
    EmptySegment,
    #[error("the original URI must be a path (`/...`) or an absolute URL (`https://host/...`)")]
    NotOriginOrAbsolute,
    #[error("the original URL's authority is not a plain host[:port] (it comes from the client's Host header)")]
    BadAuthority,
    #[error(
        "the original URL has a `?` or `#` right after its host: the client's Host header ended it early, \
         so its path cannot be known"
    )]
    NoPathAfterHost,
}

/// A canonical request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalPath {
    path: String,
    has_empty_segments: bool,
}

impl CanonicalPath {
    /// Canonicalises a raw request path (no query).
    pub fn parse(raw: &str) -> Result<CanonicalPath, PathError> {
        if !raw.starts_with('/') {
            return Err(PathError::NotAbsolute);
        }
        let mut c = Canonicaliser { out: String::with_capacity(raw.len() + 8), ..Canonicaliser::default() };
        let bytes = raw.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            i += c.step(bytes, i)?;
        }
        c.end_segment()?;
        if c.escaped_high_bytes {
            check_utf8(&c.out)?;
        }
        Ok(CanonicalPath { path: c.out, has_empty_segments: c.empty_segments })
    }

    /// The canonical path: what is forwarded.
    pub fn as_str(&self) -> &str {
        &self.path
    }

    /// Whether the path has an empty segment (`//`), which only routes that allow it accept.
    pub fn has_empty_segments(&self) -> bool {
        self.has_empty_segments
    }

    /// The path routes are chosen on: runs of `/` merged into one, so that `//admin/` is
    /// matched (and refused) as `/admin/`, never as a catch-all route.
    pub fn for_matching(&self) -> Cow<'_, str> {
        if !self.has_empty_segments {
            return Cow::Borrowed(&self.path);
        }
        let mut merged = String::with_capacity(self.path.len());
        for ch in self.path.chars() {
            if ch != '/' || !merged.ends_with('/') {
                merged.push(ch);
            }
        }
        Cow::Owned(merged)
    }

    /// The rest of the path after the segments of `prefix` (a prefix [`Self::for_matching`]
    /// matched), without its leading `/`: `/api/x/y` after `/api/` is `x/y`.
    pub fn after_prefix(&self, prefix: &str) -> &str {
        let mut rest = self.path.as_str();
        for seg in prefix.split('/').filter(|s| !s.is_empty()) {
            rest = rest.trim_start_matches('/');
            rest = rest.strip_prefix(seg).unwrap_or(rest);
        }
        rest.strip_prefix('/').unwrap_or(rest)
    }
}

/// The path of forward-auth's original URI: origin-form (`/path?query`) or absolute-form
/// (`http[s]://host[:port]/path?query`, the scheme at position 0), without query and fragment.
///
/// Absolute-form is read as RFC 3986 says (the authority ends at the first `/`, `?` or `#`),
/// parsed by `http::Uri`, and then held to what an ingress that builds the URL as
/// `$scheme://$http_host$request_uri` can honestly produce: the authority must be a plain
/// `host[:port]` (no userinfo, a numeric port), and what follows it must be a path (`/...`) or
/// nothing (`/`). A `?` or `#` right after the authority means the client's own `Host` header
/// ended the authority early (`Host: app.example:443?` turns `/admin` into query text): refused,
/// never read as `/`.
pub fn original_uri_path(raw: &str) -> Result<&str, PathError> {
    let cut = |s: &str| s.split(['?', '#']).next().unwrap_or_default().len();
    if raw.starts_with('/') {
        return Ok(&raw[..cut(raw)]);
    }
    let (scheme, rest) = raw.split_once("://").ok_or(PathError::NotOriginOrAbsolute)?;
    if !scheme.eq_ignore_ascii_case("https") && !scheme.eq_ignore_ascii_case("http") {
        return Err(PathError::NotOriginOrAbsolute);
    }
    let uri: http::Uri = raw.parse().map_err(|_| PathError::NotOriginOrAbsolute)?;
    let authority = uri.authority().ok_or(PathError::NotOriginOrAbsolute)?.as_str();
    // The parser's authority must be exactly the text up to the first `/`, `?` or `#`.
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if authority != &rest[..end] {
        return Err(PathError::BadAuthority);
    }
    if !is_host_port(authority) {
        return Err(PathError::BadAuthority);
    }
    let after = &rest[end..];
    match after.as_bytes().first() {
        None => Ok("/"),
        Some(b'/') => Ok(&after[..cut(after)]),
        Some(_) => Err(PathError::NoPathAfterHost),
    }
}

/// `host[:port]`: a DNS name or IPv4 address (letters, digits, `-`, `.`, `_`), or an IPv6
/// literal in brackets; an optional port of 1 to 5 digits up to 65535. No userinfo.
pub fn is_host_port(authority: &str) -> bool {
    let (host_ok, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((addr, rest)) => (addr.parse::<std::net::Ipv6Addr>().is_ok(), port_part(rest)),
            None => return false,
        },
        None => {
            let (host, port) = match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            };
            let ok =
                !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
            (ok, Ok(port))
        }
    };
    let port_ok = match port {
        Ok(None) => true,
        Ok(Some(p)) => {
            p.len() <= 5
                && !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && p.parse::<u32>().is_ok_and(|n| n <= 65535)
        }
        Err(()) => false,
    };
    host_ok && port_ok
}

/// What follows an IPv6 literal's `]`: nothing, or `:port`.
fn port_part(rest: &str) -> Result<Option<&str>, ()> {
    match rest {
        "" => Ok(None),
        r => r.strip_prefix(':').map(Some).ok_or(()),
    }
}

#[derive(Default)]
struct Canonicaliser {
    out: String,
    /// Start (in `out`) of the current segment, after its `/`.
    seg_start: usize,
    /// The current segment, decoded, is only dots and spaces so far.
    seg_dots_only: bool,
    seg_has_dot: bool,
    empty_segments: bool,
    escaped_high_bytes: bool,
}

/// RFC 3986 unreserved characters.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 `pchar` minus `%` and `;` (sub-delims, `:` and `@`; unreserved is checked first).
fn is_plain_pchar(b: u8) -> bool {
    matches!(b, b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

impl Canonicaliser {
    /// Handles the byte at `i`; returns how many bytes it consumed.
    fn step(&mut self, bytes: &[u8], i: usize) -> Result<usize, PathError> {
        let b = bytes[i];
        match b {
            b'/' => {
                if i > 0 {
                    self.empty_segments |= self.out.len() == self.seg_start;
                    self.end_segment()?;
                }
                self.out.push('/');
                self.seg_start = self.out.len();
                self.seg_dots_only = true;
                self.seg_has_dot = false;
                Ok(1)
            }
            b'%' => self.escape(bytes, i),
            b'\\' => Err(PathError::Backslash),
            b';' => Err(PathError::Semicolon),
            0..=0x20 | 0x7f => Err(PathError::ControlCharacter),
            _ if is_unreserved(b) || is_plain_pchar(b) => {
                self.push_decoded(b)?;
                Ok(1)
            }
            0x80.. => {
                // A raw UTF-8 sequence (the caller's &str guarantees it is valid): encode it.
                let len = utf8_len(b);
                for &byte in &bytes[i..(i + len).min(bytes.len())] {
                    self.push_escape(byte);
                }
                self.seg_dots_only = false;
                Ok(len)
            }
            // ASCII outside pchar (`"`, `<`, `>`, `[`, `]`, `^`, `` ` ``, `{`, `|`, `}`).
            _ => {
                self.push_escape(b);
                self.seg_dots_only = false;
                Ok(1)
            }
        }
    }

    fn escape(&mut self, bytes: &[u8], i: usize) -> Result<usize, PathError> {
        let (Some(hi), Some(lo)) = (bytes.get(i + 1).and_then(|&b| hex(b)), bytes.get(i + 2).and_then(|&b| hex(b)))
        else {
            return Err(PathError::BadEscape);
        };
        let v = (hi << 4) | lo;
        match v {
            b'/' => return Err(PathError::EncodedSlash),
            b'\\' => return Err(PathError::Backslash),
            b';' => return Err(PathError::Semicolon),
            0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
            _ if is_unreserved(v) => self.push_decoded(v)?,
            b' ' => {
                // Kept encoded, but a segment of dots and spaces is still a dot segment on
                // servers that trim trailing spaces (Windows).
                self.push_escape(v);
            }
            _ => {
                self.push_escape(v);
                self.seg_dots_only = false;
                self.escaped_high_bytes |= v >= 0x80;
            }
        }
        Ok(3)
    }

    /// Pushes a literal character. Checked on the output, so that neither `%252e` nor
    /// `%25%32%65` (which decodes to `%2e`) gets through: the canonical form never holds an
    /// escaped `%` followed by two hex digits.
    fn push_decoded(&mut self, b: u8) -> Result<(), PathError> {
        self.out.push(b as char);
        if b == b'.' {
            self.seg_has_dot = true;
        } else {
            self.seg_dots_only = false;
        }
        let tail = self.out.as_bytes();
        let n = tail.len();
        if n >= 5 && tail[n - 5..n - 2] == *b"%25" && hex(tail[n - 2]).is_some() && hex(b).is_some() {
            return Err(PathError::DoubleEncoded);
        }
        Ok(())
    }

    fn push_escape(&mut self, b: u8) {
        self.out.push('%');
        self.out.push(HEX[usize::from(b >> 4)] as char);
        self.out.push(HEX[usize::from(b & 0xf)] as char);
    }

    /// Checks the segment that just ended.
    fn end_segment(&mut self) -> Result<(), PathError> {
        if self.out.len() == self.seg_start {
            // An empty segment: fine at the very end (`/api/`), noted elsewhere (`//`).
            return Ok(());
        }
        if self.seg_dots_only && self.seg_has_dot {
            return Err(PathError::DotSegment);
        }
        Ok(())
    }
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xf0.. => 4,
        0xe0.. => 3,
        0xc0.. => 2,
        _ => 1,
    }
}

/// The decoded bytes of escapes must be UTF-8 (an overlong `%C0%AE` is not a `.`).
fn check_utf8(path: &str) -> Result<(), PathError> {
    let decoded: Vec<u8> = percent_encoding::percent_decode_str(path).collect();
    std::str::from_utf8(&decoded).map(|_| ()).map_err(|_| PathError::InvalidUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> String {
        CanonicalPath::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}")).path
    }

    fn err(raw: &str) -> PathError {
        CanonicalPath::parse(raw).expect_err(raw)
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_other_escapes_kept_upper_case() {
        assert_eq!(ok("/%61dmin/settings"), "/admin/settings");
        assert_eq!(ok("/a%7eb%2Dc%5f"), "/a~b-c_");
        assert_eq!(ok("/files/a%20b%c3%a9"), "/files/a%20b%C3%A9");
        assert_eq!(ok("/q%3fx%23y"), "/q%3Fx%23y");
        assert_eq!(ok("/api/"), "/api/");
        assert_eq!(ok("/"), "/");
    }

    #[test]
    fn characters_outside_pchar_are_percent_encoded() {
        assert_eq!(ok("/a|b{c}^[d]`\"<>"), "/a%7Cb%7Bc%7D%5E%5Bd%5D%60%22%3C%3E");
        assert_eq!(ok("/caf\u{e9}"), "/caf%C3%A9");
        assert_eq!(ok("/sub-delims!$&'()*+,=:@"), "/sub-delims!$&'()*+,=:@");
    }

    #[test]
    fn dot_segments_are_refused_in_every_spelling() {
        for p in [
            "/api/../admin",
            "/api/./x",
            "/api/..",
            "/api/.",
            "/..",
            "/api/%2e%2e/admin",
            "/api/%2E%2e/admin",
            "/api/.%2e/admin",
            "/api/.../x",
            "/api/..%20/x",
            "/api/%20../x",
        ] {
            assert_eq!(err(p), PathError::DotSegment, "{p}");
        }
        for p in ["/api/a..b/c.d", "/.well-known/jwks.json", "/api/.hidden", "/api/x."] {
            ok(p);
        }
    }

    #[test]
    fn slashes_backslashes_semicolons_and_controls_in_disguise_are_refused() {
        assert_eq!(err("/api/..%2fadmin"), PathError::EncodedSlash);
        assert_eq!(err("/api/a%2Fb"), PathError::EncodedSlash);
        assert_eq!(err("/api/a%5cb"), PathError::Backslash);
        assert_eq!(err("/api/..\\admin"), PathError::Backslash);
        assert_eq!(err("/public/..;/admin/settings"), PathError::Semicolon);
        assert_eq!(err("/admin;x/settings"), PathError::Semicolon);
        assert_eq!(err("/admin%3bx/settings"), PathError::Semicolon);
        assert_eq!(err("/a%00b"), PathError::ControlCharacter);
        assert_eq!(err("/a%0d%0aSet-Cookie:x"), PathError::ControlCharacter);
        assert_eq!(err("/a b"), PathError::ControlCharacter);
        assert_eq!(err("/a%7f"), PathError::ControlCharacter);
    }

    #[test]
    fn double_encoding_and_broken_escapes_are_refused() {
        assert_eq!(err("/api/%252e%252e/admin"), PathError::DoubleEncoded);
        assert_eq!(err("/api/%252F"), PathError::DoubleEncoded);
        assert_eq!(err("/api/%25%32%65"), PathError::DoubleEncoded, "decodes to %2e");
        assert_eq!(err("/%25%61dmin"), PathError::DoubleEncoded, "would become %25ad");
        assert_eq!(ok("/api/100%25"), "/api/100%25");
        assert_eq!(ok("/api/100%25x"), "/api/100%25x");
        assert_eq!(err("/api/%2"), PathError::BadEscape);
        assert_eq!(err("/api/%zz"), PathError::BadEscape);
        assert_eq!(err("/api/%u002e%u002e"), PathError::BadEscape);
        assert_eq!(err("/api/%c0%ae%c0%ae/x"), PathError::InvalidUtf8);
        assert_eq!(err("/api/%ff"), PathError::InvalidUtf8);
    }

    #[test]
    fn empty_segments_are_noted_and_merged_for_matching() {
        let p = CanonicalPath::parse("//admin//settings/").unwrap();
        assert!(p.has_empty_segments());
        assert_eq!(p.as_str(), "//admin//settings/");
        assert_eq!(p.for_matching(), "/admin/settings/");
        let p = CanonicalPath::parse("/api/x/").unwrap();
        assert!(!p.has_empty_segments());
        assert_eq!(err("x"), PathError::NotAbsolute);
        assert_eq!(err(""), PathError::NotAbsolute);
        assert_eq!(err("*"), PathError::NotAbsolute);
    }

    #[test]
    fn the_rest_after_a_prefix_keeps_empty_segments() {
        let p = CanonicalPath::parse("/api/x/y").unwrap();
        assert_eq!(p.after_prefix("/api/"), "x/y");
        assert_eq!(p.after_prefix("/api"), "x/y");
        let p = CanonicalPath::parse("/api//x").unwrap();
        assert_eq!(p.after_prefix("/api/"), "/x");
        let p = CanonicalPath::parse("/docs").unwrap();
        assert_eq!(p.after_prefix("/docs"), "");
    }

    #[test]
    fn original_uris_are_origin_or_absolute_form_only() {
        assert_eq!(original_uri_path("/admin/x?next=https://e.example/public/"), Ok("/admin/x"));
        assert_eq!(original_uri_path("https://app.example/api/a?b#c"), Ok("/api/a"));
        assert_eq!(original_uri_path("https://app.example"), Ok("/"));
        assert_eq!(original_uri_path("https://[::1]:8443/a"), Ok("/a"));
        assert_eq!(original_uri_path("HTTP://app.example:80/a"), Ok("/a"));
        assert_eq!(original_uri_path("/p#frag"), Ok("/p"));
        for bad in ["admin/x", "x/https://a.example/public/", "https:///x", "1http://a/b", "", "?/public/", "ftp://a/b"]
        {
            assert_eq!(original_uri_path(bad), Err(PathError::NotOriginOrAbsolute), "{bad}");
        }
    }

    #[test]
    fn a_host_header_that_ends_the_authority_early_is_refused_never_read_as_the_root() {
        // ingress-nginx: `$scheme://$http_host$request_uri` with a crafted Host.
        for bad in
            ["https://app.example.com:443?/admin/secret", "https://app.example.com#/admin", "https://a.example?x=/p/"]
        {
            assert_eq!(original_uri_path(bad), Err(PathError::NoPathAfterHost), "{bad}");
        }
        for bad in [
            "https://victim@app.example/admin",
            "https://app.example:x/admin",
            "https://app.example:99999/admin",
            "https://app.example:/admin",
            "https://[nope]/admin",
        ] {
            assert_eq!(original_uri_path(bad), Err(PathError::BadAuthority), "{bad}");
        }
        for bad in ["https://[::1/admin", "https://a%2fb/admin", "https://a b/admin"] {
            assert!(original_uri_path(bad).is_err(), "{bad}");
        }
    }
}
