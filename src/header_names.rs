//! Header names as CGI-style upstreams read them: lowercase (as `http` stores every name) and
//! with `_` read as `-` (PHP, WSGI and Rack turn `X_Original_URL` and `X-Original-URL` into one
//! variable, `HTTP_X_ORIGINAL_URL`).
//!
//! Owns: comparing a request's header name with a lowercase, dashed name or prefix,
//! [`FirstBytes`], which passes most of a request's names on their first byte before any
//! comparison (a request's `host`, `authorization`, `accept`... start with a byte none of the
//! gateway's lists does), and [`remove_matching`], removing the names a rule matches. Must not:
//! know which names matter (identity's prefixes and the configured strip list belong to
//! `identity` and `proxy`).

use http::header::{HeaderMap, HeaderName};

/// Whether `name`, with `_` read as `-`, starts with `prefix` (lowercase, with `-`).
pub fn starts_with_dashed(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len() && name.bytes().zip(prefix.bytes()).all(|(n, p)| n == p || (n == b'_' && p == b'-'))
}

/// Whether `name`, with `_` read as `-`, is `dashed` (lowercase, with `-`).
pub fn eq_dashed(name: &str, dashed: &str) -> bool {
    name.len() == dashed.len() && starts_with_dashed(name, dashed)
}

/// The bytes that names matching a set of lowercase, dashed names or prefixes can start with
/// (`-` also as `_`): a name whose first byte is not one of them matches none, and needs no
/// comparison. An empty entry admits every name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstBytes([u64; 4]);

impl FirstBytes {
    pub fn of<'a>(entries: impl IntoIterator<Item = &'a str>) -> FirstBytes {
        let mut set = FirstBytes([0; 4]);
        for entry in entries {
            match entry.as_bytes().first() {
                None => return FirstBytes([u64::MAX; 4]),
                Some(b'-') => {
                    set.add(b'-');
                    set.add(b'_');
                }
                Some(&b) => set.add(b),
            }
        }
        set
    }

    fn add(&mut self, b: u8) {
        self.0[usize::from(b >> 6)] |= 1 << (b & 63);
    }

    /// Whether `name` may match one of the entries (`false`: it matches none).
    pub fn admits(&self, name: &str) -> bool {
        match name.as_bytes().first() {
            Some(&b) => self.0[usize::from(b >> 6)] >> (b & 63) & 1 == 1,
            None => self.0 == [u64::MAX; 4],
        }
    }
}

/// Removes the headers whose name `matches`: one pass over the names, then one removal (one
/// hash of the name) per name present; no allocation when none is.
pub fn remove_matching(headers: &mut HeaderMap, matches: impl Fn(&HeaderName) -> bool) {
    let found: Vec<HeaderName> = headers.keys().filter(|n| matches(n)).cloned().collect();
    for name in &found {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn underscores_read_as_dashes_and_nothing_else_does() {
        assert!(starts_with_dashed("x_auth_user_id", "x-auth-"));
        assert!(starts_with_dashed("x-auth-", "x-auth-"));
        assert!(!starts_with_dashed("x-auth", "x-auth-"));
        assert!(!starts_with_dashed("x-authz-", "x-auth-"));
        assert!(!starts_with_dashed("x-auth_", "x-auth_x"), "a `_` in the pattern matches only itself");
        assert!(eq_dashed("x_original_url", "x-original-url"));
        assert!(!eq_dashed("x-original-url2", "x-original-url"));
    }

    #[test]
    fn the_first_byte_filter_never_passes_a_name_that_matches() {
        let entries = ["x-auth-", "true-client-ip", "-odd", "9x"];
        let first = FirstBytes::of(entries);
        // Every ASCII byte (header names are ASCII) as a name's first: admitted exactly when
        // some entry could match a name that starts with it.
        for b in 0..128u8 {
            let could_match = entries.iter().any(|e| {
                let p = e.as_bytes()[0];
                b == p || (p == b'-' && b == b'_')
            });
            let name = String::from_utf8(vec![b, b'a']).unwrap();
            assert_eq!(first.admits(&name), could_match, "byte {b}");
        }
        assert!(!first.admits("host") && !first.admits("authorization") && !first.admits(""));
        assert!(first.admits("x_auth_oid") && first.admits("_odd") && first.admits("true-client-ip"));
        let all = FirstBytes::of(["x-a", ""]);
        assert!(all.admits("host") && all.admits(""), "an empty entry admits every name");
        assert!(!FirstBytes::of([]).admits("x-auth-oid"), "no entries: nothing matches");
    }
}
