//! The App Service Authentication ("Easy Auth") header profile: what an app written for Azure
//! App Service reads, so that it moves behind the gateway unchanged.
//!
//! Owns: `X-MS-CLIENT-PRINCIPAL` (standard base64 of `{"auth_typ":"aad","claims":[{"typ","val"}],
//! "name_typ","role_typ"}` with the claim types App Service uses), `X-MS-CLIENT-PRINCIPAL-ID` (the
//! Entra object id), `-NAME` (the UPN or preferred username; an app caller's client id) and
//! `-IDP: aad`. Must not: decide who the caller is (see `access`) or strip anything (see
//! `identity`).

use base64::Engine;
use http::{HeaderName, HeaderValue};
use serde_json::json;

use super::{Who, encode};

pub static PRINCIPAL: HeaderName = HeaderName::from_static("x-ms-client-principal");
pub static PRINCIPAL_ID: HeaderName = HeaderName::from_static("x-ms-client-principal-id");
pub static PRINCIPAL_NAME: HeaderName = HeaderName::from_static("x-ms-client-principal-name");
pub static PRINCIPAL_IDP: HeaderName = HeaderName::from_static("x-ms-client-principal-idp");

const NAME_TYP: &str = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name";
const ROLE_TYP: &str = "http://schemas.microsoft.com/ws/2008/06/identity/claims/role";
const OID_TYP: &str = "http://schemas.microsoft.com/identity/claims/objectidentifier";
const TID_TYP: &str = "http://schemas.microsoft.com/identity/claims/tenantid";
const EMAIL_TYP: &str = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress";
const NAMEID_TYP: &str = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/nameidentifier";

/// The Easy Auth headers of a caller.
pub fn headers(who: &Who<'_>) -> Vec<(HeaderName, HeaderValue)> {
    let name =
        if who.is_app { who.client_id.unwrap_or_default() } else { who.username.or(who.email).unwrap_or(who.oid) };
    let mut claims = vec![
        json!({"typ": OID_TYP, "val": who.oid}),
        json!({"typ": TID_TYP, "val": who.tid}),
        json!({"typ": NAMEID_TYP, "val": who.user_id}),
        json!({"typ": NAME_TYP, "val": name}),
    ];
    if let Some(n) = who.display_name {
        claims.push(json!({"typ": "name", "val": n}));
    }
    if let Some(u) = who.username {
        claims.push(json!({"typ": "preferred_username", "val": u}));
    }
    if let Some(e) = who.email {
        claims.push(json!({"typ": EMAIL_TYP, "val": e}));
    }
    if let Some(c) = who.client_id {
        claims.push(json!({"typ": "appid", "val": c}));
    }
    claims.extend(who.groups.iter().map(|g| json!({"typ": "groups", "val": g})));
    claims.extend(who.roles.iter().map(|r| json!({"typ": ROLE_TYP, "val": r})));
    let principal = json!({"auth_typ": "aad", "claims": claims, "name_typ": NAME_TYP, "role_typ": ROLE_TYP});
    let b64 = base64::engine::general_purpose::STANDARD.encode(principal.to_string());
    vec![
        (PRINCIPAL.clone(), HeaderValue::from_str(&b64).unwrap_or(HeaderValue::from_static(""))),
        (PRINCIPAL_ID.clone(), encode(who.oid)),
        (PRINCIPAL_NAME.clone(), encode(name)),
        (PRINCIPAL_IDP.clone(), HeaderValue::from_static("aad")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_principal_is_base64_json_with_the_claim_types_app_service_uses() {
        let who = Who {
            is_app: false,
            user_id: "internal-1",
            oid: "oid-1",
            tid: "tid-1",
            email: Some("alice@contoso.example"),
            display_name: Some("Alice Jørgensen"),
            username: Some("alice@contoso.example"),
            client_id: None,
            groups: &["g1".to_string()],
            roles: &["admin".to_string(), "reader".to_string()],
        };
        let h = headers(&who);
        let get = |n: &HeaderName| h.iter().find(|(k, _)| k == n).unwrap().1.to_str().unwrap().to_string();
        assert_eq!(get(&PRINCIPAL_ID), "oid-1");
        assert_eq!(get(&PRINCIPAL_NAME), "alice@contoso.example");
        assert_eq!(get(&PRINCIPAL_IDP), "aad");
        let json: serde_json::Value =
            serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(get(&PRINCIPAL)).unwrap())
                .unwrap();
        assert_eq!(json["auth_typ"], "aad");
        assert_eq!(json["name_typ"], NAME_TYP);
        assert_eq!(json["role_typ"], ROLE_TYP);
        let claims = json["claims"].as_array().unwrap();
        let val = |typ: &str| {
            claims.iter().filter(|c| c["typ"] == typ).map(|c| c["val"].as_str().unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(val(OID_TYP), ["oid-1"]);
        assert_eq!(val(ROLE_TYP), ["admin", "reader"]);
        assert_eq!(val("name"), ["Alice Jørgensen"]);
    }
}
