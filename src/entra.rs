//! Entra ID access-token validation.
//!
//! Owns: the rules an Entra access token must pass before the gateway trusts it: RS256 only,
//! a known `kid` of the token's tenant whose JWKS `issuer` (with `{tenantid}` replaced) is the
//! token's issuer or that tenant's v2 issuer (so a key of one tenant cannot sign for another),
//! `tid` among `entra.tenants`, `iss` exactly the one of the token's version for that `tid` (v1
//! `https://{sts host of the cloud}/{tid}/`, v2 `{authority_host}/{tid}/v2.0`), `aud` among
//! `entra.audiences`, `exp`/`nbf` with `clock_skew`; the token type as Microsoft.Identity.Web
//! decides it (a user's delegated access token has a non-empty `scp`; `roles` without `scp`,
//! `idtyp=app`, or `oid == sub` without `scp` is an app token; a `nonce`, or neither `scp` nor
//! `roles`, is not an access token), `entra.required_scopes`; and reading the identity (tid,
//! oid) and the `groups` claim (complete, overage or absent), or the calling app.
//! Must not: call Graph, decide authorization, or trust any URL found in a token. Microsoft
//! Graph tokens are recognised by their audience and refused without trying to verify them
//! (their signatures are not verifiable by third parties).

pub mod jwks;

use std::collections::BTreeSet;

use base64::Engine;
use serde::Deserialize;

use crate::config::EntraSettings;
use jwks::{JwksCache, JwksError};

/// Audiences of Microsoft Graph tokens (the classic mistake: sending MSAL's `User.Read` token).
const GRAPH_AUDIENCES: &[&str] =
    &["https://graph.microsoft.com", "https://graph.microsoft.com/", "00000003-0000-0000-c000-000000000000"];

/// Why an Entra token was refused. Every variant but `KeysUnavailable` is the caller's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntraError {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token algorithm is not RS256")]
    UnsupportedAlgorithm,
    #[error("the token header has no kid")]
    MissingKid,
    #[error("the token was not signed by a current key of its tenant")]
    UnknownKid,
    #[error("the token signature is invalid")]
    BadSignature,
    #[error("the token is a Microsoft Graph token; request a token for the gateway's own API scope")]
    GraphToken,
    #[error("the token's tenant is not accepted by this gateway")]
    TenantNotAllowed,
    #[error("the token version is not accepted")]
    UnsupportedVersion,
    #[error("the token issuer does not match its tenant and version")]
    WrongIssuer,
    #[error("the token audience is not this gateway")]
    WrongAudience,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token has no `{0}` claim")]
    MissingClaim(&'static str),
    #[error("the token was signed with a key that belongs to another tenant")]
    KeyOfAnotherTenant,
    /// An app-only token while app callers are off; says what was sent and what to send.
    #[error("{0}")]
    AppOnlyToken(String),
    /// An ID token, or a token with neither `scp` nor `roles`.
    #[error("{0}")]
    NotAnAccessToken(String),
    /// None of `entra.required_scopes` in `scp`.
    #[error("{0}")]
    MissingScope(String),
    #[error("{0}")]
    KeysUnavailable(String),
}

/// A validated app-only token (client credentials) of an app calling through the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppIdentity {
    pub tid: String,
    /// The calling app's service principal in the tenant.
    pub oid: String,
    /// The calling app's client id (`azp` in v2, `appid` in v1).
    pub client_id: String,
    /// The app roles assigned to it (`roles`).
    pub roles: Vec<String>,
}

/// What a validated token is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Validated {
    /// A signed-in user's delegated access token.
    User(EntraIdentity),
    /// An app's own token.
    App(AppIdentity),
}

/// The `groups` claim as the token carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupsClaim {
    /// The full list (group object ids).
    Complete(BTreeSet<String>),
    /// Too many groups for the token (`_claim_names.groups` or `hasgroups`): ask Graph.
    Overage,
    /// No claim (the app registration does not emit groups): ask Graph.
    Absent,
}

/// A validated Entra user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraIdentity {
    pub tid: String,
    pub oid: String,
    pub version: u8,
    pub name: Option<String>,
    pub email: Option<String>,
    /// `preferred_username` (v2) or `upn` / `unique_name` (v1).
    pub username: Option<String>,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub groups: GroupsClaim,
    /// When Entra issued the token (`iat`, Unix seconds; 0 when absent).
    pub iat: u64,
    /// The Conditional Access authentication contexts the token satisfies (`acrs`: `c1`...).
    pub acrs: Vec<String>,
    /// The client said it handles claims challenges (`xms_cc` contains `cp1`).
    pub cae_capable: bool,
}

/// Claims read (unverified) to pick the tenant and version, then again after verification.
#[derive(Debug, Deserialize)]
struct EntraClaims {
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    nbf: Option<u64>,
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    tid: Option<String>,
    #[serde(default)]
    oid: Option<String>,
    #[serde(default)]
    ver: Option<String>,
    #[serde(default)]
    aud: Option<serde_json::Value>,
    #[serde(default)]
    idtyp: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    scp: Option<String>,
    #[serde(default)]
    roles: Option<Vec<String>>,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    appid: Option<String>,
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    preferred_username: Option<String>,
    #[serde(default)]
    upn: Option<String>,
    #[serde(default)]
    unique_name: Option<String>,
    #[serde(default)]
    given_name: Option<String>,
    #[serde(default)]
    family_name: Option<String>,
    #[serde(default)]
    groups: Option<Vec<String>>,
    #[serde(default)]
    hasgroups: Option<bool>,
    #[serde(default, rename = "_claim_names")]
    claim_names: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    acrs: Option<serde_json::Value>,
    #[serde(default)]
    xms_cc: Option<serde_json::Value>,
}

/// A claim that is a string or a list of strings, as a list.
fn strings(v: &Option<serde_json::Value>) -> Vec<String> {
    match v {
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
        _ => Vec::new(),
    }
}

impl EntraClaims {
    fn groups_claim(&self) -> GroupsClaim {
        let overage =
            self.hasgroups == Some(true) || self.claim_names.as_ref().is_some_and(|m| m.contains_key("groups"));
        match (&self.groups, overage) {
            (_, true) => GroupsClaim::Overage,
            (Some(g), false) => GroupsClaim::Complete(g.iter().map(|g| g.to_ascii_lowercase()).collect()),
            (None, false) => GroupsClaim::Absent,
        }
    }

    fn is_graph_audience(&self) -> bool {
        self.has_audience(|a| GRAPH_AUDIENCES.contains(&a))
    }

    /// Whether `aud` (a string or a list of strings) has a value that `accept`s.
    fn has_audience(&self, accept: impl Fn(&str) -> bool) -> bool {
        let matches = |v: &serde_json::Value| v.as_str().is_some_and(&accept);
        match &self.aud {
            Some(serde_json::Value::Array(list)) => list.iter().any(matches),
            Some(v) => matches(v),
            None => false,
        }
    }

    /// The registered claims, checked as RFC 7519 says and in jsonwebtoken's order: `exp`,
    /// `iss` and `aud` present; `exp` not past and `nbf` not ahead, each with `leeway`; `iss`
    /// exactly `issuer`; an `aud` among `audiences`.
    fn check_registered(&self, issuer: &str, audiences: &[String], leeway: u64, now: u64) -> Result<(), EntraError> {
        let exp = self.exp.ok_or(EntraError::MissingClaim("exp"))?;
        let iss = self.iss.as_deref().ok_or(EntraError::MissingClaim("iss"))?;
        if self.aud.is_none() {
            return Err(EntraError::MissingClaim("aud"));
        }
        if exp < now.saturating_sub(leeway) {
            return Err(EntraError::Expired);
        }
        if self.nbf.is_some_and(|nbf| nbf > now + leeway) {
            return Err(EntraError::NotYetValid);
        }
        if iss != issuer {
            return Err(EntraError::WrongIssuer);
        }
        if !self.has_audience(|a| audiences.iter().any(|x| x == a)) {
            return Err(EntraError::WrongAudience);
        }
        Ok(())
    }
}

/// Validates Entra access tokens.
pub struct EntraValidator {
    tenants: Vec<String>,
    audiences: Vec<String>,
    versions: Vec<u8>,
    authority: String,
    v1_issuer_host: &'static str,
    leeway: u64,
    required_scopes: Vec<String>,
    /// `api://<client-id>`: what to request, in error descriptions.
    api: String,
    jwks: JwksCache,
}

impl EntraValidator {
    pub fn new(cfg: &EntraSettings, jwks: JwksCache) -> EntraValidator {
        let api = cfg.audiences.iter().find(|a| a.starts_with("api://")).cloned();
        EntraValidator {
            tenants: cfg.tenants.clone(),
            audiences: cfg.audiences.clone(),
            versions: cfg.accepted_token_versions.clone(),
            authority: cfg.authority.clone(),
            v1_issuer_host: cfg.v1_issuer_host,
            leeway: cfg.clock_skew.as_secs(),
            required_scopes: cfg.required_scopes.clone(),
            api: api.unwrap_or_else(|| format!("api://{}", cfg.client_id)),
            jwks,
        }
    }

    pub fn jwks(&self) -> &JwksCache {
        &self.jwks
    }

    pub fn tenants(&self) -> &[String] {
        &self.tenants
    }

    /// The issuer a token of `version` from tenant `tid` must carry.
    pub fn expected_issuer(&self, version: u8, tid: &str) -> String {
        match version {
            1 => format!("https://{}/{tid}/", self.v1_issuer_host),
            _ => self.v2_issuer(tid),
        }
    }

    fn v2_issuer(&self, tid: &str) -> String {
        format!("{}/{tid}/v2.0", self.authority)
    }

    /// Microsoft's signing-key issuer rule: a key whose JWKS entry names an `issuer` verifies
    /// only tokens whose issuer is that one (`{tenantid}` replaced by the token's `tid`), in its
    /// v1 or v2 form.
    fn check_key_issuer(&self, key_issuer: Option<&str>, tid: &str, token_issuer: &str) -> Result<(), EntraError> {
        let Some(template) = key_issuer else { return Ok(()) };
        let effective = template.replace("{tenantid}", tid);
        if effective.eq_ignore_ascii_case(token_issuer) || effective.eq_ignore_ascii_case(&self.v2_issuer(tid)) {
            Ok(())
        } else {
            Err(EntraError::KeyOfAnotherTenant)
        }
    }

    /// Validates `token` and says whether it is a user's or an app's, with its `exp` (Unix
    /// seconds). The token is decoded once; its signature is checked with the tenant's key as
    /// parsed when the JWKS was loaded.
    pub async fn validate_until(&self, token: &str) -> Result<(Validated, u64), EntraError> {
        let parts = Compact::split(token)?;
        let kid = check_header(parts.header)?;
        let claims: EntraClaims = decode_part(parts.payload)?;
        if claims.is_graph_audience() {
            return Err(EntraError::GraphToken);
        }
        let tid = claims.tid.as_deref().ok_or(EntraError::MissingClaim("tid"))?.to_ascii_lowercase();
        if !self.tenants.contains(&tid) {
            return Err(EntraError::TenantNotAllowed);
        }
        let version = match claims.ver.as_deref() {
            Some("1.0") => 1,
            Some("2.0") => 2,
            _ => return Err(EntraError::UnsupportedVersion),
        };
        if !self.versions.contains(&version) {
            return Err(EntraError::UnsupportedVersion);
        }
        let key = self.jwks.key(&tid, &kid).await.map_err(|e| match e {
            JwksError::UnknownKid => EntraError::UnknownKid,
            JwksError::Unavailable(why) => EntraError::KeysUnavailable(why),
        })?;
        let issuer = self.expected_issuer(version, &tid);
        self.check_key_issuer(key.issuer.as_deref(), &tid, &issuer)?;
        let signature = B64.decode(parts.signature).map_err(|_| EntraError::BadSignature)?;
        key.verifier.verify_sig(parts.signed.as_bytes(), &signature).map_err(|_| EntraError::BadSignature)?;
        claims.check_registered(&issuer, &self.audiences, self.leeway, crate::clock::unix_now())?;
        let exp = claims.exp.unwrap_or(0);
        self.classify(claims, tid, version).map(|v| (v, exp))
    }

    /// The token type, as Microsoft.Identity.Web decides it.
    fn classify(&self, c: EntraClaims, tid: String, version: u8) -> Result<Validated, EntraError> {
        let api = &self.api;
        if c.nonce.is_some() {
            return Err(EntraError::NotAnAccessToken(format!(
                "the token is an ID token (it has a nonce), not an access token: send the access token \
                 MSAL returns for a scope of {api} (e.g. {api}/access_as_user)"
            )));
        }
        let scp = c.scp.as_deref().map(str::trim).filter(|s| !s.is_empty());
        let has_roles = c.roles.as_ref().is_some_and(|r| !r.is_empty());
        let oid_is_sub = c.oid.is_some() && c.oid == c.sub;
        let app_because = match (c.idtyp.as_deref(), scp, has_roles, oid_is_sub) {
            (Some("app"), _, _, _) => Some("idtyp=app"),
            (_, None, true, _) => Some("roles without scp"),
            (_, None, false, true) => Some("oid equals sub and no scp"),
            _ => None,
        };
        if let Some(because) = app_because {
            return app_identity(c, tid, because);
        }
        let Some(scp) = scp else {
            return Err(EntraError::NotAnAccessToken(format!(
                "the token has neither scp nor roles, so it is not an access token for this API: \
                 request a scope of {api} (e.g. {api}/access_as_user)"
            )));
        };
        if !self.required_scopes.is_empty() && !scp.split(' ').any(|s| self.required_scopes.iter().any(|r| r == s)) {
            return Err(EntraError::MissingScope(format!(
                "the token's scopes ({scp}) include none of the required ones ({}): request {api}/{}",
                self.required_scopes.join(" "),
                self.required_scopes[0]
            )));
        }
        identity(c, tid, version).map(Validated::User)
    }

    /// The description of an app-only token refused because app callers are off.
    pub fn app_token_refusal(&self, app: &AppIdentity) -> EntraError {
        let api = &self.api;
        EntraError::AppOnlyToken(format!(
            "the token is an app-only token (client credentials) of app {}: app callers are not \
             enabled (authorization.apps), so sign a user in and request a delegated scope of {api} \
             (e.g. {api}/access_as_user)",
            app.client_id
        ))
    }
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The three parts of a compact JWS, and what its signature covers.
struct Compact<'a> {
    header: &'a str,
    payload: &'a str,
    signature: &'a str,
    /// `header.payload`.
    signed: &'a str,
}

impl<'a> Compact<'a> {
    fn split(token: &'a str) -> Result<Compact<'a>, EntraError> {
        let (signed, signature) = token.rsplit_once('.').ok_or(EntraError::Malformed)?;
        let (header, payload) = signed.split_once('.').ok_or(EntraError::Malformed)?;
        if payload.contains('.') {
            return Err(EntraError::Malformed);
        }
        Ok(Compact { header, payload, signature, signed })
    }
}

/// A base64url JSON part.
fn decode_part<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, EntraError> {
    let raw = B64.decode(part).map_err(|_| EntraError::Malformed)?;
    serde_json::from_slice(&raw).map_err(|_| EntraError::Malformed)
}

/// Checks the header by hand (so that `alg: none` and HS* get their own error) and returns `kid`.
fn check_header(header: &str) -> Result<String, EntraError> {
    let header: serde_json::Value = decode_part(header)?;
    if header.get("alg").and_then(|a| a.as_str()) != Some("RS256") {
        return Err(EntraError::UnsupportedAlgorithm);
    }
    match header.get("kid").and_then(|k| k.as_str()) {
        Some(kid) if !kid.is_empty() => Ok(kid.to_string()),
        _ => Err(EntraError::MissingKid),
    }
}

fn app_identity(c: EntraClaims, tid: String, because: &str) -> Result<Validated, EntraError> {
    let oid = c.oid.filter(|o| !o.is_empty()).ok_or(EntraError::MissingClaim("oid"))?;
    let client_id = c.azp.or(c.appid).filter(|a| !a.is_empty()).ok_or(EntraError::MissingClaim("azp"))?;
    tracing::debug!(because, client_id = %client_id, "app-only token");
    Ok(Validated::App(AppIdentity {
        tid,
        oid: oid.to_ascii_lowercase(),
        client_id: client_id.to_ascii_lowercase(),
        roles: c.roles.unwrap_or_default(),
    }))
}

fn identity(claims: EntraClaims, tid: String, version: u8) -> Result<EntraIdentity, EntraError> {
    let groups = claims.groups_claim();
    let oid = claims.oid.filter(|o| !o.is_empty()).ok_or(EntraError::MissingClaim("oid"))?;
    let username = claims.preferred_username.or(claims.upn).or(claims.unique_name);
    let acrs = strings(&claims.acrs);
    let cae_capable = strings(&claims.xms_cc).iter().any(|c| c.eq_ignore_ascii_case("cp1"));
    Ok(EntraIdentity {
        tid,
        oid: oid.to_ascii_lowercase(),
        version,
        name: claims.name,
        email: claims.email,
        username,
        given_name: claims.given_name,
        family_name: claims.family_name,
        groups,
        iat: claims.iat.unwrap_or(0),
        acrs,
        cae_capable,
    })
}

#[cfg(test)]
mod tests;
