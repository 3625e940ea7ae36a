//! Microsoft Graph client (and the Entra token endpoint it needs).
//!
//! Owns: app-only (client credentials) and On-Behalf-Of tokens, each requested from the user's
//! own tenant (`{authority_host}/{tid}/oauth2/v2.0/token`: a guest tenant's directory answers
//! only its own tokens) and app tokens cached per tenant; `checkMemberGroups` (20 ids per
//! call), `transitiveMemberOf` with `@odata.nextLink` paging, the profile and photo reads, the
//! bounded retry on 429/503 honouring `Retry-After` (seconds, rounded up, or an HTTP-date), and
//! the `graph_requests_total` counts. Every URL is built from `graph_url` / `authority_host`;
//! a `nextLink` outside `graph_url` is refused. Must not: cache decisions (the exchange does), decide authorization, turn any
//! failure (one page of a paged answer included) into "no groups", or log tokens and secrets.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::StatusCode;
use serde::Deserialize;

use crate::clock::unix_now;
use crate::config::{ClientCredential, EntraSettings, GroupLookup};
use crate::directory::Profile;
use crate::metrics::{Metrics, status_label};
use crate::outbound::error_chain;

/// `checkMemberGroups` accepts at most 20 ids per call.
const CHECK_MEMBER_GROUPS_BATCH: usize = 20;
/// A user in more groups than this many pages is refused rather than half-read.
const MAX_PAGES: usize = 100;
/// Refresh the app token this long before it expires.
const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(300);

const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Graph or the token endpoint could not give an answer. The exchange fails closed (503).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct GraphError {
    /// Why, for logs: never contains a token or secret.
    pub reason: String,
    /// `Retry-After` to pass on to the client, when Graph gave one.
    pub retry_after: Option<Duration>,
    /// Graph answered 404 for the user: it no longer exists in the directory (a definite "no",
    /// not an outage).
    pub user_missing: bool,
}

impl GraphError {
    fn new(reason: impl Into<String>) -> GraphError {
        GraphError { reason: reason.into(), retry_after: None, user_missing: false }
    }
}

const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Lifetime of a certificate client assertion.
const ASSERTION_TTL_SECS: u64 = 600;

/// The form fields that authenticate the client at `token_url`.
fn form_fields(
    credential: &ClientCredential,
    token_url: &str,
    client_id: &str,
) -> Result<Vec<(&'static str, String)>, GraphError> {
    match credential {
        ClientCredential::Secret(s) => Ok(vec![("client_secret", s.expose().to_string())]),
        ClientCredential::FederatedTokenFile(path) => {
            let token = std::fs::read_to_string(path)
                .map_err(|e| GraphError::new(format!("federated token file {}: {e}", path.display())))?;
            Ok(vec![
                ("client_assertion_type", JWT_BEARER_ASSERTION.into()),
                ("client_assertion", token.trim().to_string()),
            ])
        }
        ClientCredential::Certificate { key, x5t_s256 } => {
            let now = unix_now();
            let claims = serde_json::json!({
                "aud": token_url, "iss": client_id, "sub": client_id,
                "jti": uuid::Uuid::new_v4().to_string(), "nbf": now, "iat": now, "exp": now + ASSERTION_TTL_SECS,
            });
            let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
            header.x5t_s256 = Some(x5t_s256.clone());
            let assertion = jsonwebtoken::encode(&header, &claims, key)
                .map_err(|e| GraphError::new(format!("signing the client assertion: {e}")))?;
            Ok(vec![("client_assertion_type", JWT_BEARER_ASSERTION.into()), ("client_assertion", assertion)])
        }
    }
}

/// A user's photo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Photo {
    pub content_type: String,
    pub bytes: bytes::Bytes,
}

/// Which identity calls Graph.
#[derive(Debug, Clone, Copy)]
pub enum GraphAuth<'a> {
    /// The gateway's own app (client credentials); paths under `/users/{oid}`.
    App,
    /// On behalf of the signed-in user, whose Entra token is the assertion; paths under `/me`.
    Obo { user_token: &'a str },
}

#[derive(Clone)]
struct CachedToken {
    token: String,
    expires_at: Instant,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize, Default)]
struct TokenErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_codes: Vec<u64>,
}

#[derive(Deserialize)]
struct IdList {
    value: Vec<String>,
}

#[derive(Deserialize)]
struct DirectoryObject {
    id: String,
}

#[derive(Deserialize)]
struct ObjectPage {
    value: Vec<DirectoryObject>,
    #[serde(rename = "@odata.nextLink")]
    next_link: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GraphUser {
    #[serde(default)]
    mail: Option<String>,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    user_principal_name: Option<String>,
    #[serde(default)]
    given_name: Option<String>,
    #[serde(default)]
    surname: Option<String>,
    #[serde(default)]
    job_title: Option<String>,
    #[serde(default)]
    department: Option<String>,
}

/// The Graph client shared by all requests.
pub struct GraphClient {
    http: reqwest::Client,
    authority: String,
    graph_base: String,
    scope: String,
    client_id: String,
    credential: ClientCredential,
    lookup: GroupLookup,
    max_retries: u32,
    max_wait: Duration,
    metrics: Metrics,
    // std Mutex: a clone in and out, never held across an await. Keyed by tenant id.
    app_tokens: Mutex<HashMap<String, CachedToken>>,
}

impl GraphClient {
    pub fn new(
        cfg: &EntraSettings,
        credential: ClientCredential,
        http: reqwest::Client,
        metrics: Metrics,
    ) -> GraphClient {
        let graph_base = cfg.graph_url.clone();
        GraphClient {
            http,
            authority: cfg.authority.clone(),
            scope: format!("{}/.default", origin(&graph_base)),
            graph_base,
            client_id: cfg.client_id.clone(),
            credential,
            lookup: cfg.group_lookup,
            max_retries: cfg.graph_max_retries,
            max_wait: cfg.graph_max_retry_wait,
            metrics,
            app_tokens: Mutex::default(),
        }
    }

    /// The token endpoint of tenant `tid`.
    fn token_url(&self, tid: &str) -> String {
        format!("{}/{}/oauth2/v2.0/token", self.authority, seg(tid))
    }

    /// A session for a user of tenant `tid` that acquires its token (from that tenant) on first
    /// use and reuses it for every call.
    pub fn session<'a>(&'a self, auth: GraphAuth<'a>, tid: &'a str) -> GraphSession<'a> {
        GraphSession { client: self, auth, tid, token: tokio::sync::OnceCell::new() }
    }

    /// The photo of user `oid` of tenant `tid` (app token), `None` when the user has none.
    pub async fn photo(&self, tid: &str, oid: &str) -> Result<Option<Photo>, GraphError> {
        let token = self.app_token(tid).await?;
        let url = format!("{}/users/{}/photo/$value", self.graph_base, seg(oid));
        let resp = self.send("photo", || self.http.get(&url).bearer_auth(&token)).await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => {
                let content_type = resp
                    .headers()
                    .get(reqwest::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("application/octet-stream")
                    .to_string();
                let bytes = resp.bytes().await.map_err(|e| GraphError::new(format!("photo body: {e}")))?;
                Ok(Some(Photo { content_type, bytes }))
            }
            s => Err(GraphError::new(format!("photo: HTTP {s}"))),
        }
    }

    /// The gateway's own token at tenant `tid` (cached per tenant until shortly before expiry).
    async fn app_token(&self, tid: &str) -> Result<String, GraphError> {
        if let Ok(tokens) = self.app_tokens.lock()
            && let Some(t) = tokens.get(tid)
            && t.expires_at > Instant::now()
        {
            return Ok(t.token.clone());
        }
        let form = [("grant_type", "client_credentials"), ("scope", self.scope.as_str())];
        let cached = self.request_token(tid, "token_app", &form).await?;
        if let Ok(mut tokens) = self.app_tokens.lock() {
            tokens.insert(tid.to_string(), cached.clone());
        }
        Ok(cached.token)
    }

    async fn obo_token(&self, tid: &str, user_token: &str) -> Result<String, GraphError> {
        let form = [
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", user_token),
            ("scope", self.scope.as_str()),
            ("requested_token_use", "on_behalf_of"),
        ];
        Ok(self.request_token(tid, "token_obo", &form).await?.token)
    }

    async fn request_token(
        &self,
        tid: &str,
        endpoint: &'static str,
        form: &[(&str, &str)],
    ) -> Result<CachedToken, GraphError> {
        let token_url = self.token_url(tid);
        let auth = form_fields(&self.credential, &token_url, &self.client_id)?;
        let mut fields: Vec<(&str, &str)> = vec![("client_id", self.client_id.as_str())];
        fields.extend(form.iter().copied());
        fields.extend(auth.iter().map(|(k, v)| (*k, v.as_str())));
        let resp = self.send(endpoint, || self.http.post(&token_url).form(&fields)).await?;
        let status = resp.status();
        if !status.is_success() {
            let body: TokenErrorBody = resp.json().await.unwrap_or_default();
            return Err(GraphError::new(format!(
                "token endpoint of tenant {tid} refused the gateway's request: HTTP {status} {} (AADSTS codes {:?})",
                body.error, body.error_codes
            )));
        }
        let body: TokenResponse =
            resp.json().await.map_err(|e| GraphError::new(format!("token endpoint answer: {e}")))?;
        let life = Duration::from_secs(body.expires_in.unwrap_or(3600));
        let expires_at = Instant::now() + life.saturating_sub(TOKEN_REFRESH_MARGIN).max(Duration::from_secs(30));
        Ok(CachedToken { token: body.access_token, expires_at })
    }

    /// Sends a request, waiting out 429/503/504 `Retry-After` up to the configured bounds.
    async fn send<F>(&self, endpoint: &'static str, build: F) -> Result<reqwest::Response, GraphError>
    where
        F: Fn() -> reqwest::RequestBuilder,
    {
        let span = crate::telemetry::Span::child(span_name(endpoint), opentelemetry::trace::SpanKind::Client);
        let mut attempt = 0;
        loop {
            let result = build().send().await;
            let status = result.as_ref().ok().map(|r| r.status().as_u16());
            self.metrics.graph_requests_total.with_label_values(&[endpoint, status_label(status)]).inc();
            if let Some(span) = &span {
                span.set(opentelemetry::KeyValue::new("http.response.status_code", i64::from(status.unwrap_or(0))));
                span.set(opentelemetry::KeyValue::new("http.request.resend_count", i64::from(attempt)));
            }
            let resp = result.map_err(|e| GraphError::new(format!("{endpoint}: {}", error_chain(&e))))?;
            if !matches!(resp.status().as_u16(), 429 | 503 | 504) {
                return Ok(resp);
            }
            let wait = retry_after(resp.headers(), std::time::SystemTime::now()).unwrap_or(Duration::from_secs(1));
            if attempt >= self.max_retries || wait > self.max_wait {
                return Err(GraphError {
                    reason: format!("{endpoint}: HTTP {} after {} attempt(s)", resp.status(), attempt + 1),
                    retry_after: Some(wait.max(Duration::from_secs(1))),
                    user_missing: false,
                });
            }
            tracing::debug!(
                endpoint,
                status = resp.status().as_u16(),
                wait_ms = wait.as_millis() as u64,
                "Graph throttled; retrying"
            );
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }
}

/// The span of a Graph call: the operation, never the URL (it holds the user's object id).
fn span_name(endpoint: &'static str) -> &'static str {
    match endpoint {
        "checkMemberGroups" => "graph checkMemberGroups",
        "transitiveMemberOf" => "graph transitiveMemberOf",
        "profile" => "graph profile",
        "photo" => "graph photo",
        "token_app" | "token_obo" => "entra token",
        _ => "graph",
    }
}

/// Why a delta page could not be read; the directory sync decides what each means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeltaError {
    /// 410 Gone, or `syncStateNotFound` / `resyncRequired`: the delta link is no good, start a
    /// full round again.
    Resync(String),
    /// 429, with its `Retry-After` when Graph gave one.
    Throttled(Option<Duration>),
    /// Anything else (5xx, network, a refused token, a link outside `graph_url`).
    Failed(String),
}

/// One page of a delta query.
#[derive(Debug, Clone, Deserialize)]
pub struct DeltaPage {
    #[serde(default)]
    pub value: Vec<serde_json::Value>,
    #[serde(rename = "@odata.nextLink", default)]
    pub next_link: Option<String>,
    #[serde(rename = "@odata.deltaLink", default)]
    pub delta_link: Option<String>,
}

#[derive(Deserialize, Default)]
struct GraphErrorBody {
    #[serde(default)]
    error: GraphErrorCode,
}

#[derive(Deserialize, Default)]
struct GraphErrorCode {
    #[serde(default)]
    code: String,
}

impl GraphClient {
    /// The Graph base URL (`graph_url`): every link followed must stay under it.
    pub fn base(&self) -> &str {
        &self.graph_base
    }

    /// One page of a delta query at `url` (under `graph_url`) with the gateway's app token of
    /// tenant `tid`; no retries (the sync backs off itself), counted under `endpoint`.
    pub async fn delta_page(&self, tid: &str, endpoint: &'static str, url: &str) -> Result<DeltaPage, DeltaError> {
        if !url.starts_with(&format!("{}/", self.graph_base)) {
            return Err(DeltaError::Failed(format!("{endpoint}: a link outside graph_url")));
        }
        let token = self.app_token(tid).await.map_err(|e| DeltaError::Failed(e.reason))?;
        let result = self.http.get(url).bearer_auth(&token).send().await;
        let status = result.as_ref().ok().map(|r| r.status().as_u16());
        self.metrics.graph_requests_total.with_label_values(&[endpoint, status_label(status)]).inc();
        let resp = result.map_err(|e| DeltaError::Failed(format!("{endpoint}: {}", error_chain(&e))))?;
        let status = resp.status();
        if status.is_success() {
            let page: DeltaPage = resp
                .json()
                .await
                .map_err(|e| DeltaError::Failed(format!("{endpoint}: unreadable page: {}", error_chain(&e))))?;
            for link in page.next_link.iter().chain(page.delta_link.iter()) {
                if !link.starts_with(&format!("{}/", self.graph_base)) {
                    return Err(DeltaError::Failed(format!("{endpoint}: a link outside graph_url")));
                }
            }
            return Ok(page);
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Err(DeltaError::Throttled(retry_after(resp.headers(), std::time::SystemTime::now())));
        }
        let gone = status == StatusCode::GONE;
        let code = if matches!(status.as_u16(), 400 | 410) {
            resp.json::<GraphErrorBody>().await.map(|b| b.error.code).unwrap_or_default()
        } else {
            String::new()
        };
        let resync = ["syncstatenotfound", "resyncrequired"].contains(&code.to_ascii_lowercase().as_str());
        if gone || resync {
            return Err(DeltaError::Resync(format!("{endpoint}: HTTP {status} {code}")));
        }
        let hint = match status.as_u16() {
            401 | 403 => " (grant the app registration User.Read.All and GroupMember.Read.All, with admin consent)",
            _ => "",
        };
        Err(DeltaError::Failed(format!("{endpoint}: HTTP {status}{hint}")))
    }
}

/// Graph calls for one exchange; the token is acquired once, on first use.
pub struct GraphSession<'a> {
    client: &'a GraphClient,
    auth: GraphAuth<'a>,
    /// The user's tenant: tokens come from its token endpoint.
    tid: &'a str,
    token: tokio::sync::OnceCell<String>,
}

impl GraphSession<'_> {
    async fn token(&self) -> Result<&str, GraphError> {
        self.token
            .get_or_try_init(|| async {
                match self.auth {
                    GraphAuth::App => self.client.app_token(self.tid).await,
                    GraphAuth::Obo { user_token } => self.client.obo_token(self.tid, user_token).await,
                }
            })
            .await
            .map(String::as_str)
    }

    fn user_path(&self, oid: &str) -> String {
        match self.auth {
            GraphAuth::App => format!("{}/users/{}", self.client.graph_base, seg(oid)),
            GraphAuth::Obo { .. } => format!("{}/me", self.client.graph_base),
        }
    }

    /// Which of `candidates` the user is a (transitive) member of.
    pub async fn member_groups(
        &self,
        oid: &str,
        candidates: &BTreeSet<String>,
    ) -> Result<BTreeSet<String>, GraphError> {
        if candidates.is_empty() {
            return Ok(BTreeSet::new());
        }
        match self.client.lookup {
            GroupLookup::CheckMemberGroups => self.check_member_groups(oid, candidates).await,
            GroupLookup::TransitiveMemberOf => {
                let all = self.transitive_member_of(oid).await?;
                Ok(all.into_iter().filter(|g| candidates.contains(g)).collect())
            }
        }
    }

    async fn check_member_groups(
        &self,
        oid: &str,
        candidates: &BTreeSet<String>,
    ) -> Result<BTreeSet<String>, GraphError> {
        let token = self.token().await?;
        let url = format!("{}/checkMemberGroups", self.user_path(oid));
        let ids: Vec<&String> = candidates.iter().collect();
        let mut found = BTreeSet::new();
        for batch in ids.chunks(CHECK_MEMBER_GROUPS_BATCH) {
            let body = serde_json::json!({ "groupIds": batch });
            let resp = self
                .client
                .send("checkMemberGroups", || self.client.http.post(&url).bearer_auth(token).json(&body))
                .await?;
            let list: IdList = ok_json(resp, "checkMemberGroups").await?;
            found.extend(list.value.into_iter().map(|g| g.to_ascii_lowercase()));
        }
        Ok(found)
    }

    async fn transitive_member_of(&self, oid: &str) -> Result<BTreeSet<String>, GraphError> {
        let token = self.token().await?;
        let mut url = format!("{}/transitiveMemberOf?$select=id&$top=999", self.user_path(oid));
        let mut ids = BTreeSet::new();
        for _ in 0..MAX_PAGES {
            let resp = self.client.send("transitiveMemberOf", || self.client.http.get(&url).bearer_auth(token)).await?;
            let page: ObjectPage = ok_json(resp, "transitiveMemberOf").await?;
            ids.extend(page.value.into_iter().map(|o| o.id.to_ascii_lowercase()));
            match page.next_link {
                None => return Ok(ids),
                Some(next) if next.starts_with(&format!("{}/", self.client.graph_base)) => url = next,
                Some(_) => {
                    return Err(GraphError::new("transitiveMemberOf: nextLink outside graph_url"));
                }
            }
        }
        Err(GraphError::new("transitiveMemberOf: too many pages"))
    }

    /// The user's profile.
    pub async fn profile(&self, oid: &str) -> Result<Profile, GraphError> {
        let token = self.token().await?;
        let url = format!(
            "{}?$select=id,mail,displayName,userPrincipalName,givenName,surname,jobTitle,department",
            self.user_path(oid)
        );
        let resp = self.client.send("profile", || self.client.http.get(&url).bearer_auth(token)).await?;
        let u: GraphUser = ok_json(resp, "profile").await?;
        Ok(Profile {
            mail: u.mail,
            display_name: u.display_name,
            user_principal_name: u.user_principal_name,
            given_name: u.given_name,
            surname: u.surname,
            job_title: u.job_title,
            department: u.department,
        })
    }
}

async fn ok_json<T: serde::de::DeserializeOwned>(resp: reqwest::Response, what: &str) -> Result<T, GraphError> {
    let status = resp.status();
    if status == StatusCode::NOT_FOUND {
        return Err(GraphError { user_missing: true, ..GraphError::new(format!("{what}: the user does not exist")) });
    }
    if !status.is_success() {
        return Err(GraphError::new(format!("{what}: HTTP {status}")));
    }
    resp.json().await.map_err(|e| GraphError::new(format!("{what}: unreadable answer: {}", error_chain(&e))))
}

/// `Retry-After` as delay-seconds (a fraction rounded up) or an HTTP-date (RFC 9110 10.2.3).
fn retry_after(headers: &reqwest::header::HeaderMap, now: std::time::SystemTime) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs(secs.ceil().min(86_400.0) as u64));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(now)
            .map(|d| Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0)))
            .unwrap_or_default(),
    )
}

fn seg(s: &str) -> String {
    utf8_percent_encode(s, PATH_SEGMENT).to_string()
}

/// `https://graph.microsoft.com/v1.0` -> `https://graph.microsoft.com`.
fn origin(base: &str) -> String {
    match url::Url::parse(base) {
        Ok(u) => u.origin().ascii_serialization(),
        Err(_) => base.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_is_the_graph_origin_default_scope() {
        assert_eq!(origin("https://graph.microsoft.com/v1.0"), "https://graph.microsoft.com");
        assert_eq!(origin("http://127.0.0.1:4000/graph/v1.0"), "http://127.0.0.1:4000");
    }

    #[test]
    fn retry_after_takes_seconds_rounded_up_and_http_dates() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let h = |v: &str| {
            let mut m = reqwest::header::HeaderMap::new();
            m.insert(reqwest::header::RETRY_AFTER, v.parse().unwrap());
            retry_after(&m, now)
        };
        assert_eq!(h("3"), Some(Duration::from_secs(3)));
        assert_eq!(h("1.2"), Some(Duration::from_secs(2)), "a fraction is rounded up");
        assert_eq!(h("0"), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(7));
        assert_eq!(h(&later), Some(Duration::from_secs(7)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(7));
        assert_eq!(h(&past), Some(Duration::ZERO));
        assert_eq!(h("soon"), None);
        assert_eq!(h("-1"), None);
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(seg("a/b?c"), "a%2Fb%3Fc");
        assert_eq!(seg("0000-aa"), "0000-aa");
    }
}
