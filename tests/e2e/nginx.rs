//! The shipped nginx example (`deploy/nginx/entra-gateway.conf`) run for real: nginx with
//! `auth_request` against the gateway's `/auth/verify`, in front of a real upstream.
//! `bash .ci/test.sh` installs nginx; this test fails (never skips) without it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::upstream;
use crate::support::*;

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
    let server = std::fs::read_to_string("deploy/nginx/entra-gateway.conf").unwrap();
    start_nginx_with(&server, gateway, app).await
}

/// Starts nginx with a server block (`127.0.0.1:8080` the gateway, `127.0.0.1:3000` the app,
/// `listen 8000;` replaced by a free port).
async fn start_nginx_with(server: &str, gateway: std::net::SocketAddr, app: std::net::SocketAddr) -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = server
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
    let gw = GatewayBuilder::new(&mock).set("PROXY__FORWARD_AUTH__ORIGINAL_URI", "x-original-uri").start().await;
    let nginx = start_nginx(gw.addr, app.addr).await;
    let base = format!("http://127.0.0.1:{}", nginx.port);

    // The exchange itself goes through nginx to the gateway.
    let r = client().post(format!("{base}/auth/exchange")).bearer_auth(token_for(&mock, "alice")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let token = r.json::<serde_json::Value>().await.unwrap()["access_token"].as_str().unwrap().to_string();

    // A client-sent identity header is refused (nginx copies it into the check), in any
    // spelling nginx passes on; without one the request passes with the gateway's headers.
    let before = app.requests();
    for spoof in ["X-Auth-User-Id", "X-Auth-Extra", "x-auth-groups"] {
        let r = client().get(format!("{base}/orders/42")).bearer_auth(&token).header(spoof, "spoofed").send().await;
        assert_eq!(r.unwrap().status(), 403, "{spoof}");
    }
    assert_eq!(app.requests(), before, "a request with a spoofed identity header reached the app");
    let r = client().get(format!("{base}/orders/42?x=1")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let seen = app.last();
    assert_eq!(seen.uri, "/orders/42?x=1");
    assert_eq!(seen.headers["x-auth-oid"], ALICE);
    assert!(seen.headers["x-auth-user-id"].to_str().unwrap().len() > 10, "the gateway's user id");
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

/// Route policy for forward-auth: the gateway's routes say which paths need which groups; nginx
/// serves them from the app. Only the upstreams' addresses are unused (nginx forwards).
fn policy_routes() -> String {
    format!(
        r#"
proxy:
  forward_auth: {{ original_uri: x-original-uri }}
  routes:
    - {{ path_prefix: "/public/", upstream: "http://127.0.0.1:9", auth: none }}
    - {{ path_prefix: "/admin/", upstream: "http://127.0.0.1:9", auth: required, allowed_groups: ["{ADMINS}"] }}
    - {{ path_prefix: "/orders/", upstream: "http://127.0.0.1:9", auth: required }}
"#
    )
}

#[tokio::test]
async fn nginx_decides_on_the_path_it_serves_whatever_the_client_sends() {
    let mock = mock().await;
    let app = upstream::start().await;
    let gw = GatewayBuilder::new(&mock).yaml(&policy_routes()).start().await;
    let nginx = start_nginx(gw.addr, app.addr).await;
    let base = format!("http://127.0.0.1:{}", nginx.port);
    let login = |user: &'static str| {
        let (mock, base) = (&mock, base.clone());
        async move {
            let r = client().post(format!("{base}/auth/exchange")).bearer_auth(token_for(mock, user)).send().await;
            r.unwrap().json::<serde_json::Value>().await.unwrap()["access_token"].as_str().unwrap().to_string()
        }
    };
    let bob = login("bob").await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", nginx.port).parse().unwrap();
    let before = app.requests();
    // A client-sent X-Original-URI is overwritten by nginx with the real $request_uri, and a URL
    // in the query does not choose the route.
    for (target, token, extra, want) in [
        ("/admin/settings?next=https://x.example/public/", None, "X-Original-URI: /public/x", 401),
        ("/admin/settings", Some(&bob), "X-Original-URI: /public/x", 403),
        ("/%61dmin/settings", Some(&bob), "", 403),
        ("/public/..;/admin/settings", None, "", 400),
        ("/public/%2e%2e/admin/settings", None, "", 400),
        ("/orders/1", None, "X-Original-URI: /public/x", 401),
    ] {
        let mut head = format!("GET {target} HTTP/1.1\r\nHost: app.example");
        if let Some(t) = token {
            head.push_str(&format!("\r\nAuthorization: Bearer {t}"));
        }
        if !extra.is_empty() {
            head.push_str(&format!("\r\n{extra}"));
        }
        let (status, _) = raw_request(addr, head.as_bytes()).await;
        // nginx answers 500 when the auth subrequest says 400 (it passes only 401 and 403 on).
        let want_seen = if want == 400 { 500 } else { want };
        assert_eq!(status, want_seen, "{target}");
    }
    assert_eq!(app.requests(), before, "nginx forwarded a request the gateway refused");
    // The public path passes without a token, and bob's token works on /orders/.
    assert_eq!(
        client().get(format!("{base}/public/page?u=https://x.example/admin/")).send().await.unwrap().status(),
        200
    );
    assert_eq!(client().get(format!("{base}/orders/1")).bearer_auth(&bob).send().await.unwrap().status(), 200);
    // nginx drops headers with underscores itself (underscores_in_headers off).
    let r = client().get(format!("{base}/orders/2")).bearer_auth(&bob).header("X_Auth_User_Id", "victim").send().await;
    assert_eq!(r.unwrap().status(), 200);
    assert!(app.last().headers.get("x_auth_user_id").is_none());
}

/// The auth subrequest as ingress-nginx builds it for `nginx.ingress.kubernetes.io/auth-url`:
/// `X-Original-URL: $scheme://$http_host$request_uri`, from the client's own `Host`.
const INGRESS_NGINX_LIKE: &str = r#"
server {
    listen 8000;
    location = /_external-auth {
        internal;
        proxy_pass http://127.0.0.1:8080/auth/verify;
        proxy_pass_request_body off;
        proxy_set_header Content-Length "";
        proxy_set_header X-Original-URL $scheme://$http_host$request_uri;
        proxy_set_header X-Original-Method $request_method;
        proxy_set_header X-Auth-Request-Redirect $request_uri;
    }
    location / {
        auth_request /_external-auth;
        auth_request_set $auth_user_id $upstream_http_x_auth_user_id;
        proxy_set_header X-Auth-User-Id $auth_user_id;
        proxy_pass http://127.0.0.1:3000;
    }
}
"#;

#[tokio::test]
async fn a_host_header_that_ends_the_authority_early_opens_nothing_through_an_ingress_nginx_setup() {
    let mock = mock().await;
    let app = upstream::start().await;
    let routes = format!(
        r#"
proxy:
  forward_auth: {{ original_uri: x-original-url }}
  routes:
    - {{ path_prefix: "/", upstream: "http://127.0.0.1:9", auth: none }}
    - {{ path_prefix: "/admin/", upstream: "http://127.0.0.1:9", auth: required, allowed_groups: ["{ADMINS}"] }}
"#
    );
    let gw = GatewayBuilder::new(&mock).yaml(&routes).start().await;
    let nginx = start_nginx_with(INGRESS_NGINX_LIKE, gw.addr, app.addr).await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", nginx.port).parse().unwrap();
    // The public catch-all is open; the admin path, in every spelling of host, case and bare
    // path, needs a token.
    let (status, _) = raw_request(addr, b"GET /index.html HTTP/1.1\r\nHost: app.example.com").await;
    assert_eq!(status, 200);
    let before = app.requests();
    for (target, host) in [
        ("/admin/secret", "app.example.com:443?"),
        ("/admin/secret", "app.example.com?"),
        ("/admin/secret", "app.example.com#"),
        ("/admin/secret", "app.example.com:443?x="),
        ("/admin/secret", "victim@app.example.com"),
        ("/admin/secret", "app.example.com"),
        ("/admin", "app.example.com"),
        ("/admin?x=1", "app.example.com"),
        ("/ADMIN/secret", "app.example.com"),
        ("/Admin", "app.example.com"),
    ] {
        let head = format!("GET {target} HTTP/1.1\r\nHost: {host}");
        let (status, text) = raw_request(addr, head.as_bytes()).await;
        // 401 from the gateway, or nginx's 500 for the gateway's 400 (a refused URL).
        assert!(status == 401 || status == 500 || status == 400, "{target} with Host {host:?}: {status}\n{text}");
    }
    assert_eq!(app.requests(), before, "a protected path reached the app without a token");
}
