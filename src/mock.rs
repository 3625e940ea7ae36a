//! A loopback mock of Entra ID and Microsoft Graph, for the tests and `entra-gateway demo`.
//!
//! Owns: OIDC metadata, a JWKS of real RSA keys with rotation, minting of v1 and v2 access
//! tokens with any claims (group overage via `_claim_names` or `hasgroups` included), the token
//! endpoint (client credentials and On-Behalf-Of, checking the client secret and the OBO
//! assertion's signature), Graph `users/{id}`, `me`, `checkMemberGroups` (at most 20 ids, as
//! Graph), `transitiveMemberOf` with `@odata.nextLink` paging, photos, and switches that make it
//! slow, fail, or answer 429 with `Retry-After`. It counts every call per endpoint.
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
    graph_tokens: Mutex<HashMap<String, Principal>>,
    /// Certificates registered on the app: `x5t#S256` -> public key.
    certificates: Mutex<HashMap<String, DecodingKey>>,
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

// === impl MockState: controls used by tests and the demo ===

impl MockState {
    fn new(settings: MockSettings, base: String) -> MockState {
        MockState {
            settings,
            base: Mutex::new(base),
            keys: Mutex::new(KeyState { keys: load_keys(), signing: 0, published: 1 }),
            users: Mutex::default(),
            nesting: Mutex::default(),
            faults: Mutex::default(),
            page_size: Mutex::new(100),
            calls: Mutex::default(),
            graph_tokens: Mutex::default(),
            certificates: Mutex::default(),
        }
    }

    fn base(&self) -> String {
        lock(&self.base).clone()
    }

    pub fn add_user(&self, user: MockUser) {
        lock(&self.users).insert(user.oid.to_ascii_lowercase(), user);
    }

    /// Changes a user's display name (a later sign-in should update the record).
    pub fn set_display_name(&self, oid: &str, name: &str) {
        if let Some(u) = lock(&self.users).get_mut(&oid.to_ascii_lowercase()) {
            u.display_name = Some(name.to_string());
        }
    }

    /// Makes `child` a member of `parent` (nested groups).
    pub fn nest_group(&self, child: &str, parent: &str) {
        lock(&self.nesting).entry(child.to_ascii_lowercase()).or_default().push(parent.to_ascii_lowercase());
    }

    /// Publishes the next key and signs with it from now on; returns its kid.
    pub fn rotate_signing_key(&self) -> String {
        let mut k = lock(&self.keys);
        k.signing = (k.signing + 1).min(KEY_PEMS.len() - 1);
        k.published = k.published.max(k.signing + 1);
        k.keys[k.signing].kid.clone()
    }

    /// Publishes a new RSA key that belongs to tenant `tid` alone (JWKS `issuer` naming that
    /// tenant, as Entra publishes tenant-specific keys) in every tenant's JWKS; returns its kid.
    /// Sign with it through [`TokenSpec::signing_kid`].
    pub fn publish_tenant_key(&self, tid: &str) -> String {
        let pem = crate::keys::generate_pem(crate::config::SigningAlgorithm::RS256).expect("RSA key");
        let encoding = EncodingKey::from_rsa_pem(pem.as_bytes()).expect("generated key is valid");
        let jwk = Jwk::from_encoding_key(&encoding, Algorithm::RS256).expect("RSA key");
        let AlgorithmParameters::RSA(rsa) = &jwk.algorithm else { unreachable!("RSA key") };
        let decoding = DecodingKey::from_rsa_components(&rsa.n, &rsa.e).expect("valid components");
        let mut k = lock(&self.keys);
        let kid = format!("mock-tenant-key-{}", k.keys.len() + 1);
        k.keys.push(MockKey {
            tenant: Some(tid.to_string()),
            kid: kid.clone(),
            encoding,
            decoding,
            n: rsa.n.clone(),
            e: rsa.e.clone(),
        });
        kid
    }

    /// The kid new tokens are signed with.
    pub fn signing_kid(&self) -> String {
        let k = lock(&self.keys);
        k.keys[k.signing].kid.clone()
    }

    /// Every Graph call answers this status (None: normal).
    pub fn set_graph_status(&self, status: Option<u16>) {
        lock(&self.faults).graph_status = status;
    }

    /// The next `count` Graph calls answer 429 with `Retry-After: retry_after_secs`.
    pub fn throttle_graph(&self, count: u32, retry_after_secs: u64) {
        self.throttle_graph_with(count, &retry_after_secs.to_string());
    }

    /// The next `count` Graph calls answer 429 with this `Retry-After` value (seconds, a
    /// fraction, or an HTTP-date).
    pub fn throttle_graph_with(&self, count: u32, retry_after: &str) {
        let mut f = lock(&self.faults);
        f.throttle_remaining = count;
        f.retry_after = retry_after.to_string();
    }

    /// Every Graph call waits this long first.
    pub fn set_graph_delay(&self, delay: Duration) {
        lock(&self.faults).delay = delay;
    }

    /// `transitiveMemberOf` page `index` (0-based) answers 500.
    pub fn fail_page(&self, index: Option<usize>) {
        lock(&self.faults).fail_page = index;
    }

    /// The JWKS endpoint answers this status (None: normal).
    pub fn set_jwks_status(&self, status: Option<u16>) {
        lock(&self.faults).jwks_status = status;
    }

    /// Items per `transitiveMemberOf` page.
    pub fn set_page_size(&self, size: usize) {
        *lock(&self.page_size) = size.max(1);
    }

    /// Calls received on `endpoint` (`jwks`, `openid`, `token_app`, `token_obo`, `profile`,
    /// `checkMemberGroups`, `transitiveMemberOf`, `photo`).
    pub fn calls(&self, endpoint: &str) -> u64 {
        lock(&self.calls).get(endpoint).copied().unwrap_or(0)
    }

    /// Calls to Graph group endpoints (either lookup).
    pub fn group_calls(&self) -> u64 {
        self.calls("checkMemberGroups") + self.calls("transitiveMemberOf")
    }

    fn count(&self, endpoint: &str) {
        *lock(&self.calls).entry(endpoint.to_string()).or_default() += 1;
    }

    /// A Kubernetes service-account token as the AKS OIDC issuer would mint it for workload
    /// identity (audience `api://AzureADTokenExchange`), signed by the mock's current key.
    pub fn mint_federated_token(&self, subject: &str) -> String {
        let now = unix_now();
        let claims = json!({
            "iss": format!("{}/federation", self.base()), "aud": [FEDERATION_AUDIENCE], "sub": subject,
            "iat": now, "nbf": now, "exp": now + 3600,
        });
        let keys = lock(&self.keys);
        let key = &keys.keys[keys.signing];
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, &claims, &key.encoding).expect("mock signing works")
    }

    /// Registers a certificate on the app: its `x5t#S256` thumbprint and public key.
    pub fn register_certificate(&self, x5t_s256: &str, public_key: DecodingKey) {
        lock(&self.certificates).insert(x5t_s256.to_string(), public_key);
    }

    /// Mints an access token as Entra would.
    pub fn mint(&self, spec: &TokenSpec) -> String {
        let s = &self.settings;
        let user = spec.user.as_ref().and_then(|login| lock(&self.users).values().find(|u| &u.login == login).cloned());
        let oid = spec
            .oid
            .clone()
            .or_else(|| user.as_ref().map(|u| u.oid.clone()))
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let tid = spec
            .tid
            .clone()
            .or_else(|| user.as_ref().and_then(|u| u.tenant.clone()))
            .unwrap_or_else(|| s.tenant_id.clone());
        let version = spec.version.unwrap_or(2);
        let now = unix_now() as i64;
        let mut c = serde_json::Map::new();
        let iss = spec.iss.clone().unwrap_or_else(|| match version {
            1 => format!("https://sts.windows.net/{tid}/"),
            _ => format!("{}/{tid}/v2.0", self.base()),
        });
        c.insert("aud".into(), json!(spec.aud.clone().unwrap_or_else(|| format!("api://{}", s.client_id))));
        c.insert("iss".into(), json!(iss));
        c.insert("iat".into(), json!(now));
        c.insert("nbf".into(), json!(now + spec.not_before_in.unwrap_or(0)));
        c.insert("exp".into(), json!(now + spec.expires_in.unwrap_or(3600)));
        c.insert("tid".into(), json!(tid));
        c.insert("oid".into(), json!(oid));
        c.insert("sub".into(), json!(format!("sub-{oid}")));
        c.insert("ver".into(), json!(if version == 1 { "1.0" } else { "2.0" }));
        c.insert("scp".into(), json!("access_as_user"));
        let name = spec.name.clone().or_else(|| user.as_ref().and_then(|u| u.display_name.clone()));
        let username = spec.username.clone().or_else(|| user.as_ref().and_then(|u| u.user_principal_name.clone()));
        if let Some(n) = name {
            c.insert("name".into(), json!(n));
        }
        if let Some(u) = username {
            if version == 1 {
                c.insert("upn".into(), json!(u));
                c.insert("unique_name".into(), json!(u));
            } else {
                c.insert("preferred_username".into(), json!(u));
            }
        }
        if let Some(e) = spec.email.clone().or_else(|| user.as_ref().and_then(|u| u.mail.clone())) {
            c.insert("email".into(), json!(e));
        }
        let user_groups = match (&user, spec.overage || spec.hasgroups) {
            (Some(u), false) => Some(self.transitive_groups(u).into_iter().collect::<Vec<_>>()),
            _ => None,
        };
        if let Some(g) = spec.groups.clone().or(user_groups) {
            c.insert("groups".into(), json!(g));
        }
        if spec.overage {
            c.insert("_claim_names".into(), json!({"groups": "src1"}));
            c.insert(
                "_claim_sources".into(),
                json!({"src1": {"endpoint": format!("https://graph.windows.net/{tid}/users/{oid}/getMemberObjects")}}),
            );
        }
        if spec.hasgroups {
            c.insert("hasgroups".into(), json!(true));
        }
        for (k, v) in spec.extra.clone().unwrap_or_default() {
            if v.is_null() {
                c.remove(&k);
            } else {
                c.insert(k, v);
            }
        }
        let keys = lock(&self.keys);
        let key = match &spec.signing_kid {
            Some(kid) => keys.keys.iter().find(|k| &k.kid == kid).expect("a published kid"),
            None => &keys.keys[keys.signing],
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(spec.kid.clone().unwrap_or_else(|| key.kid.clone()));
        jsonwebtoken::encode(&header, &Value::Object(c), &key.encoding).expect("mock signing works")
    }
}

// === impl MockState: HTTP ===

fn reply(status: StatusCode, body: Value) -> Response<Body> {
    let mut r = Response::new(full(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    r
}

fn graph_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    reply(status, json!({"error": {"code": code, "message": message}}))
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned().collect()
}

impl MockState {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (req.method().clone(), segs.as_slice()) {
            (Method::GET, [tenant, "v2.0", ".well-known", "openid-configuration"]) => self.openid(tenant),
            (Method::GET, [_, "discovery", "v2.0", "keys"] | [_, "discovery", "keys"]) => self.jwks(),
            (Method::POST, [_, "oauth2", "v2.0", "token"]) => self.token(req).await,
            (_, ["graph", "v1.0", rest @ ..]) => {
                let rest: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
                self.graph(req, &rest).await
            }
            (Method::POST, ["mock", "token"]) => self.mint_endpoint(req).await,
            (Method::GET, ["mock", "calls"]) => reply(StatusCode::OK, json!(*lock(&self.calls))),
            _ => graph_error(StatusCode::NOT_FOUND, "NotFound", "no such mock endpoint"),
        }
    }

    fn openid(&self, tenant: &str) -> Response<Body> {
        self.count("openid");
        let base = self.base();
        reply(
            StatusCode::OK,
            json!({
                "issuer": format!("{base}/{tenant}/v2.0"),
                "jwks_uri": format!("{base}/{tenant}/discovery/v2.0/keys"),
                "token_endpoint": format!("{base}/{tenant}/oauth2/v2.0/token"),
                "id_token_signing_alg_values_supported": ["RS256"],
            }),
        )
    }

    fn jwks(&self) -> Response<Body> {
        self.count("jwks");
        if let Some(s) = lock(&self.faults).jwks_status {
            return reply(
                StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                json!({"error": "mock failure"}),
            );
        }
        let keys = lock(&self.keys);
        let base = self.base();
        // One document for every tenant path, as an independent implementation may serve it:
        // the gateway must check each key's `issuer` against the token's.
        let list: Vec<Value> = keys
            .published()
            .map(|k| {
                let issuer = format!("{base}/{}/v2.0", k.tenant.as_deref().unwrap_or("{tenantid}"));
                json!({"kty": "RSA", "use": "sig", "kid": k.kid, "x5t": k.kid, "n": k.n, "e": k.e, "issuer": issuer})
            })
            .collect();
        reply(StatusCode::OK, json!({"keys": list}))
    }

    async fn token(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let body = match Limited::new(req.into_body(), 1 << 20).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return reply(StatusCode::BAD_REQUEST, json!({"error": "invalid_request"})),
        };
        let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
        let grant = form.get("grant_type").map(String::as_str).unwrap_or("");
        let endpoint = if grant == "client_credentials" { "token_app" } else { "token_obo" };
        let tenant = path.trim_start_matches('/').split('/').next().unwrap_or_default().to_ascii_lowercase();
        self.count(endpoint);
        self.count(&format!("{endpoint}:{tenant}"));
        if !self.settings.knows_tenant(&tenant) {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid_request", "error_description": "AADSTS90002: Tenant not found.", "error_codes": [90002]}),
            );
        }
        let token_url = format!("{}{path}", self.base());
        if !self.client_authenticated(&form, &token_url) {
            return reply(
                StatusCode::UNAUTHORIZED,
                json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided.", "error_codes": [7000215]}),
            );
        }
        if !form.get("scope").is_some_and(|sc| sc.ends_with("/.default")) {
            return reply(StatusCode::BAD_REQUEST, json!({"error": "invalid_scope", "error_codes": [70011]}));
        }
        let principal = match grant {
            "client_credentials" => Principal::App { tenant },
            "urn:ietf:params:oauth:grant-type:jwt-bearer" => {
                if form.get("requested_token_use").map(String::as_str) != Some("on_behalf_of") {
                    return reply(StatusCode::BAD_REQUEST, json!({"error": "invalid_request"}));
                }
                // The assertion must come from the tenant whose endpoint is asked (Entra refuses
                // an OBO for a user of another tenant at this one).
                match self.check_assertion(form.get("assertion").map(String::as_str).unwrap_or("")) {
                    Some((oid, tid)) if tid == tenant => Principal::User { oid, tenant },
                    _ => {
                        return reply(
                            StatusCode::BAD_REQUEST,
                            json!({"error": "invalid_grant", "error_codes": [50013]}),
                        );
                    }
                }
            }
            _ => {
                return reply(StatusCode::BAD_REQUEST, json!({"error": "unsupported_grant_type"}));
            }
        };
        let token = format!("mock-graph-{}", uuid::Uuid::new_v4());
        lock(&self.graph_tokens).insert(token.clone(), principal);
        reply(
            StatusCode::OK,
            json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token}),
        )
    }

    /// The client proves itself with its secret, a federated token, or a certificate assertion.
    fn client_authenticated(&self, form: &HashMap<String, String>, token_url: &str) -> bool {
        let s = &self.settings;
        if form.get("client_id") != Some(&s.client_id) {
            return false;
        }
        let field = |k: &str| form.get(k).map(String::as_str);
        match (field("client_secret"), field("client_assertion_type"), field("client_assertion")) {
            (Some(secret), None, None) => secret == s.client_secret,
            (None, Some(JWT_BEARER_ASSERTION), Some(assertion)) => self.check_client_assertion(assertion, token_url),
            _ => false,
        }
    }

    fn check_client_assertion(&self, assertion: &str, token_url: &str) -> bool {
        let Ok(header) = jsonwebtoken::decode_header(assertion) else { return false };
        let mut v = Validation::new(Algorithm::RS256);
        if let Some(x5t) = header.x5t_s256 {
            // Certificate credential: signed by the registered certificate's key, for this endpoint.
            let Some(key) = lock(&self.certificates).get(&x5t).cloned() else { return false };
            v.set_audience(&[token_url]);
            v.set_issuer(&[&self.settings.client_id]);
            v.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
            return jsonwebtoken::decode::<Value>(assertion, &key, &v)
                .is_ok_and(|d| d.claims.get("sub").and_then(Value::as_str) == Some(self.settings.client_id.as_str()));
        }
        // Federated credential: a token of the (mock) Kubernetes issuer for the exchange audience.
        let Some(kid) = header.kid else { return false };
        let keys = lock(&self.keys);
        let Some(key) = keys.published().find(|k| k.kid == kid) else { return false };
        v.set_audience(&[FEDERATION_AUDIENCE]);
        v.set_issuer(&[format!("{}/federation", self.base())]);
        jsonwebtoken::decode::<Value>(assertion, &key.decoding, &v).is_ok()
    }

    /// An OBO assertion must be a valid token of this mock addressed to the app: its (oid, tid).
    fn check_assertion(&self, assertion: &str) -> Option<(String, String)> {
        let kid = jsonwebtoken::decode_header(assertion).ok()?.kid?;
        let keys = lock(&self.keys);
        let key = keys.published().find(|k| k.kid == kid)?;
        let mut v = Validation::new(Algorithm::RS256);
        let id = &self.settings.client_id;
        v.set_audience(&[format!("api://{id}"), id.clone()]);
        let data = jsonwebtoken::decode::<Value>(assertion, &key.decoding, &v).ok()?;
        let claim = |name: &str| data.claims.get(name).and_then(|o| o.as_str()).map(str::to_ascii_lowercase);
        Some((claim("oid")?, claim("tid")?))
    }

    async fn mint_endpoint(&self, req: Request<Incoming>) -> Response<Body> {
        let body = match Limited::new(req.into_body(), 1 << 16).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return reply(StatusCode::BAD_REQUEST, json!({"error": "body too large"})),
        };
        let spec: TokenSpec = if body.iter().all(u8::is_ascii_whitespace) {
            TokenSpec::default()
        } else {
            match serde_json::from_slice(&body) {
                Ok(s) => s,
                Err(e) => {
                    return reply(StatusCode::BAD_REQUEST, json!({"error": format!("bad token spec: {e}")}));
                }
            }
        };
        reply(StatusCode::OK, json!({"access_token": self.mint(&spec)}))
    }

    async fn graph(&self, req: Request<Incoming>, rest: &[String]) -> Response<Body> {
        let endpoint = match rest.last().map(String::as_str) {
            Some("checkMemberGroups") => "checkMemberGroups",
            Some("transitiveMemberOf") => "transitiveMemberOf",
            Some("$value") => "photo",
            _ => "profile",
        };
        self.count(endpoint);
        if let Some(r) = self.graph_fault(endpoint, &req).await {
            return r;
        }
        let principal = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .and_then(|t| lock(&self.graph_tokens).get(t).cloned());
        let Some(principal) = principal else {
            return graph_error(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                "Access token is empty or invalid.",
            );
        };
        let (oid, prefix, tail) = match (rest.first().map(String::as_str), &principal) {
            (Some("me"), Principal::User { oid, .. }) => (oid.clone(), "me".to_string(), &rest[1..]),
            (Some("me"), Principal::App { .. }) => {
                return graph_error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "/me request is only valid with delegated authentication flow.",
                );
            }
            (Some("users"), _) if rest.len() >= 2 => {
                (rest[1].to_ascii_lowercase(), format!("users/{}", rest[1]), &rest[2..])
            }
            _ => return graph_error(StatusCode::NOT_FOUND, "NotFound", "unsupported Graph path"),
        };
        let home = self.settings.tenant_id.to_ascii_lowercase();
        let user = lock(&self.users).get(&oid).cloned().filter(|u| {
            // A token of one tenant sees only that tenant's directory.
            u.tenant.as_deref().unwrap_or(&home).eq_ignore_ascii_case(principal.tenant())
        });
        let Some(user) = user else {
            return graph_error(StatusCode::NOT_FOUND, "Request_ResourceNotFound", "Resource does not exist.");
        };
        let tail: Vec<&str> = tail.iter().map(String::as_str).collect();
        match (req.method().clone(), tail.as_slice()) {
            (Method::GET, []) => self.profile(&user),
            (Method::POST, ["checkMemberGroups"]) => self.check_member_groups(&user, req).await,
            (Method::GET, ["transitiveMemberOf"]) => self.transitive_member_of(&user, &prefix, &query(&req)),
            (Method::GET, ["photo", "$value"]) => match &user.photo {
                Some((ct, bytes)) => {
                    let mut r = Response::new(full(bytes.clone()));
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_str(ct).unwrap_or(header::HeaderValue::from_static("image/jpeg")),
                    );
                    r
                }
                None => graph_error(StatusCode::NOT_FOUND, "ImageNotFound", "The photo wasn't found."),
            },
            _ => graph_error(StatusCode::NOT_FOUND, "NotFound", "unsupported Graph path"),
        }
    }

    async fn graph_fault(&self, endpoint: &str, req: &Request<Incoming>) -> Option<Response<Body>> {
        let delay = lock(&self.faults).delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut f = lock(&self.faults);
        if f.throttle_remaining > 0 {
            f.throttle_remaining -= 1;
            let mut r = graph_error(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", "Too many requests.");
            let value = header::HeaderValue::from_str(&f.retry_after).unwrap_or(header::HeaderValue::from_static("1"));
            r.headers_mut().insert(header::RETRY_AFTER, value);
            return Some(r);
        }
        if let Some(s) = f.graph_status {
            return Some(graph_error(
                StatusCode::from_u16(s).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                "ServiceUnavailable",
                "mock failure",
            ));
        }
        if endpoint == "transitiveMemberOf" && f.fail_page.is_some() {
            let page = query_page(req);
            if Some(page) == f.fail_page {
                return Some(graph_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalServerError",
                    "mock page failure",
                ));
            }
        }
        None
    }

    fn profile(&self, u: &MockUser) -> Response<Body> {
        reply(
            StatusCode::OK,
            json!({"id": u.oid, "mail": u.mail, "displayName": u.display_name, "userPrincipalName": u.user_principal_name, "givenName": u.given_name, "surname": u.surname}),
        )
    }

    /// Direct groups plus every group they are nested in.
    fn transitive_groups(&self, u: &MockUser) -> BTreeSet<String> {
        let nesting = lock(&self.nesting);
        let mut seen = BTreeSet::new();
        let mut todo: Vec<String> = u.groups.iter().map(|g| g.to_ascii_lowercase()).collect();
        while let Some(g) = todo.pop() {
            if seen.insert(g.clone()) {
                todo.extend(nesting.get(&g).cloned().unwrap_or_default());
            }
        }
        seen
    }

    async fn check_member_groups(&self, u: &MockUser, req: Request<Incoming>) -> Response<Body> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Ask {
            group_ids: Vec<String>,
        }
        let body = match Limited::new(req.into_body(), 1 << 20).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return graph_error(StatusCode::BAD_REQUEST, "BadRequest", "unreadable body"),
        };
        let Ok(ask) = serde_json::from_slice::<Ask>(&body) else {
            return graph_error(StatusCode::BAD_REQUEST, "BadRequest", "groupIds missing");
        };
        if ask.group_ids.len() > 20 {
            return graph_error(StatusCode::BAD_REQUEST, "Request_BadRequest", "at most 20 groupIds");
        }
        let member = self.transitive_groups(u);
        let found: Vec<&String> = ask.group_ids.iter().filter(|g| member.contains(&g.to_ascii_lowercase())).collect();
        reply(StatusCode::OK, json!({"value": found}))
    }

    fn transitive_member_of(&self, u: &MockUser, prefix: &str, q: &HashMap<String, String>) -> Response<Body> {
        let all: Vec<String> = self.transitive_groups(u).into_iter().collect();
        let size = *lock(&self.page_size);
        let top: usize = q.get("$top").and_then(|t| t.parse().ok()).unwrap_or(100).min(size);
        let skip: usize = q.get("$skiptoken").and_then(|t| t.parse().ok()).unwrap_or(0);
        let page: Vec<Value> = all
            .iter()
            .skip(skip)
            .take(top)
            .map(|g| json!({"@odata.type": "#microsoft.graph.group", "id": g}))
            .collect();
        let mut body = json!({"value": page});
        if skip + top < all.len() {
            let next = format!(
                "{}/graph/v1.0/{prefix}/transitiveMemberOf?$select=id&$top={top}&$skiptoken={}",
                self.base(),
                skip + top
            );
            body["@odata.nextLink"] = json!(next);
        }
        reply(StatusCode::OK, body)
    }
}

fn query_page(req: &Request<Incoming>) -> usize {
    let q = query(req);
    let skip: usize = q.get("$skiptoken").and_then(|t| t.parse().ok()).unwrap_or(0);
    let top: usize = q.get("$top").and_then(|t| t.parse().ok()).unwrap_or(1).max(1);
    skip / top
}
