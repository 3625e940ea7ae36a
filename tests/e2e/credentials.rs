//! Graph credentials without a long-lived secret: AKS workload identity (the federated token
//! file as `client_assertion`) and a certificate (a signed `client_assertion`), against the
//! mock token endpoint, which verifies both.

use crate::support::*;
use base64::Engine;
use entra_gateway::config::SigningAlgorithm;
use jsonwebtoken::jwk::Jwk;
use sha2::Digest;

fn write(dir: &std::path::Path, name: &str, body: &str) -> String {
    let tmp = dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, body).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
    dir.join(name).display().to_string()
}

#[tokio::test]
async fn workload_identity_sends_the_federated_token_and_rereads_the_file_each_time() {
    let mock = mock().await;
    let builder = GatewayBuilder::new(&mock);
    let dir = builder.dir_path().to_path_buf();
    let file = write(
        &dir,
        "azure-identity-token",
        &mock.state().mint_federated_token("system:serviceaccount:auth:entra-gateway"),
    );
    // The client secret file holds a wrong secret: only the federated token can work.
    let wrong = write(&dir, "wrong-secret", "not-the-secret");
    let gw = builder
        .set("ENTRA__CLIENT_CREDENTIAL", "workload_identity")
        .set("ENTRA__FEDERATED_TOKEN_FILE", file)
        .set("ENTRA__CLIENT_SECRET_FILE", wrong)
        .set("ENTRA__GRAPH_MODE", "obo")
        .start()
        .await;
    let (status, _, body) = exchange(&gw, &overage_token_for(&mock, "bob")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(mock.state().calls("token_obo"), 1);

    // The kubelet rotates the file; a token of another audience is refused by Entra -> 503.
    let claims = serde_json::json!({"aud": "someone-else", "exp": entra_gateway::clock::unix_now() + 60});
    let foreign =
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &jsonwebtoken::EncodingKey::from_secret(b"x"))
            .unwrap();
    write(&dir, "azure-identity-token", &foreign);
    assert_eq!(exchange(&gw, &overage_token_for(&mock, "dave")).await.0, 503);
    write(&dir, "azure-identity-token", &mock.state().mint_federated_token("system:serviceaccount:auth:entra-gateway"));
    assert_eq!(exchange(&gw, &overage_token_for(&mock, "dave")).await.0, 200, "the new file is read");
}

/// A certificate for the app's RSA key, and what Entra knows of it (thumbprint, public key).
fn certificate() -> (String, String, String, jsonwebtoken::DecodingKey) {
    let key_pem = entra_gateway::keys::generate_pem(SigningAlgorithm::RS256).unwrap();
    let key = rcgen::KeyPair::from_pem(&key_pem).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "entra-gateway client");
    let cert = params.self_signed(&key).unwrap();
    let x5t = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(cert.der()));
    let enc = jsonwebtoken::EncodingKey::from_rsa_pem(key_pem.as_bytes()).unwrap();
    let public =
        jsonwebtoken::DecodingKey::from_jwk(&Jwk::from_encoding_key(&enc, jsonwebtoken::Algorithm::RS256).unwrap())
            .unwrap();
    (cert.pem(), key_pem, x5t, public)
}

#[tokio::test]
async fn a_certificate_credential_signs_a_client_assertion_entra_accepts() {
    let mock = mock().await;
    let (cert, key, x5t, public) = certificate();
    mock.state().register_certificate(&x5t, public);
    let builder = GatewayBuilder::new(&mock);
    let dir = builder.dir_path().to_path_buf();
    let (cert_file, key_file) = (write(&dir, "client.crt", &cert), write(&dir, "client.key", &key));
    let gw = builder
        .set("ENTRA__CLIENT_CREDENTIAL", "certificate")
        .set("ENTRA__CLIENT_CERTIFICATE_FILE", cert_file)
        .set("ENTRA__CLIENT_CERTIFICATE_KEY_FILE", key_file)
        .set("ENTRA__CLIENT_SECRET_FILE", write(&dir, "wrong-secret", "not-the-secret"))
        .start()
        .await;
    let (status, _, body) = exchange(&gw, &overage_token_for(&mock, "bob")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(mock.state().calls("token_app"), 1);

    // A certificate Entra does not know: the token endpoint refuses, the exchange fails closed.
    let (cert2, key2, _, _) = certificate();
    let builder = GatewayBuilder::new(&mock);
    let dir = builder.dir_path().to_path_buf();
    let gw = builder
        .set("ENTRA__CLIENT_CREDENTIAL", "certificate")
        .set("ENTRA__CLIENT_CERTIFICATE_FILE", write(&dir, "client.crt", &cert2))
        .set("ENTRA__CLIENT_CERTIFICATE_KEY_FILE", write(&dir, "client.key", &key2))
        .start()
        .await;
    assert_eq!(exchange(&gw, &overage_token_for(&mock, "dave")).await.0, 503);
}
