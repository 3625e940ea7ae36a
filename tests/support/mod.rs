//! Shared helpers of the end-to-end tests: a mock Entra ID + Graph with known users, and a real
//! gateway on loopback sockets configured through the same YAML + override path as production.

pub mod ingress;
pub mod otlp;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod tls;
pub mod upstream;

use std::net::SocketAddr;

use entra_gateway::config::{Config, SigningAlgorithm};
use entra_gateway::mock::{MockEntra, MockSettings, MockUser, TokenSpec};
use entra_gateway::server::{AppState, Listeners};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub const ALLOWED: &str = "11111111-aaaa-4000-8000-000000000001";
pub const ADMINS: &str = "11111111-aaaa-4000-8000-000000000002";
pub const NESTED_CHILD: &str = "11111111-aaaa-4000-8000-000000000003";
pub const OTHER: &str = "11111111-aaaa-4000-8000-000000000009";

pub const ALICE: &str = "a11ce000-0000-4000-8000-000000000001"; // ALLOWED + ADMINS, direct
pub const BOB: &str = "b0b00000-0000-4000-8000-000000000002"; // NESTED_CHILD -> ALLOWED
pub const CAROL: &str = "ca401000-0000-4000-8000-000000000003"; // OTHER only
pub const DAVE: &str = "da7e0000-0000-4000-8000-000000000004"; // many groups, ALLOWED last

/// A mock with alice, bob, carol and dave.
pub async fn mock() -> MockEntra {
    let mock = MockEntra::start(MockSettings::default()).await.expect("mock starts");
    seed(&mock);
    mock
}

/// Adds alice, bob, carol and dave (and bob's nested group) to a mock.
pub fn seed(mock: &MockEntra) {
    let s = mock.state();
    let user = |login: &str, oid: &str, name: &str, groups: Vec<String>| MockUser {
        login: login.into(),
        oid: oid.into(),
        display_name: Some(name.into()),
        mail: Some(format!("{login}@contoso.example")),
        user_principal_name: Some(format!("{login}@contoso.example")),
        given_name: Some(name.split(' ').next().unwrap_or_default().into()),
        surname: name.split(' ').nth(1).map(str::to_string),
        groups,
        job_title: Some("Engineer".into()),
        department: Some("Platform".into()),
        photo: None,
        tenant: None,
    };
    s.add_user(user("alice", ALICE, "Alice Jørgensen", vec![ALLOWED.into(), ADMINS.into()]));
    s.add_user(user("bob", BOB, "Bob Builder", vec![NESTED_CHILD.into()]));
    s.add_user(user("carol", CAROL, "Carol Seller", vec![OTHER.into()]));
    let mut many: Vec<String> = (0..7).map(|i| format!("22222222-bbbb-4000-8000-00000000000{i}")).collect();
    many.push(ALLOWED.into());
    s.add_user(user("dave", DAVE, "Dave Many", many));
    s.nest_group(NESTED_CHILD, ALLOWED);
}

/// The signing key every replica of one test deployment shares (one per test process): with it,
/// replicas open each other's sealed values in Redis, as a real deployment's do.
pub fn deployment_key() -> String {
    static KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    KEY.get_or_init(|| entra_gateway::keys::generate_pem(SigningAlgorithm::ES256).unwrap()).clone()
}

/// A token for a mock user (`groups` claim filled from the directory unless overage is set).
pub fn token_for(mock: &MockEntra, login: &str) -> String {
    mock.mint(&TokenSpec { user: Some(login.into()), ..Default::default() })
}

pub fn overage_token_for(mock: &MockEntra, login: &str) -> String {
    mock.mint(&TokenSpec { user: Some(login.into()), overage: true, ..Default::default() })
}

/// The base YAML of a test gateway; tests change it with `ENTRA_GATEWAY__...` overrides.
pub fn base_yaml(mock: &MockEntra) -> String {
    let s = mock.settings();
    format!(
        r#"
server: {{ listen: "127.0.0.1:0", admin_listen: "127.0.0.1:0", shutdown_grace: 5s }}
entra:
  authority_host: "{authority}"
  graph_url: "{graph}"
  tenants: ["{tenant}"]
  client_id: "{client}"
  graph_mode: app
  graph_max_retry_wait: 2s
authorization:
  allowed_groups: ["{ALLOWED}"]
  group_roles: {{ "{ALLOWED}": ["reader"], "{ADMINS}": ["admin"] }}
issuer:
  issuer: "https://gateway.test"
  audience: "internal-services"
  token_ttl: 15m
  signing_keys: []
logging: {{ level: warn }}
"#,
        authority = mock.authority_host(),
        graph = mock.graph_url(),
        tenant = s.tenant_id,
        client = s.client_id,
    )
}

/// A running gateway.
pub struct Gateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Gateway {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Stops accepting, drains, and waits for the server to finish.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Builder of a test gateway.
pub struct GatewayBuilder<'a> {
    mock: &'a MockEntra,
    yaml: String,
    overrides: Vec<(String, String)>,
    keys: Vec<(String, SigningAlgorithm, Option<String>)>,
    dir: tempfile::TempDir,
}

impl<'a> GatewayBuilder<'a> {
    pub fn new(mock: &'a MockEntra) -> Self {
        GatewayBuilder {
            mock,
            yaml: base_yaml(mock),
            overrides: vec![],
            keys: vec![],
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The gateway's private temp directory (keys, secrets, files a test writes).
    pub fn dir_path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// `set("ENTRA__GRAPH_MODE", "obo")` = `ENTRA_GATEWAY__ENTRA__GRAPH_MODE=obo`.
    pub fn set(mut self, key: &str, value: impl Into<String>) -> Self {
        self.overrides.push((format!("ENTRA_GATEWAY__{key}"), value.into()));
        self
    }

    /// Appends raw YAML (e.g. a `proxy:` section).
    pub fn yaml(mut self, extra: &str) -> Self {
        self.yaml.push_str(extra);
        self
    }

    /// Adds a signing key; `pem` None generates one. The first added key signs.
    pub fn key(mut self, kid: &str, alg: SigningAlgorithm, pem: Option<String>) -> Self {
        self.keys.push((kid.into(), alg, pem));
        self
    }

    pub fn config(mut self) -> (Config, tempfile::TempDir) {
        if self.keys.is_empty() {
            self.keys.push(("k1".into(), SigningAlgorithm::ES256, None));
        }
        let secret = self.dir.path().join("client-secret");
        std::fs::write(&secret, &self.mock.settings().client_secret).unwrap();
        let mut overrides =
            vec![("ENTRA_GATEWAY__ENTRA__CLIENT_SECRET_FILE".to_string(), secret.display().to_string())];
        let mut keys_yaml = String::from("[");
        for (kid, alg, pem) in &self.keys {
            let path = self.dir.path().join(format!("{kid}.pem"));
            let pem = pem.clone().unwrap_or_else(|| entra_gateway::keys::generate_pem(*alg).unwrap());
            std::fs::write(&path, pem).unwrap();
            keys_yaml.push_str(&format!(
                "{{kid: \"{kid}\", algorithm: {alg:?}, private_key_file: \"{}\"}},",
                path.display()
            ));
        }
        keys_yaml.push(']');
        overrides.push(("ENTRA_GATEWAY__ISSUER__SIGNING_KEYS".into(), keys_yaml));
        overrides.extend(self.overrides);
        let config = Config::from_yaml(&self.yaml, &overrides).unwrap_or_else(|e| panic!("{e}"));
        (config, self.dir)
    }

    /// Runs the real binary with this config (written to `gateway.yaml` in the returned dir).
    pub fn spawn(self) -> (process::GatewayProcess, Config, tempfile::TempDir) {
        let (config, dir) = self.config();
        let path = dir.path().join("gateway.yaml");
        write_config(&config, &path);
        (process::GatewayProcess::spawn(&path), config, dir)
    }

    pub async fn start(self) -> Gateway {
        let (config, dir) = self.config();
        start_with(config, dir).await
    }
}

/// Starts a gateway for `config` on free loopback ports.
pub async fn start_with(config: Config, dir: tempfile::TempDir) -> Gateway {
    let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, admin_addr) = (public.local_addr().unwrap(), admin.local_addr().unwrap());
    let state = AppState::build(config).unwrap_or_else(|e| panic!("{e}"));
    let (stop, mut rx) = watch::channel(false);
    let stop_signal = async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let task =
        tokio::spawn(entra_gateway::server::run_with_state(state, Listeners { public, admin }, stop_signal, None));
    Gateway { addr, admin: admin_addr, dir, stop, task: Some(task) }
}

/// An HTTP client that never reuses a connection across tests.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(std::time::Duration::from_secs(30)).build().unwrap()
}

/// POST /auth/exchange with a Bearer token; returns status, headers and JSON body.
pub async fn exchange(gw: &Gateway, token: &str) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let r = client().post(gw.url("/auth/exchange")).bearer_auth(token).send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.json().await.unwrap_or(serde_json::Value::Null);
    (status, headers, body)
}

/// Sends a request line exactly as given (clients normalise `..` away) and returns the status.
pub async fn raw_get_status(addr: SocketAddr, target: &str, token: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req =
        format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf);
    head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no status line in {head}"))
}

/// Sends a request exactly as given (method, target and header lines, `\r\n`-separated, no
/// final blank line) and returns the status and the whole raw response.
pub async fn raw_request(addr: SocketAddr, head: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = head.to_vec();
    req.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    s.write_all(&req).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(20), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no status in {text:?}"));
    (status, text)
}

/// Sends `head` (as for [`raw_request`]) with `Content-Length: body_len`, then `body_len` bytes,
/// while reading the answer: the status line, and whether the whole body could be written
/// (a server that closes on unread data makes the client's writes fail with a reset).
pub async fn send_large_body(addr: SocketAddr, head: &str, body_len: usize) -> (u16, std::io::Result<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let head = format!("{head}\r\nContent-Length: {body_len}\r\n\r\n");
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        let chunk = vec![b'a'; 64 * 1024];
        let mut left = body_len;
        while left > 0 {
            let n = left.min(chunk.len());
            wr.write_all(&chunk[..n]).await?;
            left -= n;
        }
        wr.flush().await
    });
    let mut buf = Vec::new();
    let mut byte = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match rd.read(&mut byte).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&byte[..n]),
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, writer.await.unwrap())
}

/// Writes a loaded config as YAML (for a gateway run as a child process).
pub fn write_config(config: &Config, path: &std::path::Path) {
    let yaml = serde_saphyr::to_string(&serde_json::to_value(&config.raw).unwrap()).unwrap();
    // Write then rename, as Kubernetes swaps ConfigMap files: readers never see half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// `/readyz` as JSON.
pub async fn readyz(gw: &Gateway) -> serde_json::Value {
    client().get(gw.admin_url("/readyz")).send().await.unwrap().json().await.unwrap()
}

/// The detail of one readiness check (empty when the check is absent).
pub fn check_detail(ready: &serde_json::Value, name: &str) -> String {
    ready["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .map(|c| c["detail"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

/// The value of one metric series (`name{labels}` exactly), 0 when absent.
pub async fn metric(gw: &Gateway, series: &str) -> f64 {
    let text = client().get(gw.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Waits (bounded, 20 s) until `check` holds, polling; returns how long it took.
pub async fn until<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> std::time::Duration {
    let started = std::time::Instant::now();
    while !check().await {
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "timed out waiting until {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    started.elapsed()
}
