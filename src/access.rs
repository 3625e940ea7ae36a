//! The internal-token check on the hot path: who is calling, and may they use this route.
//!
//! Owns: verifying the gateway's own token (signature, `iss`, `aud`, `exp`, `nbf`), a bounded
//! cache of already-verified tokens keyed by the whole token and expiring with the token (so
//! the signature is not re-verified on every request; a hit is an exact match of the token's
//! bytes, found through a fast hash with a per-process random seed, so no collision can hand
//! a caller another token's principal; one cache per worker thread, so that a request touches
//! no memory another worker writes: the cache's own bookkeeping, the principal's reference
//! count and its header values are the worker's), the revocation check (always, cached or
//! not), route group checks, logout, and the identity header values of each caller (computed
//! once per token). Must not: read HTTP bodies or build responses.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue};
use moka::Expiry;

use crate::assertion::Assertions;
use crate::cache::StoreError;
use crate::clock::unix_now;
use crate::identity::{IdentityHeaders, Who};
use crate::issuer::{INTERNAL_LEEWAY_SECS, InternalClaims, InternalTokenError, Issuer, MintError};
use crate::policy::route_allows;
use crate::revocation::RevocationStore;
use crate::user_access::{Refused, UserAccess};

/// A verified caller.
#[derive(Debug)]
pub struct Principal {
    pub claims: InternalClaims,
    /// `claims.sub`, shared with each request's access line.
    pub user_id: Arc<str>,
    /// The identity headers to inject, rendered once.
    pub identity: Vec<(HeaderName, HeaderValue)>,
    /// The session's assertion tokens, per upstream audience.
    assertions: Assertions,
    /// The user's key in [`UserAccess`] (`tid:oid`), computed once.
    user_key: String,
    /// The token itself: its key in the verified-token cache (shared with it, not copied).
    key: Arc<[u8]>,
}

/// Why a caller was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("missing bearer token")]
    MissingToken,
    #[error("{0}")]
    InvalidToken(#[from] InternalTokenError),
    #[error("the token has been revoked (logged out)")]
    Revoked,
    #[error("the user is not in a group allowed on this route")]
    RouteForbidden,
    #[error("app callers are not allowed on this route")]
    AppsNotAllowed,
    #[error("the revocation store is unavailable")]
    Unavailable(#[from] StoreError),
    /// The directory sync or the kill switch took the user's access away after the token was
    /// issued.
    #[error("access revoked ({}): sign in again", .0.reason_label())]
    AccessRevoked(Refused),
    /// The route needs this authentication context and the token does not carry it.
    #[error("the route needs the authentication context {0}")]
    MissingAuthContext(String),
}

struct UntilTokenExpiry;

impl Expiry<Arc<[u8]>, Arc<Principal>> for UntilTokenExpiry {
    fn expire_after_create(&self, _key: &Arc<[u8]>, p: &Arc<Principal>, _now: Instant) -> Option<Duration> {
        Some(Duration::from_secs(p.claims.exp.saturating_sub(unix_now()) + INTERNAL_LEEWAY_SECS))
    }
}

/// Keyed by the token's bytes: only tokens that were verified, so printable ASCII, are in it.
type Verified = moka::sync::Cache<Arc<[u8]>, Arc<Principal>, foldhash::fast::RandomState>;

/// Verified tokens kept, over all workers.
const VERIFIED_CAPACITY: u64 = 100_000;

pub struct Access {
    issuer: Arc<Issuer>,
    revocations: Arc<dyn RevocationStore>,
    /// One cache per worker thread (see [`Access::authenticate`]).
    verified: Box<[Verified]>,
    headers: IdentityHeaders,
    users: Arc<UserAccess>,
}

impl Access {
    /// `workers`: the worker threads that will call [`Access::authenticate`] (each gets its
    /// own cache; the capacity is shared out).
    pub fn new(
        issuer: Arc<Issuer>,
        revocations: Arc<dyn RevocationStore>,
        headers: IdentityHeaders,
        users: Arc<UserAccess>,
        workers: usize,
    ) -> Access {
        let workers = workers.max(1);
        // The key is the token (about 1 KiB with the principal it maps to): foldhash, seeded at
        // random, rather than SipHash or a SHA-256 of it (2% of a proxied request's CPU).
        let seed = foldhash::fast::RandomState::default();
        let verified = (0..workers)
            .map(|_| {
                moka::sync::Cache::builder()
                    .max_capacity(VERIFIED_CAPACITY.div_ceil(workers as u64))
                    .expire_after(UntilTokenExpiry)
                    .build_with_hasher(seed.clone())
            })
            .collect();
        Access { issuer, revocations, verified, headers, users }
    }

    pub fn identity_headers(&self) -> &IdentityHeaders {
        &self.headers
    }

    /// Verifies `token` (from the cache when seen before) and checks it is not revoked.
    /// `worker`: the thread serving the request, whose cache is used (a token used on two
    /// workers is verified once on each).
    /// `token`: as `http::bearer_bytes` finds it; one the cache does not hold must be printable
    /// ASCII (else it is no token: [`AccessError::MissingToken`], as `http::bearer` says).
    pub async fn authenticate(&self, token: Option<&[u8]>, worker: usize) -> Result<Arc<Principal>, AccessError> {
        let token = token.ok_or(AccessError::MissingToken)?;
        let principal = self.verify(token, worker)?;
        if !principal.claims.is_app() {
            self.users.check_token(&principal.user_key, principal.claims.iat).map_err(AccessError::AccessRevoked)?;
        }
        let jti = &principal.claims.jti;
        let revoked = match self.revocations.is_revoked_locally(jti) {
            Some(known) => known,
            None => self.revocations.is_revoked(jti).await?,
        };
        if revoked {
            return Err(AccessError::Revoked);
        }
        Ok(principal)
    }

    fn verify(&self, token: &[u8], worker: usize) -> Result<Arc<Principal>, AccessError> {
        let verified = &self.verified[worker % self.verified.len()];
        if let Some(p) = verified.get(token)
            && p.claims.exp + INTERNAL_LEEWAY_SECS > unix_now()
        {
            return Ok(p);
        }
        // The cache holds no other token than printable ones.
        let claims = self.issuer.verify(token_text(token).ok_or(AccessError::MissingToken)?)?;
        let identity = identity_values(&self.headers, &claims);
        let user_key = UserAccess::key(&claims.tid, &claims.oid);
        let key: Arc<[u8]> = Arc::from(token);
        let principal = Arc::new(Principal {
            user_id: Arc::from(claims.sub.as_str()),
            claims,
            identity,
            assertions: Assertions::default(),
            user_key,
            key: key.clone(),
        });
        verified.insert(key, principal.clone());
        Ok(principal)
    }

    /// Checks a route's rules for the caller: app callers only where `allow_apps`; users by
    /// the route's groups (`None`: any authenticated user).
    pub fn authorize(
        &self,
        principal: &Principal,
        route_groups: Option<&[String]>,
        allow_apps: bool,
    ) -> Result<(), AccessError> {
        if principal.claims.is_app() {
            return if allow_apps { Ok(()) } else { Err(AccessError::AppsNotAllowed) };
        }
        if route_allows(route_groups, &principal.claims.groups) { Ok(()) } else { Err(AccessError::RouteForbidden) }
    }

    /// Step-up: every authentication context the route names must be in the token's `acrs`
    /// (app callers have none to show: refused as any missing context).
    pub fn require_contexts(&self, principal: &Principal, contexts: &[String]) -> Result<(), AccessError> {
        match contexts.iter().find(|c| !principal.claims.acrs.iter().any(|a| a.eq_ignore_ascii_case(c))) {
            Some(missing) => Err(AccessError::MissingAuthContext(missing.clone())),
            None => Ok(()),
        }
    }

    /// `Authorization` for an upstream whose assertions carry `audience` (see `assertion`).
    pub fn assertion(&self, principal: &Principal, audience: &str) -> Result<HeaderValue, MintError> {
        principal.assertions.for_audience(&self.issuer, &principal.claims, audience)
    }

    /// Follows other replicas' logouts (Redis pub/sub) until the task is dropped.
    pub async fn follow_revocations(&self) {
        self.revocations.follow().await
    }

    /// Revokes the caller's token until it expires (plus the verifier's leeway, so that it is
    /// never accepted again), on every replica sharing the store.
    pub async fn revoke(&self, principal: &Principal) -> Result<(), StoreError> {
        let left = principal.claims.exp.saturating_sub(unix_now());
        let ttl = Duration::from_secs(left + INTERNAL_LEEWAY_SECS + 1);
        self.revocations.revoke(&principal.claims.jti, ttl).await?;
        for verified in &self.verified {
            verified.invalidate(&principal.key);
        }
        Ok(())
    }
}

/// A bearer token's text: printable ASCII and tabs only, what `HeaderValue::to_str` allows
/// (`None` for anything else: no token).
pub fn token_text(token: &[u8]) -> Option<&str> {
    let printable = crate::byte_class::all(token, |b| (b == b'\t') | (b.wrapping_sub(b' ') < 95));
    printable.then(|| std::str::from_utf8(token).ok()).flatten()
}

/// The identity header values of a verified caller, computed once per token, in the
/// configured profile.
fn identity_values(h: &IdentityHeaders, c: &InternalClaims) -> Vec<(HeaderName, HeaderValue)> {
    h.render(&Who {
        is_app: c.is_app(),
        user_id: &c.sub,
        oid: &c.oid,
        tid: &c.tid,
        email: c.email.as_deref(),
        display_name: c.name.as_deref(),
        username: c.preferred_username.as_deref(),
        client_id: c.azp.as_deref(),
        groups: &c.groups,
        roles: &c.roles,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IssuerSettings;
    use crate::keys::{KeyRing, SigningAlgorithm, SigningKey, generate_pem};
    use crate::revocation::MemoryRevocations;

    fn access(workers: usize) -> (Access, Arc<Issuer>) {
        let alg = SigningAlgorithm::ES256;
        let key = SigningKey::from_pem("k1", alg, generate_pem(alg).unwrap().as_bytes()).unwrap();
        let issuer = Arc::new(Issuer::new(IssuerSettings {
            issuer: "https://gw.test".into(),
            audience: "internal".into(),
            token_ttl: Duration::from_secs(900),
            keys: KeyRing::from_keys(vec![key]),
        }));
        let revocations = Arc::new(MemoryRevocations::new(100, &crate::metrics::Metrics::new()));
        let headers = IdentityHeaders::new("X-Auth-").unwrap();
        (Access::new(issuer.clone(), revocations, headers, UserAccess::new(), workers), issuer)
    }

    #[tokio::test]
    async fn each_worker_keeps_its_own_principal_and_a_logout_ends_the_token_on_all() {
        let (access, issuer) = access(2);
        let user = crate::directory::UserRecord::for_test("tid-1", "oid-1");
        let token = issuer.mint(&user, vec!["g".into()], vec![]).unwrap().token;
        let on_0 = access.authenticate(Some(token.as_bytes()), 0).await.unwrap();
        assert!(
            Arc::ptr_eq(&on_0, &access.authenticate(Some(token.as_bytes()), 0).await.unwrap()),
            "cached on worker 0"
        );
        let on_1 = access.authenticate(Some(token.as_bytes()), 1).await.unwrap();
        assert!(!Arc::ptr_eq(&on_0, &on_1), "worker 1 has its own principal");
        assert!(
            Arc::ptr_eq(&on_1, &access.authenticate(Some(token.as_bytes()), 3).await.unwrap()),
            "worker 3 shares slot 1"
        );
        let name = |p: &Principal| p.identity.iter().map(|(n, _)| n.as_str().to_string()).collect::<Vec<_>>();
        assert_eq!(name(&on_0), name(&on_1), "the same headers");
        access.revoke(&on_1).await.unwrap();
        for worker in 0..2 {
            assert!(access.verified[worker].get(token.as_bytes()).is_none(), "dropped from worker {worker}'s cache");
            assert!(matches!(access.authenticate(Some(token.as_bytes()), worker).await, Err(AccessError::Revoked)));
        }
    }

    #[test]
    fn token_text_takes_exactly_printable_ascii_and_tabs_wherever_the_byte_is() {
        // Every byte value, at the start, at either side of a 64-byte chunk's edge and at the
        // end of a token of an Entra token's length, against the byte-at-a-time definition.
        let printable = |b: u8| b == b'\t' || (b' '..=b'~').contains(&b);
        for b in 0..=255u8 {
            for at in [0, 63, 64, 65, 700, 1128] {
                let mut token = vec![b'a'; 1129];
                token[at] = b;
                assert_eq!(token_text(&token).is_some(), printable(b), "byte {b:#x} at {at}");
            }
            assert_eq!(token_text(&[b]).is_some(), printable(b), "byte {b:#x} alone");
        }
        assert_eq!(token_text(b""), Some(""));
    }

    #[tokio::test]
    async fn a_token_that_is_not_printable_ascii_is_no_token() {
        let (access, issuer) = access(1);
        let token =
            issuer.mint(&crate::directory::UserRecord::for_test("tid-1", "oid-1"), vec![], vec![]).unwrap().token;
        access.authenticate(Some(token.as_bytes()), 0).await.unwrap();
        for bad in [format!("{token}\u{e9}"), format!("{token}\u{7f}"), format!("{token}\n")] {
            let r = access.authenticate(Some(bad.as_bytes()), 0).await;
            assert!(matches!(r, Err(AccessError::MissingToken)), "{:?}: {:?}", bad.as_bytes().last(), r.err());
        }
        let r = access.authenticate(Some(b"\xff\xfe"), 0).await;
        assert!(matches!(r, Err(AccessError::MissingToken)), "not UTF-8");
    }
}
