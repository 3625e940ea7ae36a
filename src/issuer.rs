//! The internal token issuer: mints the gateway's own short-lived JWT, verifies it on the way
//! back in, and renders `/.well-known/jwks.json` and `/.well-known/openid-configuration`.
//!
//! Owns: the claim set of the internal token and its signing/verification rules (pinned
//! algorithm per `kid`, `iss`, `aud`, `exp`/`nbf`). Must not: know about Entra tokens, Graph,
//! HTTP or revocation (the caller checks `jti` against the revocation store).

use std::time::Duration;

use jsonwebtoken::Validation;
use jsonwebtoken::errors::ErrorKind;
use serde::{Deserialize, Serialize};

use crate::clock::unix_now;
use crate::config::IssuerSettings;
use crate::directory::UserRecord;
use crate::entra::AppIdentity;
use crate::keys::KeyRing;

/// Leeway on the gateway's own `exp`/`nbf`: the replicas share a clock source in practice.
/// A revocation lives until `exp` plus this, so that a logged-out token is never accepted again.
pub const INTERNAL_LEEWAY_SECS: u64 = 5;

/// Claims of the internal token (the contract's list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InternalClaims {
    pub iss: String,
    pub aud: String,
    /// Stable internal id of the user (tid, oid), or of the app (tid, client id).
    pub sub: String,
    pub oid: String,
    pub tid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_username: Option<String>,
    /// The configured groups the user is in.
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub jti: String,
    /// `app` for an app caller; absent for users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idtyp: Option<String>,
    /// The app caller's client id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azp: Option<String>,
    /// The Conditional Access authentication contexts the user's Entra token satisfied
    /// (`acrs`), for routes with `auth_context` (step-up).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acrs: Vec<String>,
}

impl InternalClaims {
    /// Whether the token is an app caller's.
    pub fn is_app(&self) -> bool {
        self.idtyp.as_deref() == Some("app")
    }
}

/// A freshly minted token.
#[derive(Debug, Clone)]
pub struct Minted {
    pub token: String,
    pub claims: InternalClaims,
    pub expires_in: u64,
}

/// Why an internal token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InternalTokenError {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token was not signed by a key of this gateway")]
    UnknownKey,
    #[error("the token signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued by someone else")]
    WrongIssuer,
    #[error("the token is meant for another audience")]
    WrongAudience,
}

/// Why a token could not be minted (a broken key: an internal error).
#[derive(Debug, thiserror::Error)]
#[error("signing the internal token failed: {0}")]
pub struct MintError(String);

impl MintError {
    pub fn new(why: &str) -> MintError {
        MintError(why.to_string())
    }
}

pub struct Issuer {
    issuer: String,
    audience: String,
    ttl: Duration,
    keys: KeyRing,
    jwks_json: bytes::Bytes,
}

impl Issuer {
    pub fn new(cfg: IssuerSettings) -> Issuer {
        let keys = cfg.keys;
        let jwks = serde_json::json!({ "keys": keys.iter().map(|k| &k.jwk).collect::<Vec<_>>() });
        Issuer {
            issuer: cfg.issuer,
            audience: cfg.audience,
            ttl: cfg.token_ttl,
            keys,
            jwks_json: bytes::Bytes::from(jwks.to_string()),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Signs a token for `user` with the active key.
    #[cfg(test)]
    pub fn mint(&self, user: &UserRecord, groups: Vec<String>, roles: Vec<String>) -> Result<Minted, MintError> {
        self.mint_with(user, groups, roles, Vec::new())
    }

    /// [`Self::mint`], carrying the Entra token's authentication contexts (`acrs`).
    pub fn mint_with(
        &self,
        user: &UserRecord,
        groups: Vec<String>,
        roles: Vec<String>,
        acrs: Vec<String>,
    ) -> Result<Minted, MintError> {
        let now = unix_now();
        let claims = InternalClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: user.id.clone(),
            oid: user.oid.clone(),
            tid: user.tenant_id.clone(),
            email: user.email.clone(),
            name: user.display_name.clone(),
            preferred_username: user.user_principal_name.clone(),
            groups,
            roles,
            iat: now,
            nbf: now,
            exp: now + self.ttl.as_secs(),
            jti: uuid::Uuid::new_v4().to_string(),
            idtyp: None,
            azp: None,
            acrs,
        };
        self.sign(claims)
    }

    /// Signs a token for an app caller: `sub` is the app's stable id, `idtyp: app`, no user.
    pub fn mint_app(&self, app: &AppIdentity, roles: Vec<String>) -> Result<Minted, MintError> {
        let now = unix_now();
        let claims = InternalClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: crate::directory::internal_app_id(&app.tid, &app.client_id),
            oid: app.oid.clone(),
            tid: app.tid.clone(),
            email: None,
            name: None,
            preferred_username: None,
            groups: Vec::new(),
            roles,
            iat: now,
            nbf: now,
            exp: now + self.ttl.as_secs(),
            jti: uuid::Uuid::new_v4().to_string(),
            idtyp: Some("app".into()),
            azp: Some(app.client_id.clone()),
            acrs: Vec::new(),
        };
        self.sign(claims)
    }

    /// An assertion for one upstream: the session's claims with `aud` set to `audience`, a new
    /// `jti`, issued now, expiring with the session.
    pub fn mint_assertion(&self, session: &InternalClaims, audience: &str) -> Result<Minted, MintError> {
        let now = unix_now();
        let claims = InternalClaims {
            aud: audience.to_string(),
            iat: now,
            nbf: now,
            jti: uuid::Uuid::new_v4().to_string(),
            ..session.clone()
        };
        self.sign(claims)
    }

    fn sign(&self, claims: InternalClaims) -> Result<Minted, MintError> {
        let key = self.keys.active().ok_or_else(|| MintError("no signing key".into()))?;
        let ttl = self.ttl.as_secs();
        let token = key.sign(&claims).map_err(MintError)?;
        let expires_in = claims.exp.saturating_sub(unix_now()).min(ttl);
        Ok(Minted { token, claims, expires_in })
    }

    /// Verifies signature (algorithm pinned by `kid`), `iss`, `aud`, `exp`, `nbf`.
    pub fn verify(&self, token: &str) -> Result<InternalClaims, InternalTokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| InternalTokenError::Malformed)?;
        let kid = header.kid.as_deref().ok_or(InternalTokenError::UnknownKey)?;
        let key = self.keys.get(kid).ok_or(InternalTokenError::UnknownKey)?;
        if header.alg != key.algorithm {
            return Err(InternalTokenError::BadSignature);
        }
        let mut v = Validation::new(key.algorithm);
        v.leeway = INTERNAL_LEEWAY_SECS;
        v.validate_nbf = true;
        v.set_audience(&[&self.audience]);
        v.set_issuer(&[&self.issuer]);
        v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<InternalClaims>(token, &key.decoding, &v)
            .map(|d| d.claims)
            .map_err(|e| map_jwt_error(e.kind()))
    }

    /// `/.well-known/jwks.json`, rendered once.
    pub fn jwks_json(&self) -> bytes::Bytes {
        self.jwks_json.clone()
    }

    /// `/.well-known/openid-configuration` for a gateway reachable at `base_url`.
    pub fn discovery_document(&self, base_url: &str) -> serde_json::Value {
        let algs: Vec<_> = {
            let mut a: Vec<String> = self.keys.iter().map(|k| format!("{:?}", k.algorithm)).collect();
            a.dedup();
            a
        };
        serde_json::json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{base_url}/.well-known/jwks.json"),
            "token_endpoint": format!("{base_url}/auth/exchange"),
            "grant_types_supported": ["urn:ietf:params:oauth:grant-type:token-exchange"],
            "token_endpoint_auth_methods_supported": ["none"],
            "id_token_signing_alg_values_supported": algs,
            "subject_types_supported": ["public"],
            "claims_supported": ["iss", "aud", "sub", "oid", "tid", "email", "name",
                "preferred_username", "groups", "roles", "iat", "nbf", "exp", "jti", "idtyp", "azp", "acrs"],
        })
    }
}

fn map_jwt_error(kind: &ErrorKind) -> InternalTokenError {
    match kind {
        ErrorKind::ExpiredSignature => InternalTokenError::Expired,
        ErrorKind::ImmatureSignature => InternalTokenError::NotYetValid,
        ErrorKind::InvalidIssuer => InternalTokenError::WrongIssuer,
        ErrorKind::InvalidAudience => InternalTokenError::WrongAudience,
        ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => InternalTokenError::BadSignature,
        _ => InternalTokenError::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{SigningAlgorithm, SigningKey, generate_pem};

    fn issuer(algs: &[SigningAlgorithm]) -> Issuer {
        let keys = algs
            .iter()
            .enumerate()
            .map(|(i, a)| SigningKey::from_pem(&format!("k{i}"), *a, generate_pem(*a).unwrap().as_bytes()).unwrap())
            .collect();
        Issuer::new(IssuerSettings {
            issuer: "https://gw.test".into(),
            audience: "internal".into(),
            token_ttl: Duration::from_secs(900),
            keys: KeyRing::from_keys(keys),
        })
    }

    fn user() -> UserRecord {
        UserRecord::for_test("tid-1", "oid-1")
    }

    #[test]
    fn minted_token_verifies_with_the_contract_claims() {
        let iss = issuer(&[SigningAlgorithm::ES256]);
        let m = iss.mint(&user(), vec!["g".into()], vec!["admin".into()]).unwrap();
        let c = iss.verify(&m.token).unwrap();
        assert_eq!(c, m.claims);
        assert_eq!(c.exp - c.iat, 900);
        assert_eq!(c.sub, user().id);
        assert_eq!(jsonwebtoken::decode_header(&m.token).unwrap().kid.as_deref(), Some("k0"));
    }

    #[test]
    fn an_assertion_is_the_session_for_another_audience_and_is_refused_as_a_session() {
        let iss = issuer(&[SigningAlgorithm::ES256]);
        let session = iss.mint(&user(), vec!["g".into()], vec!["admin".into()]).unwrap();
        let a = iss.mint_assertion(&session.claims, "http://orders:8080").unwrap();
        assert_eq!(a.claims.aud, "http://orders:8080");
        assert_eq!((a.claims.sub.as_str(), a.claims.exp), (session.claims.sub.as_str(), session.claims.exp));
        assert_eq!(a.claims.groups, session.claims.groups);
        assert_ne!(a.claims.jti, session.claims.jti);
        assert_eq!(iss.verify(&a.token), Err(InternalTokenError::WrongAudience));
    }

    #[test]
    fn a_token_from_another_gateway_is_refused() {
        let a = issuer(&[SigningAlgorithm::ES256]);
        let b = issuer(&[SigningAlgorithm::ES256]);
        let m = b.mint(&user(), vec![], vec![]).unwrap();
        assert_eq!(a.verify(&m.token), Err(InternalTokenError::BadSignature));
        assert_eq!(a.verify("not.a.jwt"), Err(InternalTokenError::Malformed));
    }

    #[test]
    fn rotation_keeps_tokens_of_the_second_key_valid() {
        let old = issuer(&[SigningAlgorithm::EdDSA]);
        let token = old.mint(&user(), vec![], vec![]).unwrap().token;
        // The new ring signs with a fresh key and still lists the old one second.
        let old_key = old.keys.into_keys().into_iter().next().unwrap();
        let new_key = SigningKey::from_pem(
            "k9",
            SigningAlgorithm::ES256,
            generate_pem(SigningAlgorithm::ES256).unwrap().as_bytes(),
        )
        .unwrap();
        let rotated = Issuer::new(IssuerSettings {
            issuer: "https://gw.test".into(),
            audience: "internal".into(),
            token_ttl: Duration::from_secs(60),
            keys: KeyRing::from_keys(vec![new_key, old_key]),
        });
        assert!(rotated.verify(&token).is_ok());
        let fresh = rotated.mint(&user(), vec![], vec![]).unwrap().token;
        assert_eq!(jsonwebtoken::decode_header(&fresh).unwrap().kid.as_deref(), Some("k9"));
        let jwks: serde_json::Value = serde_json::from_slice(&rotated.jwks_json()).unwrap();
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    }
}
