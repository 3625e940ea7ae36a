//! A loopback mock of Entra ID and Microsoft Graph, for the tests and `entra-gateway demo`.
//!
//! Owns: OIDC metadata, a JWKS of real RSA keys with rotation, minting of v1 and v2 access
//! tokens with any claims (group overage via `_claim_names` or `hasgroups` included), the token
//! endpoint (client credentials and On-Behalf-Of, checking the client secret and the OBO
//! assertion's signature), Graph `users/{id}`, `me`, `checkMemberGroups` (at most 20 ids, as
//! Graph), `transitiveMemberOf` with `@odata.nextLink` paging, photos, and switches that make it
//! slow, fail, or answer 429 with `Retry-After`; and what MSAL.js needs of an authority
//! ([`msal`]: authorization code with PKCE, refresh tokens, logout, CORS). It counts every call
//! per endpoint.
//! Must not: be used by `serve`; it binds loopback only. Its keys (`src/mock/keys/`) are public
//! test keys.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::{Body, full};
use crate::clock::unix_now;

const KEY_PEMS: [&str; 3] = [
    include_str!("mock/keys/mock-rsa-1.pem"),
    include_str!("mock/keys/mock-rsa-2.pem"),
    include_str!("mock/keys/mock-rsa-3.pem"),
];

/// The mock's tenants and app registration (a multi-tenant app, consented in every tenant).
#[derive(Debug, Clone)]
pub struct MockSettings {
    /// The home tenant: users and tokens belong to it unless they say otherwise.
    pub tenant_id: String,
    /// Further tenants (partners, guests' home tenants) the mock serves.
    pub other_tenants: Vec<String>,
    pub client_id: String,
    pub client_secret: String,
}

/// A fictional tenant id (not anyone's real tenant).
pub const MOCK_TENANT: &str = "c0ffee00-0000-4000-8000-00000000a0a0";
/// A second fictional tenant, for multi-tenant set-ups.
pub const MOCK_PARTNER_TENANT: &str = "c0ffee00-0000-4000-8000-00000000b0b0";

impl Default for MockSettings {
    fn default() -> Self {
        MockSettings {
            tenant_id: MOCK_TENANT.into(),
            other_tenants: vec![MOCK_PARTNER_TENANT.into()],
            client_id: "6e1f3c2a-4b5d-4e6f-8a7b-9c0d1e2f3a4b".into(),
            client_secret: "mock-client-secret".into(),
        }
    }
}

impl MockSettings {
    fn knows_tenant(&self, tid: &str) -> bool {
        self.tenant_id.eq_ignore_ascii_case(tid) || self.other_tenants.iter().any(|t| t.eq_ignore_ascii_case(tid))
    }
}

/// A user of the mock directory.
#[derive(Debug, Clone, Default)]
pub struct MockUser {
    /// Short name used by `/mock/token {"user": ...}` (the demo's curl lines).
    pub login: String,
    pub oid: String,
    pub display_name: Option<String>,
    pub mail: Option<String>,
    pub user_principal_name: Option<String>,
    pub given_name: Option<String>,
    pub surname: Option<String>,
    pub job_title: Option<String>,
    pub department: Option<String>,
    /// Direct group memberships; nesting comes from [`MockState::nest_group`].
    pub groups: Vec<String>,
    pub photo: Option<(String, Bytes)>,
    /// The user's home tenant; `None`: the mock's home tenant.
    pub tenant: Option<String>,
}

/// What a minted token says. Unset fields take the mock's defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenSpec {
    /// A `login` of a mock user: fills oid, name, username, email and (unless `groups`,
    /// `overage` or `hasgroups` is set) the `groups` claim with the user's transitive groups.
    pub user: Option<String>,
    pub oid: Option<String>,
    /// 1 or 2 (default 2).
    pub version: Option<u8>,
    pub tid: Option<String>,
    /// Default `api://{client_id}`.
    pub aud: Option<String>,
    pub iss: Option<String>,
    pub name: Option<String>,
    pub username: Option<String>,
    pub email: Option<String>,
    /// The `groups` claim; `None` leaves it out.
    pub groups: Option<Vec<String>>,
    /// Group overage the JWT way: `_claim_names.groups` + `_claim_sources`.
    pub overage: bool,
    /// Group overage the implicit-flow way: `hasgroups: true`.
    pub hasgroups: bool,
    /// Seconds from now to `exp` (default 3600; negative for an expired token).
    pub expires_in: Option<i64>,
    /// Seconds from now to `nbf` (default 0).
    pub not_before_in: Option<i64>,
    /// Header `kid` override (an unknown kid).
    pub kid: Option<String>,
    /// Any further claims (a `null` value removes a default claim, e.g. `scp`).
    pub extra: Option<serde_json::Map<String, Value>>,
    /// Sign with this key (a kid of [`MockState::publish_tenant_key`]) instead of the current one.
    pub signing_kid: Option<String>,
}

struct MockKey {
    /// `None`: a key of every tenant (JWKS `issuer` with `{tenantid}`); `Some(tid)`: of one.
    tenant: Option<String>,
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    n: String,
    e: String,
}

struct KeyState {
    keys: Vec<MockKey>,
    signing: usize,
    /// How many of the shared keys are published (rotation publishes the next one).
    published: usize,
}

impl KeyState {
    /// The keys in the JWKS: the published shared ones and every tenant-specific one.
    fn published(&self) -> impl Iterator<Item = &MockKey> {
        self.keys.iter().enumerate().filter(|(i, k)| k.tenant.is_some() || *i < self.published).map(|(_, k)| k)
    }
}

#[derive(Default)]
struct Faults {
    graph_status: Option<u16>,
    throttle_remaining: u32,
    retry_after: String,
    delay: Duration,
    fail_page: Option<usize>,
    jwks_status: Option<u16>,
}

/// Who a Graph token was issued to, and at which tenant's token endpoint.
#[derive(Clone)]
enum Principal {
    App { tenant: String },
    User { oid: String, tenant: String },
}

impl Principal {
    fn tenant(&self) -> &str {
        match self {
            Principal::App { tenant } | Principal::User { tenant, .. } => tenant,
        }
    }
}

/// The mock's state: its directory, keys, fault switches and call counters.
pub struct MockState {
    settings: MockSettings,
    base: Mutex<String>,
    // std Mutexes: short, synchronous sections only.
    keys: Mutex<KeyState>,
    users: Mutex<HashMap<String, MockUser>>,
    nesting: Mutex<HashMap<String, Vec<String>>>,
    faults: Mutex<Faults>,
    page_size: Mutex<usize>,
    calls: Mutex<HashMap<String, u64>>,
    /// When each call arrived, per endpoint (back-off tests read the gaps).
    call_times: Mutex<HashMap<String, Vec<std::time::Instant>>>,
    graph_tokens: Mutex<HashMap<String, Principal>>,
    /// Authorization codes waiting to be redeemed, and refresh tokens (MSAL.js flows).
    auth_codes: Mutex<HashMap<String, msal::AuthCode>>,
    refresh_tokens: Mutex<HashMap<String, msal::Session>>,
    /// Certificates registered on the app: `x5t#S256` -> public key.
    certificates: Mutex<HashMap<String, DecodingKey>>,
    /// What the delta queries read: the directory's changes and their switches.
    delta: Mutex<delta::DeltaLog>,
}

/// Audience of Kubernetes federated tokens exchanged with Entra (workload identity).
pub const FEDERATION_AUDIENCE: &str = "api://AzureADTokenExchange";
const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A running mock.
pub struct MockEntra {
    addr: SocketAddr,
    state: Arc<MockState>,
    stop: watch::Sender<bool>,
}

impl Drop for MockEntra {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl MockEntra {
    /// Starts the mock on a free loopback port.
    pub async fn start(settings: MockSettings) -> std::io::Result<MockEntra> {
        MockEntra::start_on(settings, "127.0.0.1:0").await
    }

    pub async fn start_on(settings: MockSettings, addr: &str) -> std::io::Result<MockEntra> {
        MockEntra::start_with(settings, addr, None).await
    }

    /// Starts the mock over HTTPS (`https://localhost:port`) with this certificate and key
    /// (PEM), for tests of outbound TLS trust.
    pub async fn start_tls(settings: MockSettings, cert_pem: &str, key_pem: &str) -> std::io::Result<MockEntra> {
        use rustls::pki_types::pem::PemObject;
        let bad = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| bad(e.to_string()))?;
        MockEntra::start_with(settings, "127.0.0.1:0", Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))).await
    }

    async fn start_with(
        settings: MockSettings,
        addr: &str,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> std::io::Result<MockEntra> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let base = match tls {
            Some(_) => format!("https://localhost:{}", addr.port()),
            None => format!("http://{addr}"),
        };
        let state = Arc::new(MockState::new(settings, base));
        let (stop, stop_rx) = watch::channel(false);
        let handler_state = state.clone();
        tokio::spawn(crate::server::serve(
            listener,
            tls,
            stop_rx,
            crate::server::ConnLimits::short(),
            move |req, _| {
                let state = handler_state.clone();
                async move { state.handle(req).await }
            },
        ));
        Ok(MockEntra { addr, state, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `entra.authority_host` for a gateway using this mock.
    pub fn authority_host(&self) -> String {
        self.state.base()
    }

    /// `entra.graph_url` for a gateway using this mock.
    pub fn graph_url(&self) -> String {
        format!("{}/graph/v1.0", self.state.base())
    }

    pub fn state(&self) -> &Arc<MockState> {
        &self.state
    }

    pub fn settings(&self) -> &MockSettings {
        &self.state.settings
    }

    /// Mints an access token signed by the current signing key.
    pub fn mint(&self, spec: &TokenSpec) -> String {
        self.state.mint(spec)
    }
}

fn load_keys() -> Vec<MockKey> {
    KEY_PEMS
        .iter()
        .enumerate()
        .map(|(i, pem)| {
            let encoding = EncodingKey::from_rsa_pem(pem.as_bytes()).expect("embedded mock key is valid");
            let jwk = Jwk::from_encoding_key(&encoding, Algorithm::RS256).expect("embedded mock key is RSA");
            let AlgorithmParameters::RSA(rsa) = &jwk.algorithm else { unreachable!("RSA key") };
            let decoding = DecodingKey::from_rsa_components(&rsa.n, &rsa.e).expect("valid components");
            MockKey {
                tenant: None,
                kid: format!("mock-key-{}", i + 1),
                encoding,
                decoding,
                n: rsa.n.clone(),
                e: rsa.e.clone(),
            }
        })
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

mod control;
pub mod delta;
mod endpoints;
pub mod msal;
