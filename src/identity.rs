//! Who the caller is, as upstreams see it: the identity headers.
//!
//! Owns: the identity header names (computed once from `proxy.identity_header_prefix`),
//! encoding values (non-ASCII and `%` percent-encoded as UTF-8), and removing every
//! client-sent header that could pass for one: any name with the prefix, in any case and with
//! `_` read as `-` (CGI, WSGI, PHP and Rack read `X_Auth_User_Id` as `HTTP_X_AUTH_USER_ID`, the
//! same variable as the real header), and the `_` twins of the forwarding headers the gateway
//! sets, and App Service's `X-MS-CLIENT-PRINCIPAL*` and `X-MS-TOKEN-*` whatever the profile;
//! rendering a caller's headers in the configured profile (`X-Auth-*`, Easy Auth in
//! [`easy_auth`], or both). Who the caller is, is `access`'s. Must not: decide whether a request
//! is allowed.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

use crate::header_names::{FirstBytes, eq_dashed, remove_matching, starts_with_dashed};

pub mod easy_auth;

/// Which identity headers upstreams get (`proxy.identity_headers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
pub enum HeaderProfile {
    /// `X-Auth-*` (the prefix's).
    #[default]
    #[serde(rename = "x-auth")]
    XAuth,
    /// App Service Authentication: `X-MS-CLIENT-PRINCIPAL*` only.
    #[serde(rename = "easy-auth")]
    EasyAuth,
    /// Both sets.
    #[serde(rename = "both")]
    Both,
}

/// Headers a client may never send in any spelling, whatever the profile: App Service's
/// principal and token headers.
const EASY_AUTH_PREFIXES: [&str; 2] = ["x-ms-client-principal", "x-ms-token-"];

/// A verified caller, as the header profiles need it.
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    pub is_app: bool,
    /// The gateway's stable internal id (an app's: of its tenant and client id).
    pub user_id: &'a str,
    pub oid: &'a str,
    pub tid: &'a str,
    pub email: Option<&'a str>,
    pub display_name: Option<&'a str>,
    pub username: Option<&'a str>,
    pub client_id: Option<&'a str>,
    pub groups: &'a [String],
    pub roles: &'a [String],
}

/// Controls, `%` (so that decoding is unambiguous) and every non-ASCII byte are encoded.
const VALUE_ENCODE: &AsciiSet = &CONTROLS.add(b'%');

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

/// The default identity prefix, always stripped (and refused by forward-auth) even when another
/// is configured: upstreams written for the default keep trusting `X-Auth-*`.
const DEFAULT_PREFIX: &str = "x-auth-";

/// Headers with an identity prefix that are not identity: ingress-nginx sets
/// `X-Auth-Request-Redirect` (`$request_uri`) on every forward-auth request it sends.
const NOT_IDENTITY: [&str; 1] = ["x-auth-request-redirect"];

/// The `X-Auth-` names, static: a request's copy of a static name is a pointer, not a count
/// on memory that every worker thread writes.
const DEFAULT_NAMES: [&str; 9] = [
    "x-auth-user-id",
    "x-auth-oid",
    "x-auth-tenant-id",
    "x-auth-email",
    "x-auth-name",
    "x-auth-groups",
    "x-auth-roles",
    "x-auth-principal-type",
    "x-auth-client-id",
];

/// The identity header names for a configured prefix.
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    /// The configured prefix and the default one (lowercase, with `-`), and App Service's.
    prefixes: Vec<String>,
    /// What the prefixes and the forwarding headers' `_` twins start with: a request's other
    /// names (`host`, `authorization`...) are passed on their first byte.
    first: FirstBytes,
    /// The names are the static [`DEFAULT_NAMES`] (else each rendering gets its own copies).
    static_names: bool,
    /// Which headers upstreams get.
    pub profile: HeaderProfile,
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
    /// The names for `prefix` (`X-Auth-` by default); an error when they are not header names.
    pub fn new(prefix: &str) -> Result<IdentityHeaders, http::header::InvalidHeaderName> {
        if prefix.len() < 2 {
            return Err(HeaderName::from_bytes(b"").unwrap_err());
        }
        let configured = prefix.to_ascii_lowercase().replace('_', "-");
        let static_names = prefix.to_ascii_lowercase() == DEFAULT_PREFIX;
        let name = |suffix: &str| {
            let known = DEFAULT_NAMES.iter().find(|n| n[DEFAULT_PREFIX.len()..].eq_ignore_ascii_case(suffix));
            match (static_names, known) {
                (true, Some(n)) => Ok(HeaderName::from_static(n)),
                _ => HeaderName::from_bytes(format!("{prefix}{suffix}").as_bytes()),
            }
        };
        let mut prefixes = vec![DEFAULT_PREFIX.to_string()];
        if !configured.starts_with(DEFAULT_PREFIX) {
            prefixes.push(configured);
        }
        prefixes.extend(EASY_AUTH_PREFIXES.map(String::from));
        let first = FirstBytes::of(prefixes.iter().map(String::as_str).chain(UNDERSCORE_TWINS));
        Ok(IdentityHeaders {
            prefixes,
            first,
            static_names,
            profile: HeaderProfile::default(),
            user_id: name("User-Id")?,
            oid: name("Oid")?,
            tenant_id: name("Tenant-Id")?,
            email: name("Email")?,
            name: name("Name")?,
            groups: name("Groups")?,
            roles: name("Roles")?,
            principal_type: name("Principal-Type")?,
            client_id: name("Client-Id")?,
        })
    }

    /// These names, sending the `profile`'s headers.
    pub fn with_profile(mut self, profile: HeaderProfile) -> IdentityHeaders {
        self.profile = profile;
        self
    }

    /// The headers of a verified caller in this profile, computed once per token. An app caller
    /// gets `X-Auth-Principal-Type: app`, its `Client-Id`, `Oid` (its service principal),
    /// `Tenant-Id`, `Roles` and empty `Groups`, and no `User-Id`, `Email` or `Name`: an upstream
    /// that needs a user finds none.
    pub fn render(&self, who: &Who<'_>) -> Vec<(HeaderName, HeaderValue)> {
        let mut v = match self.profile {
            HeaderProfile::EasyAuth => Vec::new(),
            HeaderProfile::XAuth | HeaderProfile::Both => self.x_auth(who),
        };
        if self.profile != HeaderProfile::XAuth {
            v.extend(easy_auth::headers(who));
        }
        v
    }

    /// A rendering's own copy of one of the names: a static name as is; a configured one copied
    /// (the config's copy would be a reference count that every worker thread writes per
    /// request; a principal's copy is written only by the worker that cached it).
    fn own(&self, name: &HeaderName) -> HeaderName {
        match self.static_names {
            true => name.clone(),
            false => HeaderName::from_bytes(name.as_str().as_bytes()).unwrap_or_else(|_| name.clone()),
        }
    }

    fn x_auth(&self, w: &Who<'_>) -> Vec<(HeaderName, HeaderValue)> {
        if w.is_app {
            return vec![
                (self.own(&self.principal_type), HeaderValue::from_static("app")),
                (self.own(&self.client_id), encode(w.client_id.unwrap_or_default())),
                (self.own(&self.oid), encode(w.oid)),
                (self.own(&self.tenant_id), encode(w.tid)),
                (self.own(&self.groups), HeaderValue::from_static("")),
                (self.own(&self.roles), encode(&w.roles.join(","))),
            ];
        }
        let mut v = vec![
            (self.own(&self.principal_type), HeaderValue::from_static("user")),
            (self.own(&self.user_id), encode(w.user_id)),
            (self.own(&self.oid), encode(w.oid)),
            (self.own(&self.tenant_id), encode(w.tid)),
            (self.own(&self.groups), encode(&w.groups.join(","))),
            (self.own(&self.roles), encode(&w.roles.join(","))),
        ];
        if let Some(e) = w.email {
            v.push((self.own(&self.email), encode(e)));
        }
        if let Some(n) = w.display_name {
            v.push((self.own(&self.name), encode(n)));
        }
        v
    }

    /// Whether a header name, with `_` read as `-` and case folded, could pass for an identity
    /// header: it starts with the configured prefix, the default `X-Auth-`, or is one of App
    /// Service's (`X-MS-CLIENT-PRINCIPAL*`, `X-MS-TOKEN-*`).
    pub fn is_identity(&self, name: &HeaderName) -> bool {
        let n = name.as_str();
        self.first.admits(n)
            && self.prefixes.iter().any(|p| starts_with_dashed(n, p))
            && !NOT_IDENTITY.iter().any(|x| eq_dashed(n, x))
    }

    /// The first header of a request that could pass for an identity header (forward-auth
    /// refuses such a request: the ingress would pass it on to the upstream).
    pub fn find_spoofed<'h>(&self, headers: &'h HeaderMap) -> Option<&'h HeaderName> {
        headers.keys().find(|n| self.is_identity(n))
    }

    /// Removes every header whose name, with `_` read as `-`, starts with an identity prefix,
    /// and the `_` twins of the forwarding headers (names are lowercase in `http`).
    pub fn strip(&self, headers: &mut HeaderMap) {
        let spoofed = |n: &HeaderName| {
            let s = n.as_str();
            self.first.admits(s)
                && (self.prefixes.iter().any(|p| starts_with_dashed(s, p))
                    || (s.contains('_') && UNDERSCORE_TWINS.iter().any(|t| eq_dashed(s, t))))
        };
        remove_matching(headers, spoofed);
    }
}

/// A header value: printable ASCII kept, everything else percent-encoded UTF-8.
pub fn encode(value: &str) -> HeaderValue {
    let encoded = utf8_percent_encode(value, VALUE_ENCODE).to_string();
    HeaderValue::from_str(&encoded).unwrap_or(HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    #[test]
    fn strips_identity_headers_whatever_their_case() {
        let ids = IdentityHeaders::new("X-Auth-").unwrap();
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
    fn non_ascii_values_are_percent_encoded_utf8() {
        assert_eq!(encode("Alice Jørgensen"), "Alice J%C3%B8rgensen");
        assert_eq!(encode("100%"), "100%25");
        assert_eq!(encode("a\r\nb"), "a%0D%0Ab");
        assert_eq!(encode("plain ascii, ok"), "plain ascii, ok");
    }

    #[test]
    fn underscore_spellings_of_identity_and_forwarding_headers_are_stripped() {
        let ids = IdentityHeaders::new("X-Auth-").unwrap();
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
        let ids = IdentityHeaders::new("X_Auth_").unwrap();
        let mut h = HeaderMap::new();
        h.insert(HeaderName::from_static("x-auth-user-id"), HeaderValue::from_static("evil"));
        ids.strip(&mut h);
        assert!(h.is_empty(), "a prefix written with _ strips the - spelling too");
    }

    #[test]
    fn app_service_headers_are_stripped_and_refused_in_any_spelling() {
        let ids = IdentityHeaders::new("X-Auth-").unwrap();
        let mut h = HeaderMap::new();
        for name in ["x-ms-client-principal", "X_MS_CLIENT_PRINCIPAL_ID", "x-ms-token-aad-access-token"] {
            h.insert(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_static("evil"));
        }
        assert!(ids.find_spoofed(&h).is_some());
        ids.strip(&mut h);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn a_custom_prefix_strips_the_default_x_auth_headers_too() {
        let ids = IdentityHeaders::new("X-Corp-Id-").unwrap();
        assert_eq!(ids.user_id, "x-corp-id-user-id");
        let mut h = HeaderMap::new();
        for name in ["x-auth-roles", "x_corp_id_user_id", "X-Corp-Id-Email"] {
            h.insert(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_static("evil"));
        }
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert!(ids.find_spoofed(&h).is_some());
        ids.strip(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(ids.find_spoofed(&h).is_none());
    }

    #[test]
    fn a_prefix_that_does_not_start_with_x_is_stripped_in_every_spelling_too() {
        // The first-byte filter must know the configured prefix's first byte, and `_` for `-`.
        for prefix in ["Corp-User-", "-Corp-"] {
            let ids = IdentityHeaders::new(prefix).unwrap();
            let dashed = prefix.to_ascii_lowercase();
            let mut h = HeaderMap::new();
            for name in [format!("{dashed}id"), format!("{}id", dashed.replace('-', "_")), "x-auth-oid".into()] {
                h.insert(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_static("evil"));
            }
            h.insert(header::HOST, HeaderValue::from_static("app.example"));
            assert!(ids.find_spoofed(&h).is_some(), "{prefix}");
            ids.strip(&mut h);
            assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["host"], "{prefix}");
        }
    }

    #[test]
    fn forward_auth_sees_identity_headers_in_any_spelling_but_not_ingress_nginx_s_redirect_header() {
        let ids = IdentityHeaders::new("X-Auth-").unwrap();
        for name in ["x_auth_user_id", "X-AUTH-EXTRA", "x-auth_groups"] {
            let mut h = HeaderMap::new();
            h.insert(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_static("v"));
            assert_eq!(ids.find_spoofed(&h).map(|n| n.as_str()), Some(name.to_ascii_lowercase().as_str()));
        }
        let mut h = HeaderMap::new();
        h.insert(HeaderName::from_static("x-auth-request-redirect"), HeaderValue::from_static("/x"));
        h.insert(HeaderName::from_static("x-authorization-hint"), HeaderValue::from_static("v"));
        assert!(ids.find_spoofed(&h).is_none());
    }
}
