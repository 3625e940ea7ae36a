//! What MSAL.js needs of an authority: `/authorize` (authorization code with PKCE; the demo
//! user signs in without a prompt, `login_hint` picks another), `/token` for the
//! `authorization_code` and `refresh_token` grants of a public client (ID token, access token
//! for the requested API scope, refresh token, `client_info`), `/logout`, and CORS on these (a
//! browser calls `/token` from the app's origin, as it does at Entra).

use base64::Engine;
use sha2::Digest;

use super::endpoints::{query, reply};
use super::*;

/// The user signed in when `/authorize` gets no `login_hint`.
pub const DEFAULT_LOGIN: &str = "alice";
const CODE_TTL: Duration = Duration::from_secs(300);
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// An authorization code waiting to be redeemed (once).
#[derive(Clone)]
pub(super) struct AuthCode {
    login: String,
    client_id: String,
    redirect_uri: String,
    challenge: String,
    scope: String,
    nonce: Option<String>,
    /// The `claims` request parameter (JSON): step-up contexts and client capabilities.
    claims: String,
    issued: std::time::Instant,
}

/// What a refresh token stands for.
#[derive(Clone)]
pub(super) struct Session {
    login: String,
    client_id: String,
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response<Body> {
    reply(status, json!({"error": error, "error_description": description}))
}

/// Redirect URIs a SPA may use with the mock: loopback over http, or any https.
fn redirect_allowed(uri: &str) -> bool {
    let Ok(u) = url::Url::parse(uri) else { return false };
    match u.scheme() {
        "https" => true,
        "http" => matches!(u.host_str(), Some("127.0.0.1" | "localhost" | "[::1]")),
        _ => false,
    }
}

/// What a `claims` request parameter asks for: authentication contexts
/// (`{"access_token":{"acrs":{"essential":true,"value":"c1"}}}`, or `values`) and client
/// capabilities (`{"access_token":{"xms_cc":{"values":["CP1"]}}}`, which MSAL adds for
/// `clientCapabilities`).
fn requested_claims(raw: &str) -> (Vec<String>, Vec<String>) {
    let Ok(v) = serde_json::from_str::<Value>(raw) else { return (Vec::new(), Vec::new()) };
    let list = |c: &Value| -> Vec<String> {
        let mut out: Vec<String> = c
            .get("values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect();
        out.extend(c.get("value").and_then(Value::as_str).map(str::to_string));
        out
    };
    let at = &v["access_token"];
    (list(&at["acrs"]), list(&at["xms_cc"]))
}

/// Permissive CORS, as Entra answers a SPA's token requests.
pub(super) fn with_cors(mut resp: Response<Body>, origin: Option<&header::HeaderValue>) -> Response<Body> {
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.cloned().unwrap_or(header::HeaderValue::from_static("*")));
    h.append(header::VARY, header::HeaderValue::from_static("origin"));
    resp
}

pub(super) fn preflight(req: &Request<Incoming>) -> Response<Body> {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, header::HeaderValue::from_static("GET, POST, OPTIONS"));
    if let Some(asked) = req.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    h.insert(header::ACCESS_CONTROL_MAX_AGE, header::HeaderValue::from_static("600"));
    with_cors(r, req.headers().get(header::ORIGIN))
}

impl MockState {
    /// The OIDC document of a tenant, as MSAL wants it (`authorityMetadata`).
    pub fn openid_document(&self, tenant: &str) -> Value {
        let base = self.base();
        json!({
            "issuer": format!("{base}/{tenant}/v2.0"),
            "authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/authorize"),
            "token_endpoint": format!("{base}/{tenant}/oauth2/v2.0/token"),
            "end_session_endpoint": format!("{base}/{tenant}/oauth2/v2.0/logout"),
            "jwks_uri": format!("{base}/{tenant}/discovery/v2.0/keys"),
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "code_challenge_methods_supported": ["S256"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "tenant_region_scope": "EU",
        })
    }

    /// `GET /{tenant}/oauth2/v2.0/authorize`: signs the hinted (or default) user in at once and
    /// redirects back with a code.
    pub(super) fn authorize(&self, tenant: &str, req: &Request<Incoming>) -> Response<Body> {
        self.count("authorize");
        let q = query(req);
        let get = |k: &str| q.get(k).cloned().unwrap_or_default();
        let redirect_uri = get("redirect_uri");
        if get("client_id") != self.settings.client_id || !redirect_allowed(&redirect_uri) {
            // Entra shows an error page rather than redirecting to an unknown URI.
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "AADSTS50011: unknown client or redirect URI",
            );
        }
        if !self.settings.knows_tenant(tenant) {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "AADSTS90002: Tenant not found.");
        }
        let hint = q.get("login_hint").map(|h| h.split('@').next().unwrap_or(h).to_string());
        let login = hint.unwrap_or_else(|| DEFAULT_LOGIN.to_string());
        let known = lock(&self.users).values().any(|u| u.login == login);
        let mut params = vec![("state".to_string(), get("state"))];
        let code_params = if get("response_type") != "code" {
            vec![("error".to_string(), "unsupported_response_type".to_string())]
        } else if get("code_challenge").is_empty() || get("code_challenge_method") != "S256" {
            vec![
                ("error".to_string(), "invalid_request".to_string()),
                ("error_description".to_string(), "AADSTS9002325: PKCE (S256) is required for SPAs".to_string()),
            ]
        } else if !known {
            vec![("error".to_string(), "access_denied".to_string())]
        } else {
            let code = format!("mock-code-{}", uuid::Uuid::new_v4());
            lock(&self.auth_codes).insert(
                code.clone(),
                AuthCode {
                    login: login.clone(),
                    client_id: get("client_id"),
                    redirect_uri: redirect_uri.clone(),
                    challenge: get("code_challenge"),
                    scope: get("scope"),
                    nonce: q.get("nonce").cloned(),
                    claims: get("claims"),
                    issued: std::time::Instant::now(),
                },
            );
            let utid = self.user_tenant(&login);
            let client_info = self.client_info(&login, &utid);
            vec![("code".to_string(), code), ("client_info".to_string(), client_info)]
        };
        params.extend(code_params);
        let encoded = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
        let sep = if get("response_mode") == "query" { '?' } else { '#' };
        let location = format!("{redirect_uri}{sep}{encoded}");
        let mut r = Response::new(full(Bytes::new()));
        *r.status_mut() = StatusCode::FOUND;
        if let Ok(v) = header::HeaderValue::from_str(&location) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        r.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
        r
    }

    /// `GET /{tenant}/oauth2/v2.0/logout`: back to `post_logout_redirect_uri` when it is one a
    /// SPA may use.
    pub(super) fn logout(&self, req: &Request<Incoming>) -> Response<Body> {
        self.count("logout");
        let q = query(req);
        match q.get("post_logout_redirect_uri").filter(|u| redirect_allowed(u)) {
            Some(uri) => {
                let mut r = Response::new(full(Bytes::new()));
                *r.status_mut() = StatusCode::FOUND;
                if let Ok(v) = header::HeaderValue::from_str(uri) {
                    r.headers_mut().insert(header::LOCATION, v);
                }
                r
            }
            None => {
                let mut r = Response::new(full(
                    "<!doctype html><title>Signed out</title><p>You are signed out of the mock Entra ID.</p>",
                ));
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/html; charset=utf-8"));
                r
            }
        }
    }

    /// The `authorization_code` and `refresh_token` grants of a public client (no secret).
    pub(super) fn user_token(&self, tenant: &str, form: &HashMap<String, String>) -> Response<Body> {
        let get = |k: &str| form.get(k).cloned().unwrap_or_default();
        if get("client_id") != self.settings.client_id {
            return oauth_error(StatusCode::BAD_REQUEST, "unauthorized_client", "AADSTS700016: unknown application");
        }
        let (login, scope, nonce, mut claims) = match get("grant_type").as_str() {
            "authorization_code" => {
                let Some(code) = lock(&self.auth_codes).remove(&get("code")) else {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "AADSTS70008: the code is unknown or was used",
                    );
                };
                let verifier_hash = B64.encode(sha2::Sha256::digest(get("code_verifier").as_bytes()));
                if code.issued.elapsed() > CODE_TTL
                    || code.client_id != get("client_id")
                    || code.redirect_uri != get("redirect_uri")
                    || verifier_hash != code.challenge
                {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "AADSTS501481: code verifier, redirect URI or client mismatch",
                    );
                }
                let scope = form.get("scope").cloned().unwrap_or(code.scope);
                (code.login, scope, code.nonce, code.claims)
            }
            "refresh_token" => {
                let Some(s) = lock(&self.refresh_tokens).get(&get("refresh_token")).cloned() else {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "AADSTS700082: the refresh token is unknown or revoked",
                    );
                };
                if s.client_id != get("client_id") {
                    return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "AADSTS700082: client mismatch");
                }
                (s.login, get("scope"), None, String::new())
            }
            _ => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "unsupported_grant_type",
                    "use authorization_code or refresh_token",
                );
            }
        };
        self.count(&format!("token_{}", get("grant_type")));
        if claims.is_empty() {
            claims = get("claims");
        }
        self.issue_user_tokens(tenant, &login, &scope, nonce, &claims)
    }

    /// Tokens for `login`: an API access token when `scope` names the gateway's API (else one
    /// for Graph, as Entra would), an ID token, a refresh token and `client_info`.
    fn issue_user_tokens(
        &self,
        tenant: &str,
        login: &str,
        scope: &str,
        nonce: Option<String>,
        claims: &str,
    ) -> Response<Body> {
        let s = &self.settings;
        let api = format!("api://{}/", s.client_id);
        let api_scopes: Vec<&str> = scope.split(' ').filter(|sc| sc.starts_with(&api)).collect();
        let (aud, granted) = if api_scopes.is_empty() {
            ("https://graph.microsoft.com".to_string(), "User.Read openid profile offline_access".to_string())
        } else {
            (format!("api://{}", s.client_id), format!("{} openid profile offline_access", api_scopes.join(" ")))
        };
        let scp = api_scopes.iter().map(|sc| sc.trim_start_matches(&api)).collect::<Vec<_>>().join(" ");
        let mut extra = serde_json::Map::new();
        extra.insert("scp".into(), json!(if scp.is_empty() { "User.Read".to_string() } else { scp }));
        let (acrs, capabilities) = requested_claims(claims);
        if !acrs.is_empty() {
            // As if the user satisfied the Conditional Access policy of those contexts (MFA).
            extra.insert("acrs".into(), json!(acrs));
        }
        if !capabilities.is_empty() {
            extra.insert("xms_cc".into(), json!(capabilities));
        }
        let access = self.mint(&TokenSpec {
            user: Some(login.into()),
            aud: Some(aud),
            extra: Some(extra),
            ..Default::default()
        });
        let utid = self.user_tenant(login);
        let user = lock(&self.users).values().find(|u| u.login == login).cloned().unwrap_or_default();
        let now = unix_now();
        let mut id = serde_json::Map::new();
        id.insert("aud".into(), json!(s.client_id));
        id.insert("iss".into(), json!(format!("{}/{utid}/v2.0", self.base())));
        id.insert("iat".into(), json!(now));
        id.insert("nbf".into(), json!(now));
        id.insert("exp".into(), json!(now + 3600));
        id.insert("sub".into(), json!(format!("sub-{}", user.oid)));
        id.insert("oid".into(), json!(user.oid));
        id.insert("tid".into(), json!(utid));
        id.insert("ver".into(), json!("2.0"));
        id.insert("name".into(), json!(user.display_name));
        id.insert("preferred_username".into(), json!(user.user_principal_name));
        if let Some(n) = nonce {
            id.insert("nonce".into(), json!(n));
        }
        let id_token = self.sign_claims(Value::Object(id));
        let refresh = format!("mock-refresh-{}", uuid::Uuid::new_v4());
        lock(&self.refresh_tokens)
            .insert(refresh.clone(), Session { login: login.to_string(), client_id: s.client_id.clone() });
        let _ = tenant;
        reply(
            StatusCode::OK,
            json!({
                "token_type": "Bearer",
                "scope": granted,
                "expires_in": 3599,
                "ext_expires_in": 3599,
                "access_token": access,
                "refresh_token": refresh,
                "id_token": id_token,
                "client_info": self.client_info(login, &utid),
            }),
        )
    }

    fn user_tenant(&self, login: &str) -> String {
        lock(&self.users)
            .values()
            .find(|u| u.login == login)
            .and_then(|u| u.tenant.clone())
            .unwrap_or_else(|| self.settings.tenant_id.clone())
    }

    /// `base64url({"uid": oid, "utid": tid})`: how MSAL identifies the account.
    fn client_info(&self, login: &str, utid: &str) -> String {
        let oid = lock(&self.users).values().find(|u| u.login == login).map(|u| u.oid.clone()).unwrap_or_default();
        B64.encode(json!({"uid": oid, "utid": utid}).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spa_redirect_uris_are_loopback_http_or_https() {
        for ok in ["http://127.0.0.1:5173/redirect.html", "http://localhost:3000", "https://app.example.com/"] {
            assert!(redirect_allowed(ok), "{ok}");
        }
        for bad in ["http://evil.test/", "javascript:alert(1)", "ftp://127.0.0.1/", "not a url"] {
            assert!(!redirect_allowed(bad), "{bad}");
        }
    }
}
