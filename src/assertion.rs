//! Per-route assertion tokens: what an upstream gets in `Authorization` instead of the caller's
//! own session token (`proxy.forward_token: assertion`, the default).
//!
//! Owns: minting, for a verified session and a route's `audience`, a token with the same
//! `iss`, `sub` and claims but that `aud` (and its own `jti`), and keeping it with the session
//! until it expires, so that a session is signed for each route once (on each worker thread
//! that serves it: each keeps its own verified sessions, see `access`). A token one upstream
//! received is then refused by the gateway (its `aud` is not the gateway's) and by every other
//! upstream that checks `aud`: it cannot be replayed as the user, as Pomerium's assertion
//! header cannot. Must not: verify tokens (see `access`) or decide which routes get one.

use std::sync::Mutex;

use http::HeaderValue;

use crate::clock::unix_now;
use crate::issuer::{InternalClaims, Issuer, MintError};

/// Most audiences remembered per session (a route table has few; more are minted each time).
const MAX_PER_SESSION: usize = 32;

/// One session's assertions, by audience.
#[derive(Debug, Default)]
pub struct Assertions {
    /// (audience, `Bearer <token>`, exp).
    minted: Mutex<Vec<(String, HeaderValue, u64)>>,
}

impl Assertions {
    /// The `Authorization` value for `audience`: kept, or minted now from `session`.
    pub fn for_audience(
        &self,
        issuer: &Issuer,
        session: &InternalClaims,
        audience: &str,
    ) -> Result<HeaderValue, MintError> {
        let now = unix_now();
        {
            let minted = self.minted.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, value, _)) = minted.iter().find(|(aud, _, exp)| aud == audience && *exp > now) {
                return Ok(value.clone());
            }
        }
        let token = issuer.mint_assertion(session, audience)?;
        let value = HeaderValue::from_str(&format!("Bearer {}", token.token))
            .map_err(|_| MintError::new("the assertion is not a header value"))?;
        let mut minted = self.minted.lock().unwrap_or_else(|p| p.into_inner());
        minted.retain(|(aud, _, exp)| aud != audience && *exp > now);
        if minted.len() < MAX_PER_SESSION {
            minted.push((audience.to_string(), value.clone(), token.claims.exp));
        }
        Ok(value)
    }
}
