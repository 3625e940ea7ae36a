//! The shipped nginx example (`deploy/nginx/entra-gateway.conf`) run for real: nginx with
//! `auth_request` against the gateway's `/auth/verify`, in front of a real upstream.
//! `bash .ci/test.sh` installs nginx; this test fails (never skips) without it.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::upstream;
use support::*;

struct Nginx {
    child: Child,
    _dir: tempfile::TempDir,
    port: u16,
}

impl Drop for Nginx {
    /// SIGTERM is nginx's fast shutdown: the master stops its workers too (SIGKILL would
    /// orphan them).
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

fn nginx_binary() -> String {
    for candidate in ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"] {
        if std::path::Path::new(candidate).exists() {
            return candidate.to_string();
        }
    }
    panic!("nginx is not installed: run `bash .ci/test.sh`, which installs it");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts nginx with the shipped server block, its addresses pointed at the test's processes.
async fn start_nginx(gateway: std::net::SocketAddr, app: std::net::SocketAddr) -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = std::fs::read_to_string("deploy/nginx/entra-gateway.conf")
        .unwrap()
        .replace("127.0.0.1:8080", &gateway.to_string())
        .replace("127.0.0.1:3000", &app.to_string())
        .replace("listen 8000;", &format!("listen 127.0.0.1:{port};"));
    let d = dir.path().display();
    let conf = format!(
        "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{server}\n}}\n"
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new(nginx_binary())
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx starts");
    // Wait until nginx accepts connections (bounded; nginx has no readiness signal).
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < deadline, "nginx did not start; see {}/error.log", dir.path().display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Nginx { child, _dir: dir, port }
}

#[tokio::test]
async fn nginx_auth_request_lets_a_valid_token_through_with_identity_headers_and_rejects_others() {
    let mock = mock().await;
    let app = upstream::start().await;
    let gw = GatewayBuilder::new(&mock).start().await;
    let nginx = start_nginx(gw.addr, app.addr).await;
    let base = format!("http://127.0.0.1:{}", nginx.port);

    // The exchange itself goes through nginx to the gateway.
    let r = client().post(format!("{base}/auth/exchange")).bearer_auth(token_for(&mock, "alice")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let token = r.json::<serde_json::Value>().await.unwrap()["access_token"].as_str().unwrap().to_string();

    let r = client()
        .get(format!("{base}/orders/42?x=1"))
        .bearer_auth(&token)
        .header("X-Auth-User-Id", "spoofed")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = app.last();
    assert_eq!(seen.uri, "/orders/42?x=1");
    assert_eq!(seen.headers["x-auth-oid"], ALICE);
    assert_ne!(seen.headers["x-auth-user-id"], "spoofed");
    assert_eq!(seen.headers["x-auth-name"], "Alice J%C3%B8rgensen");
    assert_eq!(seen.headers["x-auth-roles"], "admin,reader");

    let before = app.requests();
    for token in [None, Some("not-a-token"), Some(token_for(&mock, "alice").as_str())] {
        let mut req = client().get(format!("{base}/orders/42"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        assert_eq!(req.send().await.unwrap().status(), 401, "{token:?}");
    }
    // After logout (through nginx) the token is refused too.
    let r = client().post(format!("{base}/auth/logout")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(client().get(format!("{base}/orders/42")).bearer_auth(&token).send().await.unwrap().status(), 401);
    assert_eq!(app.requests(), before, "nginx forwarded a request the gateway refused");
}
