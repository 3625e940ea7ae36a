//! Unit tests.

use super::*;

fn b64(v: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[test]
fn header_check_refuses_none_and_hmac_and_needs_a_kid() {
    let body = b64(&serde_json::json!({}));
    let tok = |h: serde_json::Value| format!("{}.{body}.sig", b64(&h));
    let header = |t: &str| Compact::split(t).and_then(|c| check_header(c.header));
    assert_eq!(header(&tok(serde_json::json!({"alg":"none","kid":"k"}))), Err(EntraError::UnsupportedAlgorithm));
    assert_eq!(header(&tok(serde_json::json!({"alg":"HS256","kid":"k"}))), Err(EntraError::UnsupportedAlgorithm));
    assert_eq!(header(&tok(serde_json::json!({"alg":"RS256"}))), Err(EntraError::MissingKid));
    assert_eq!(header(&tok(serde_json::json!({"alg":"RS256","kid":"k"}))), Ok("k".into()));
    assert_eq!(header("a.b"), Err(EntraError::Malformed));
    assert_eq!(header("a.b.c.d"), Err(EntraError::Malformed));
    assert_eq!(header("!!.b.c"), Err(EntraError::Malformed));
}

#[test]
fn registered_claims_are_checked_with_leeway_and_in_order() {
    let aud = vec!["api://x".to_string()];
    let check = |v: serde_json::Value| {
        serde_json::from_value::<EntraClaims>(v).unwrap().check_registered("https://iss/", &aud, 60, 1_000_000)
    };
    let ok = serde_json::json!({"exp": 1_000_100, "iss": "https://iss/", "aud": "api://x"});
    assert_eq!(check(ok.clone()), Ok(()));
    let with = |k: &str, v: serde_json::Value| {
        let mut c = ok.clone();
        c[k] = v;
        c
    };
    let without = |k: &str| {
        let mut c = ok.clone();
        c.as_object_mut().unwrap().remove(k);
        c
    };
    assert_eq!(check(without("exp")), Err(EntraError::MissingClaim("exp")));
    assert_eq!(check(without("iss")), Err(EntraError::MissingClaim("iss")));
    assert_eq!(check(without("aud")), Err(EntraError::MissingClaim("aud")));
    assert_eq!(check(with("exp", 999_940.into())), Ok(()), "within the leeway");
    assert_eq!(check(with("exp", 999_939.into())), Err(EntraError::Expired));
    assert_eq!(check(with("nbf", 1_000_060.into())), Ok(()), "within the leeway");
    assert_eq!(check(with("nbf", 1_000_061.into())), Err(EntraError::NotYetValid));
    assert_eq!(check(with("iss", "https://iss".into())), Err(EntraError::WrongIssuer));
    assert_eq!(check(with("aud", "api://y".into())), Err(EntraError::WrongAudience));
    assert_eq!(check(with("aud", serde_json::json!(["api://y", "api://x"]))), Ok(()), "one of a list");
    assert_eq!(check(with("aud", serde_json::json!([5]))), Err(EntraError::WrongAudience));
    assert_eq!(
        check(serde_json::json!({"exp": 1, "iss": "other", "aud": "api://y"})),
        Err(EntraError::Expired),
        "expiry is reported first"
    );
}

#[test]
fn overage_is_detected_from_claim_names_and_hasgroups() {
    let parse = |v: serde_json::Value| serde_json::from_value::<EntraClaims>(v).unwrap().groups_claim();
    assert_eq!(parse(serde_json::json!({"_claim_names": {"groups": "src1"}})), GroupsClaim::Overage);
    assert_eq!(parse(serde_json::json!({"hasgroups": true})), GroupsClaim::Overage);
    assert_eq!(parse(serde_json::json!({})), GroupsClaim::Absent);
    assert_eq!(
        parse(serde_json::json!({"groups": ["A"]})),
        GroupsClaim::Complete(["a".to_string()].into_iter().collect())
    );
}

fn validator(extra_entra: &str) -> EntraValidator {
    let yaml = format!(
        "entra:\n  tenants: [\"11111111-1111-1111-1111-111111111111\"]\n  \
         client_id: \"22222222-2222-2222-2222-222222222222\"\n  graph_mode: claims\n{extra_entra}\
         authorization:\n  allow_any_tenant_user: true\n\
         issuer:\n  issuer: https://gw.example\n  signing_keys: [{{ kid: k1, private_key_file: /x.pem }}]\n"
    );
    let raw = crate::config::check_yaml(&yaml, &Vec::new(), crate::config::FileChecks::Skip).unwrap();
    let cfg = crate::config::entra_settings(&raw.entra).expect("a valid entra section");
    struct NoKeys;
    #[async_trait::async_trait]
    impl jwks::KeySource for NoKeys {
        async fn fetch(&self, _: &str, _: Option<&str>) -> Result<std::sync::Arc<jwks::KeySet>, String> {
            Err("none".into())
        }
    }
    let d = std::time::Duration::from_secs(3600);
    let jwks = JwksCache::with_source(std::sync::Arc::new(NoKeys), d, d, crate::metrics::Metrics::new());
    EntraValidator::new(&cfg, jwks)
}

fn classify(v: &EntraValidator, claims: serde_json::Value) -> Result<Validated, EntraError> {
    v.classify(serde_json::from_value(claims).unwrap(), "t".into(), 2)
}

#[test]
fn token_types_are_decided_as_microsoft_identity_web_does() {
    let v = validator("");
    let user = classify(&v, serde_json::json!({"scp": "access_as_user", "oid": "o", "sub": "s"}));
    assert!(matches!(user, Ok(Validated::User(_))));
    for app in [
        serde_json::json!({"roles": ["Orders.Read"], "oid": "o", "sub": "o", "azp": "c"}),
        serde_json::json!({"roles": ["Orders.Read"], "oid": "o", "sub": "x", "appid": "c"}),
        serde_json::json!({"idtyp": "app", "scp": "x", "oid": "o", "sub": "s", "azp": "c"}),
        serde_json::json!({"oid": "o", "sub": "o", "azp": "c"}),
    ] {
        let got = classify(&v, app.clone());
        assert!(matches!(&got, Ok(Validated::App(a)) if a.client_id == "c"), "{app}: {got:?}");
    }
    let id_token = classify(&v, serde_json::json!({"nonce": "n", "oid": "o", "sub": "s", "scp": "x"}));
    assert!(matches!(&id_token, Err(EntraError::NotAnAccessToken(d)) if d.contains("ID token")), "{id_token:?}");
    let neither = classify(&v, serde_json::json!({"oid": "o", "sub": "s"}));
    assert!(matches!(&neither, Err(EntraError::NotAnAccessToken(d)) if d.contains("api://22222222")));
    let blank = classify(&v, serde_json::json!({"scp": " ", "oid": "o", "sub": "s"}));
    assert!(matches!(blank, Err(EntraError::NotAnAccessToken(_))), "an empty scp is no scope");
    let no_client = classify(&v, serde_json::json!({"roles": ["R"], "oid": "o", "sub": "o"}));
    assert_eq!(no_client, Err(EntraError::MissingClaim("azp")));
}

#[test]
fn required_scopes_need_one_of_them_in_scp() {
    let v = validator("  required_scopes: [access_as_user, admin.all]\n");
    let ok = classify(&v, serde_json::json!({"scp": "User.Read access_as_user", "oid": "o", "sub": "s"}));
    assert!(matches!(ok, Ok(Validated::User(_))));
    let missing = classify(&v, serde_json::json!({"scp": "User.Read access_as_userx", "oid": "o", "sub": "s"}));
    assert!(
        matches!(&missing, Err(EntraError::MissingScope(d)) if d.contains("api://22222222-2222-2222-2222-222222222222/access_as_user")),
        "{missing:?}"
    );
}

#[test]
fn a_signing_key_verifies_only_for_the_tenant_its_issuer_names() {
    let v = validator("");
    let key = |issuer: Option<&str>| issuer.map(str::to_string);
    let t = "11111111-1111-1111-1111-111111111111";
    let shared = key(Some("https://login.microsoftonline.com/{tenantid}/v2.0"));
    assert_eq!(v.check_key_issuer(shared.as_deref(), t, &v.expected_issuer(2, t)), Ok(()));
    assert_eq!(v.check_key_issuer(shared.as_deref(), t, &v.expected_issuer(1, t)), Ok(()), "v1 tokens, v2 key issuers");
    let other = key(Some("https://login.microsoftonline.com/99999999-9999-9999-9999-999999999999/v2.0"));
    assert_eq!(v.check_key_issuer(other.as_deref(), t, &v.expected_issuer(2, t)), Err(EntraError::KeyOfAnotherTenant));
    assert_eq!(v.check_key_issuer(other.as_deref(), t, &v.expected_issuer(1, t)), Err(EntraError::KeyOfAnotherTenant));
    let own = key(Some(&format!("https://login.microsoftonline.com/{t}/v2.0")));
    assert_eq!(v.check_key_issuer(own.as_deref(), t, &v.expected_issuer(2, t)), Ok(()));
    assert_eq!(v.check_key_issuer(key(None).as_deref(), t, &v.expected_issuer(2, t)), Ok(()), "no issuer: no check");
}

#[test]
fn cloud_presets_set_the_issuers_and_explicit_hosts_win() {
    let t = "11111111-1111-1111-1111-111111111111";
    let china = validator("  cloud: china\n");
    assert_eq!(china.expected_issuer(1, t), format!("https://sts.chinacloudapi.cn/{t}/"));
    assert_eq!(china.expected_issuer(2, t), format!("https://login.chinacloudapi.cn/{t}/v2.0"));
    let usgov = validator("  cloud: usgov\n");
    assert_eq!(usgov.expected_issuer(2, t), format!("https://login.microsoftonline.us/{t}/v2.0"));
    let custom = validator("  cloud: usgov\n  authority_host: https://login.example\n");
    assert_eq!(custom.expected_issuer(2, t), format!("https://login.example/{t}/v2.0"));
    assert_eq!(validator("").expected_issuer(1, t), format!("https://sts.windows.net/{t}/"));
}

#[test]
fn graph_audiences_are_recognised() {
    let c: EntraClaims =
        serde_json::from_value(serde_json::json!({"aud": "00000003-0000-0000-c000-000000000000"})).unwrap();
    assert!(c.is_graph_audience());
    let c: EntraClaims = serde_json::from_value(serde_json::json!({"aud": "api://x"})).unwrap();
    assert!(!c.is_graph_audience());
}
