//! `POST /auth/exchange`: reads the Entra token from either request form and answers with the
//! internal token and the user.
//!
//! Owns: the two request forms (Bearer header with an empty or `{}` body; RFC 8693 form), the
//! body size limit, the 200 response shape and `Cache-Control: no-store`. Must not: validate
//! tokens itself (the exchange service does) or echo the token in any answer.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde::Deserialize;

use super::{AccessInfo, Body, Rejection, bearer};
use crate::app::AppState;
use crate::body::{ReadError, json_bytes};
use crate::directory::UserRecord;
use crate::entra::Validated;
use crate::exchange::{Exchanged, Subject};

const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const TOKEN_TYPE_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

#[derive(Deserialize)]
struct ExchangeForm {
    grant_type: Option<String>,
    subject_token: Option<String>,
    subject_token_type: Option<String>,
}

pub async fn handle(
    state: &AppState,
    req: Request<Incoming>,
    peer: SocketAddr,
    info: &mut AccessInfo,
) -> Result<Response<Body>, Rejection> {
    let started = Instant::now();
    let result = exchange(state, req, peer, info).await;
    let outcome = match &result {
        Ok(_) => "success",
        Err(rejection) => rejection.class().outcome,
    };
    state.metrics.exchange_total.with_label_values(&[outcome]).inc();
    state.metrics.exchange_duration.with_label_values::<&str>(&[]).observe(started.elapsed().as_secs_f64());
    result
}

async fn exchange(
    state: &AppState,
    req: Request<Incoming>,
    peer: SocketAddr,
    info: &mut AccessInfo,
) -> Result<Response<Body>, Rejection> {
    if req.method() != Method::POST {
        return Err(Rejection::MethodNotAllowed("POST"));
    }
    let client = state.limits.client_ip(peer.ip(), req.headers());
    state.limits.check_ip(client).map_err(|wait| rate_limited(state, "ip", wait))?;
    let server = &state.server;
    let token = read_token(req, server.max_exchange_body_bytes, server.exchange_body_timeout).await?;
    let exchanged = match state.exchange.validate(&token).await?.as_ref() {
        Validated::User(id) => {
            state.limits.check_user(&id.tid, &id.oid).map_err(|wait| rate_limited(state, "user", wait))?;
            Box::pin(state.exchange.complete(id, &token)).await?
        }
        Validated::App(app) => {
            state.limits.check_user(&app.tid, &app.oid).map_err(|wait| rate_limited(state, "user", wait))?;
            state.exchange.complete_app(app)?
        }
    };
    info.set_caller(&exchanged.minted.claims);
    Ok(json_bytes(StatusCode::OK, response_json(&exchanged)))
}

fn rate_limited(state: &AppState, limit: &'static str, wait: Duration) -> Rejection {
    state.metrics.rate_limited_total.with_label_values(&[limit]).inc();
    Rejection::RateLimited(wait)
}

/// The user as the exchange response and `/auth/me` show it.
pub fn user_json(user: &UserRecord, groups: &[String], roles: &[String]) -> serde_json::Value {
    serde_json::to_value(UserView::new(user, groups, roles)).unwrap_or_default()
}

/// The user of [`user_json`], borrowed (keys in the order `serde_json::Value` renders them).
#[derive(serde::Serialize)]
struct UserView<'a> {
    display_name: &'a Option<String>,
    email: &'a Option<String>,
    groups: &'a [String],
    id: &'a str,
    oid: &'a str,
    roles: &'a [String],
    tenant_id: &'a str,
    user_principal_name: &'a Option<String>,
}

impl<'a> UserView<'a> {
    fn new(user: &'a UserRecord, groups: &'a [String], roles: &'a [String]) -> UserView<'a> {
        UserView {
            display_name: &user.display_name,
            email: &user.email,
            groups,
            id: &user.id,
            oid: &user.oid,
            roles,
            tenant_id: &user.tenant_id,
            user_principal_name: &user.user_principal_name,
        }
    }
}

/// The app caller of an exchange response.
#[derive(serde::Serialize)]
struct AppView<'a> {
    client_id: &'a str,
    id: &'a str,
    oid: &'a str,
    roles: &'a [String],
    tenant_id: &'a str,
}

/// The 200 answer but its token, serialised straight from the exchange's result (no copy of the
/// user into an intermediate tree); [`response_json`] puts the token in front.
#[derive(serde::Serialize)]
struct AnswerRest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    app: Option<AppView<'a>>,
    expires_in: u64,
    issued_token_type: &'static str,
    token_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<UserView<'a>>,
}

impl<'a> AnswerRest<'a> {
    fn of(e: &'a Exchanged) -> AnswerRest<'a> {
        let c = &e.minted.claims;
        let (user, app) = match &e.subject {
            Subject::User(user) => (Some(UserView::new(user, &c.groups, &c.roles)), None),
            Subject::App(app) => {
                let view = AppView {
                    client_id: &app.client_id,
                    id: &c.sub,
                    oid: &app.oid,
                    roles: &c.roles,
                    tenant_id: &app.tid,
                };
                (None, Some(view))
            }
        };
        AnswerRest {
            app,
            expires_in: e.minted.expires_in,
            issued_token_type: TOKEN_TYPE_JWT,
            token_type: "Bearer",
            user,
        }
    }
}

/// The 200 answer's JSON: `access_token` first, then the rest in key order, as a map of them
/// would be serialised. The token is a compact JWS the issuer made (base64url and dots): it is
/// written as it is instead of through serde_json's byte-by-byte escape check (a 700-byte token
/// is most of the answer); anything else in its place is escaped as usual.
fn response_json(e: &Exchanged) -> Vec<u8> {
    let rest = AnswerRest::of(e);
    let token = e.minted.token.as_str();
    let mut out = Vec::with_capacity(token.len() + 512);
    out.extend_from_slice(b"{\"access_token\":");
    if is_compact_jws_text(token) {
        out.push(b'"');
        out.extend_from_slice(token.as_bytes());
        out.push(b'"');
    } else {
        // Writing to memory fails only for maps with non-string keys, which this has not.
        let _ = serde_json::to_writer(&mut out, token);
    }
    let brace = out.len();
    let _ = serde_json::to_writer(&mut out, &rest);
    // The rest's own opening brace becomes the comma after the token (it has `expires_in`).
    out[brace] = b',';
    out
}

/// Only base64url characters and dots: JSON text as it is.
fn is_compact_jws_text(token: &str) -> bool {
    crate::byte_class::all(token.as_bytes(), |b| b.is_ascii_alphanumeric() | (b == b'-') | (b == b'_') | (b == b'.'))
}

/// The Entra token, from the `Authorization` header or the RFC 8693 form; the body must arrive
/// within `deadline`.
async fn read_token(req: Request<Incoming>, limit: usize, deadline: Duration) -> Result<String, Rejection> {
    let (parts, body) = req.into_parts();
    let header_token = bearer(&parts.headers).map(str::to_owned);
    if header_token.is_none() && parts.headers.contains_key(header::AUTHORIZATION) {
        crate::body::linger(body);
        return Err(Rejection::InvalidRequest("the Authorization header must be `Bearer <Entra access token>`".into()));
    }
    let read = tokio::time::timeout(deadline, crate::body::read_limited(&parts.headers, body, limit)).await;
    let Ok(read) = read else {
        return Err(Rejection::RequestTimeout);
    };
    let body = match read {
        Ok(b) => b,
        Err(ReadError::TooLarge) => return Err(Rejection::PayloadTooLarge),
        Err(ReadError::Broken) => {
            return Err(Rejection::InvalidRequest("the request body could not be read".into()));
        }
    };
    let is_form = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| {
        ct.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
    });
    match (header_token, is_form) {
        (Some(_), true) => {
            Err(Rejection::InvalidRequest("send the token either in Authorization or in the form, not both".into()))
        }
        (Some(token), false) => {
            check_empty_body(&body)?;
            Ok(token)
        }
        (None, true) => token_from_form(&body),
        (None, false) => Err(Rejection::InvalidRequest(
            "missing token: send `Authorization: Bearer <Entra access token>` or an RFC 8693 token-exchange form"
                .into(),
        )),
    }
}

/// The Bearer form takes an empty body or an empty JSON object.
fn check_empty_body(body: &[u8]) -> Result<(), Rejection> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(m)) if m.is_empty() => Ok(()),
        _ => Err(Rejection::InvalidRequest("with a Bearer token the body must be empty or {}".into())),
    }
}

fn token_from_form(body: &[u8]) -> Result<String, Rejection> {
    let form: ExchangeForm = serde_urlencoded::from_bytes(body)
        .map_err(|_| Rejection::InvalidRequest("the body is not a valid form".into()))?;
    match form.grant_type.as_deref() {
        Some(GRANT_TOKEN_EXCHANGE) => {}
        Some(_) => {
            return Err(Rejection::InvalidRequest(format!("unsupported grant_type; use {GRANT_TOKEN_EXCHANGE}")));
        }
        None => return Err(Rejection::InvalidRequest("missing grant_type".into())),
    }
    match form.subject_token_type.as_deref() {
        Some(TOKEN_TYPE_ACCESS | TOKEN_TYPE_JWT) => {}
        Some(_) => {
            return Err(Rejection::InvalidRequest(format!(
                "unsupported subject_token_type; use {TOKEN_TYPE_ACCESS} or {TOKEN_TYPE_JWT}"
            )));
        }
        None => {
            return Err(Rejection::InvalidRequest("missing subject_token_type".into()));
        }
    }
    match form.subject_token {
        Some(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        _ => Err(Rejection::InvalidRequest("missing subject_token".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole answer as one serde struct: what [`response_json`] must equal byte for byte.
    #[derive(serde::Serialize)]
    struct Whole<'a> {
        access_token: &'a str,
        #[serde(flatten)]
        rest: AnswerRest<'a>,
    }

    fn whole(e: &Exchanged) -> Vec<u8> {
        let mut json = response_json(e);
        // Parsed back and written by serde_json from a map: the same bytes.
        let v: serde_json::Value = serde_json::from_slice(&json).expect("valid JSON");
        json.clear();
        serde_json::to_writer(&mut json, &v).unwrap();
        json
    }

    fn minted(token: &str) -> crate::issuer::Minted {
        use crate::config::IssuerSettings;
        use crate::keys::{KeyRing, SigningAlgorithm, SigningKey, generate_pem};
        let alg = SigningAlgorithm::ES256;
        let key = SigningKey::from_pem("k1", alg, generate_pem(alg).unwrap().as_bytes()).unwrap();
        let issuer = crate::issuer::Issuer::new(IssuerSettings {
            issuer: "https://gw.test".into(),
            audience: "internal".into(),
            token_ttl: Duration::from_secs(900),
            keys: KeyRing::from_keys(vec![key]),
        });
        let user = UserRecord::for_test("tid-1", "oid-1");
        let mut m = issuer.mint(&user, vec!["g\"1".into()], vec!["r".into()]).unwrap();
        if !token.is_empty() {
            m.token = token.into();
        }
        m
    }

    #[test]
    fn the_answer_is_the_json_serde_would_write_with_the_token_first() {
        let user = || Subject::User(Box::new(UserRecord::for_test("tid-1", "oid-1")));
        let app = crate::entra::AppIdentity {
            tid: "t\u{e9}".into(),
            oid: "o".into(),
            client_id: "c\"".into(),
            roles: vec!["Reader".into()],
        };
        // A minted token as it is, and (never made by the issuer) one that needs escaping.
        for token in ["", "a\"b\\c\u{1}</", "abc.def.ghi"] {
            for subject in [user(), Subject::App(app.clone())] {
                let e = Exchanged { minted: minted(token), subject };
                let json = response_json(&e);
                let rest = AnswerRest::of(&e);
                let expected = serde_json::to_vec(&Whole { access_token: &e.minted.token, rest }).unwrap();
                assert_eq!(String::from_utf8_lossy(&json), String::from_utf8_lossy(&expected), "token {token:?}");
                assert_eq!(whole(&e), expected, "keys in map order");
                let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
                assert_eq!(v["access_token"], e.minted.token.as_str());
            }
        }
        assert!(is_compact_jws_text(&minted("").token), "a minted token is written as it is");
        assert!(!is_compact_jws_text(&format!("{}\"", minted("").token)));
    }

    #[test]
    fn form_needs_the_token_exchange_grant_and_a_supported_token_type() {
        let ok = format!("grant_type={GRANT_TOKEN_EXCHANGE}&subject_token=abc&subject_token_type={TOKEN_TYPE_JWT}");
        assert_eq!(token_from_form(ok.as_bytes()).unwrap(), "abc");
        let bad_grant = format!("grant_type=password&subject_token=abc&subject_token_type={TOKEN_TYPE_JWT}");
        assert!(matches!(token_from_form(bad_grant.as_bytes()), Err(Rejection::InvalidRequest(_))));
        let bad_type = format!("grant_type={GRANT_TOKEN_EXCHANGE}&subject_token=abc&subject_token_type=urn:x");
        assert!(matches!(token_from_form(bad_type.as_bytes()), Err(Rejection::InvalidRequest(_))));
        let no_token = format!("grant_type={GRANT_TOKEN_EXCHANGE}&subject_token_type={TOKEN_TYPE_JWT}");
        assert!(matches!(token_from_form(no_token.as_bytes()), Err(Rejection::InvalidRequest(_))));
    }

    #[test]
    fn bearer_form_accepts_only_an_empty_body_or_empty_object() {
        assert!(check_empty_body(b"").is_ok());
        assert!(check_empty_body(b" {} ").is_ok());
        assert!(check_empty_body(b"{\"a\":1}").is_err());
        assert!(check_empty_body(b"junk").is_err());
    }
}
