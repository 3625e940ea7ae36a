//! `entra-gateway demo`: a complete local stack on loopback, with no Azure tenant and no Redis.
//!
//! Owns: starting the mock Entra ID + Graph with three demo users, an echo upstream that shows
//! what it receives, and a gateway configured from `config/demo.yaml` (loopback addresses and
//! file paths set through the normal `ENTRA_GATEWAY__*` overrides); a self-check of the flow; and
//! the copy-paste curl lines. Must not: be reachable from outside (everything binds 127.0.0.1).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::{Body, json};
use crate::config::{Config, SigningAlgorithm};
use crate::mock::{MockEntra, MockSettings, MockUser, TokenSpec};
use crate::server::{AppState, Listeners};

/// `println!` that ignores a closed stdout (a reader that stopped reading): the demo goes on.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

const DEMO_YAML: &str = include_str!("../config/demo.yaml");
const ENGINEERING: &str = "0a1b2c3d-0000-4000-8000-00000000e001";
const PLATFORM: &str = "0a1b2c3d-0000-4000-8000-00000000e002";
const ADMINS: &str = "0a1b2c3d-0000-4000-8000-00000000a001";
const SALES: &str = "0a1b2c3d-0000-4000-8000-00000000c001";

mod spa;

/// The demo's ports (0: any free one).
#[derive(Debug, Clone, Copy)]
pub struct DemoPorts {
    pub gateway: u16,
    pub admin: u16,
    /// The sample single-page app, on its own origin.
    pub app: u16,
    /// `proxy.identity_headers` of the demo gateway (`x-auth`, `easy-auth`, `both`).
    pub identity_headers: crate::identity::HeaderProfile,
}

/// Runs the demo until `shutdown` completes.
pub async fn run(ports: DemoPorts, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    let mock = MockEntra::start(MockSettings::default()).await.map_err(|e| format!("mock Entra: {e}"))?;
    seed_users(&mock);
    let (stop_tx, stop_rx) = watch::channel(false);
    let echo = start_echo(stop_rx.clone()).await.map_err(|e| format!("echo upstream: {e}"))?;
    let public = bind(ports.gateway, "--port").await?;
    let admin = bind(ports.admin, "--admin-port").await?;
    let app = bind(ports.app, "--app-port").await?;
    let (gw, admin_addr) =
        (public.local_addr().map_err(|e| e.to_string())?, admin.local_addr().map_err(|e| e.to_string())?);
    let app_addr = app.local_addr().map_err(|e| e.to_string())?;
    let app_config = std::sync::Arc::new(spa::config_json(&mock, gw).to_string());
    let mock_addr = mock.addr();
    tokio::spawn(crate::server::serve(app, None, stop_rx, crate::server::ConnLimits::short(), move |req, _| {
        spa::serve(req, app_config.clone(), gw, mock_addr)
    }));
    let files = DemoFiles::create(&mock)?;
    let mut config = demo_config(&mock, echo, gw, admin_addr, app_addr, &files)?;
    config.proxy.identity = config.proxy.identity.clone().with_profile(ports.identity_headers);
    config.raw.proxy.identity_headers = ports.identity_headers;
    let state = AppState::build(config).map_err(|e| e.to_string())?;
    let (gw_stop_tx, mut gw_stop_rx) = watch::channel(false);
    let stop = async move {
        let _ = gw_stop_rx.wait_for(|s| *s).await;
    };
    let server = tokio::spawn(crate::server::run_with_state(state, Listeners { public, admin }, stop, None));
    self_check(&mock, gw).await;
    print_instructions(&mock, gw, admin_addr, app_addr);
    shutdown.await;
    let _ = gw_stop_tx.send(true);
    let _ = server.await;
    let _ = stop_tx.send(true);
    Ok(())
}

/// Runs the mock alone (demo users included) until `shutdown`; prints its address as JSON.
pub async fn run_mock(port: u16, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    let mock = MockEntra::start_on(MockSettings::default(), &format!("127.0.0.1:{port}"))
        .await
        .map_err(|e| format!("mock Entra: {e}"))?;
    seed_users(&mock);
    let s = mock.settings();
    say!(
        "{}",
        serde_json::json!({
            "authority_host": mock.authority_host(), "graph_url": mock.graph_url(),
            "tenant_id": s.tenant_id, "client_id": s.client_id, "client_secret": s.client_secret,
            "groups": {"engineering": ENGINEERING, "admins": ADMINS},
        })
    );
    shutdown.await;
    Ok(())
}

fn seed_users(mock: &MockEntra) {
    let s = mock.state();
    let user = |login: &str, oid: &str, name: &str, groups: &[&str]| MockUser {
        login: login.into(),
        oid: oid.into(),
        display_name: Some(name.into()),
        mail: Some(format!("{login}@contoso.example")),
        user_principal_name: Some(format!("{login}@contoso.example")),
        given_name: name.split(' ').next().map(str::to_string),
        surname: name.split(' ').nth(1).map(str::to_string),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        job_title: Some("Engineer".into()),
        department: Some("Product".into()),
        photo: None,
        tenant: None,
    };
    let mut alice = user("alice", "a11ce000-0000-4000-8000-000000000001", "Alice Jørgensen", &[ENGINEERING, ADMINS]);
    alice.photo = Some(("image/png".into(), bytes::Bytes::from_static(include_bytes!("demo/alice.png"))));
    s.add_user(alice);
    // Bob is in Platform, which is nested in Engineering: only Graph knows (token overage).
    s.add_user(user("bob", "b0b00000-0000-4000-8000-000000000002", "Bob Builder", &[PLATFORM]));
    s.add_user(user("carol", "ca401000-0000-4000-8000-000000000003", "Carol Seller", &[SALES]));
    s.nest_group(PLATFORM, ENGINEERING);
}

/// Listens on 127.0.0.1:`port` (0: any free port); a port in use is an error that says what to
/// do, never a silent move to another port.
async fn bind(port: u16, flag: &str) -> Result<TcpListener, String> {
    TcpListener::bind(("127.0.0.1", port)).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            format!("127.0.0.1:{port} is in use: pass {flag} with a free port (0 picks one)")
        }
        _ => format!("cannot listen on 127.0.0.1:{port}: {e}"),
    })
}

/// The demo's signing key and client secret, in a private temp directory removed on exit: a
/// new directory with a random name and mode 0700 (`mkdtemp`, by `tempfile`), whose files are
/// created new (`O_EXCL`: never through a symlink someone planted) with mode 0600.
struct DemoFiles {
    dir: tempfile::TempDir,
}

impl DemoFiles {
    fn create(mock: &MockEntra) -> Result<DemoFiles, String> {
        DemoFiles::create_with(&mock.settings().client_secret)
    }

    fn create_with(client_secret: &str) -> Result<DemoFiles, String> {
        let mut builder = tempfile::Builder::new();
        builder.prefix("entra-gateway-demo-");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            builder.permissions(std::fs::Permissions::from_mode(0o700));
        }
        let dir = builder.tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let files = DemoFiles { dir };
        crate::keys::generate_to_file(SigningAlgorithm::ES256, &files.key()).map_err(|e| e.to_string())?;
        write_new_private(&files.secret(), client_secret.as_bytes()).map_err(|e| format!("secret file: {e}"))?;
        Ok(files)
    }
    fn key(&self) -> PathBuf {
        self.dir.path().join("demo-1.pem")
    }
    fn secret(&self) -> PathBuf {
        self.dir.path().join("client-secret")
    }
}

/// Writes a new file (refusing an existing one or a symlink) readable by the owner only.
fn write_new_private(path: &std::path::Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(content)
}

fn demo_config(
    mock: &MockEntra,
    echo: SocketAddr,
    gw: SocketAddr,
    admin: SocketAddr,
    app: SocketAddr,
    files: &DemoFiles,
) -> Result<Config, String> {
    let echo_url = format!("http://{echo}");
    let set = |k: &str, v: String| (format!("ENTRA_GATEWAY__{k}"), v);
    let overrides = vec![
        set("SERVER__LISTEN", gw.to_string()),
        set("SERVER__ADMIN_LISTEN", admin.to_string()),
        set("SERVER__CORS__ALLOWED_ORIGINS", format!("[\"http://{app}\"]")),
        set("ENTRA__AUTHORITY_HOST", mock.authority_host()),
        set("ENTRA__GRAPH_URL", mock.graph_url()),
        set("ENTRA__CLIENT_SECRET_FILE", files.secret().display().to_string()),
        set("ISSUER__ISSUER", format!("http://{gw}")),
        set("ISSUER__SIGNING_KEYS__0__PRIVATE_KEY_FILE", files.key().display().to_string()),
        set("PROXY__ROUTES__0__UPSTREAM", echo_url.clone()),
        set("PROXY__ROUTES__1__UPSTREAM", echo_url.clone()),
        set("PROXY__ROUTES__2__UPSTREAM", echo_url.clone()),
        set("PROXY__ROUTES__3__UPSTREAM", echo_url),
    ];
    Config::from_yaml(DEMO_YAML, &overrides).map_err(|e| e.to_string())
}

/// Runs the flow once so that the demo proves itself before printing instructions.
async fn self_check(mock: &MockEntra, gw: SocketAddr) {
    let client = reqwest::Client::new();
    for (login, spec) in [
        ("alice", TokenSpec { user: Some("alice".into()), ..Default::default() }),
        ("bob", TokenSpec { user: Some("bob".into()), overage: true, ..Default::default() }),
        ("carol", TokenSpec { user: Some("carol".into()), ..Default::default() }),
    ] {
        let token = mock.mint(&spec);
        let result = client
            .post(format!("http://{gw}/auth/exchange"))
            .bearer_auth(token)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match result {
            Ok(r) => {
                let status = r.status();
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                let detail = match status {
                    StatusCode::OK => format!("groups={} roles={}", body["user"]["groups"], body["user"]["roles"]),
                    _ => format!("{}", body["error_description"]),
                };
                // Printed, not logged: the log writer is asynchronous, and these lines must come
                // before the instructions.
                say!("self-check: {login} exchange -> {status} {detail}");
            }
            Err(e) => say!("self-check: {login} exchange failed: {e}"),
        }
    }
}

fn print_instructions(mock: &MockEntra, gw: SocketAddr, admin: SocketAddr, app: SocketAddr) {
    let m = mock.addr();
    let tid = &mock.settings().tenant_id;
    let alice = "a11ce000-0000-4000-8000-000000000001";
    let extract = r#"sed -E 's/.*"access_token":"([^"]+)".*/\1/'"#;
    say!(
        r#"
entra-gateway demo is running (Ctrl-C to stop)

  Open http://{app}/ in a browser: the sample app signs you in with MSAL.js (Sign in),
  exchanges the token at the gateway, shows you and calls an API through the gateway.

  gateway        http://{gw}        (exchange, proxy, /.well-known/jwks.json)
  admin          http://{admin}        (/metrics, /healthz, /readyz)
  mock Entra ID  http://{m}   (users: alice = allowed via token groups, bob = allowed via Graph
                                     after group overage and nested groups, carol = not allowed)

# 1. Sign alice in at the mock Entra ID (what MSAL does in the browser):
ENTRA_TOKEN=$(curl -s -X POST http://{m}/mock/token -d '{{"user":"alice"}}' | {extract})

# 2. Exchange it for the gateway's own token:
curl -s -X POST http://{gw}/auth/exchange -H "Authorization: Bearer $ENTRA_TOKEN"; echo
GW_TOKEN=$(curl -s -X POST http://{gw}/auth/exchange -H "Authorization: Bearer $ENTRA_TOKEN" | {extract})

# 3. Call the echo service through the gateway: it shows the injected X-Auth-* headers
#    (the spoofed one is stripped):
curl -s http://{gw}/api/hello -H "Authorization: Bearer $GW_TOKEN" -H "X-Auth-User-Id: spoofed"; echo

# 4. The same call without a token is refused by the gateway; the upstream never sees it:
curl -s -i http://{gw}/api/hello; echo

# 5. bob's token has a group overage, so the gateway asks (mock) Graph; carol gets 403:
curl -s -X POST http://{gw}/auth/exchange -H "Authorization: Bearer $(curl -s -X POST http://{m}/mock/token -d '{{"user":"bob","overage":true}}' | {extract})"; echo
curl -s -X POST http://{gw}/auth/exchange -H "Authorization: Bearer $(curl -s -X POST http://{m}/mock/token -d '{{"user":"carol"}}' | {extract})"; echo

# 6. Keys for upstreams that verify the token themselves, metrics and readiness:
curl -s http://{gw}/.well-known/jwks.json; echo
curl -s http://{admin}/readyz; echo
curl -s http://{admin}/metrics | grep '^entra_gateway_exchange_total'

# 7. Continuous access: disable alice in (mock) Entra ID; within poll_interval (5 s) her
#    gateway token is refused (and her next exchange), without waiting for it to expire:
curl -s -X POST http://{m}/mock/users/alice/disable; echo
for i in $(seq 20); do s=$(curl -s -o /dev/null -w '%{{http_code}}' http://{gw}/api/hello -H "Authorization: Bearer $GW_TOKEN"); [ "$s" = 401 ] && break; sleep 1; done; echo "alice's gateway token now: HTTP $s"
curl -s -X POST http://{m}/mock/users/alice/enable; echo

# 8. The kill switch for "we fired someone at 10:02": every token of the user refused on every
#    replica within a second (or `entra-gateway revoke-user --tenant ... --oid ...` in the pod):
curl -s -o /dev/null -w 'kill switch: HTTP %{{http_code}}\n' -X POST http://{admin}/admin/users/{tid}/{alice}/revoke
"#
    );
}

/// An upstream that answers every request with what it received, as JSON.
pub async fn start_echo(stop: watch::Receiver<bool>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(crate::server::serve(listener, None, stop, crate::server::ConnLimits::short(), |req, _| echo(req)));
    Ok(addr)
}

async fn echo(req: Request<Incoming>) -> Response<Body> {
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .filter(|(name, _)| *name != header::AUTHORIZATION)
        .map(|(n, v)| {
            (n.as_str().to_string(), serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
        })
        .collect();
    json(
        StatusCode::OK,
        &serde_json::json!({
            "upstream": "echo",
            "method": req.method().as_str(),
            "path": req.uri().path(),
            "query": req.uri().query(),
            "headers": headers,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn the_demo_files_live_in_a_new_private_directory_with_a_random_name() {
        use std::os::unix::fs::PermissionsExt;
        let a = DemoFiles::create_with("s3cret").unwrap();
        let b = DemoFiles::create_with("s3cret").unwrap();
        assert_ne!(a.dir.path(), b.dir.path(), "a fresh directory each time");
        let name = a.dir.path().file_name().unwrap().to_string_lossy().to_string();
        assert!(!name.ends_with(&std::process::id().to_string()), "not predictable from the pid: {name}");
        let mode = |p: &std::path::Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(a.dir.path()), 0o700);
        assert_eq!(mode(&a.key()), 0o600);
        assert_eq!(mode(&a.secret()), 0o600);
        // A file planted where the secret goes is never written through.
        let planted = a.dir.path().join("planted");
        assert!(write_new_private(&a.secret(), b"x").is_err(), "existing files are not overwritten");
        std::os::unix::fs::symlink(&planted, a.dir.path().join("link")).unwrap();
        assert!(write_new_private(&a.dir.path().join("link"), b"x").is_err());
        assert!(!planted.exists(), "the symlink was not followed");
        let dir = a.dir.path().to_path_buf();
        drop(a);
        assert!(!dir.exists(), "removed on exit");
    }
}
