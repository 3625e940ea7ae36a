//! Proxy overhead benchmark: `wrk` against an upstream directly (the baseline) and through the
//! gateway (public route, and authenticated route with identity headers), in the same run, on
//! loopback. Results are ratios to the baseline, never absolute promises.
//!
//!   bash benches/run.sh          (installs wrk when missing, then `cargo bench --bench proxy`)
//!
//! Everything shares the machine's cores (wrk, upstream, gateway), so ratios are what to compare
//! between commits, on the same machine.

use std::process::Command;
use std::time::Duration;

use entra_gateway::config::{Config, SigningAlgorithm};
use entra_gateway::mock::{MockEntra, MockSettings, MockUser, TokenSpec};
use entra_gateway::server::{AppState, Listeners};
use tokio::net::TcpListener;
use tokio::sync::watch;

const GROUP: &str = "0a1b2c3d-0000-4000-8000-00000000e001";

struct Run {
    name: &'static str,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn wrk(name: &'static str, url: &str, token: Option<&str>, secs: u32, connections: u32) -> Run {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", &format!("-c{connections}"), &format!("-d{secs}s"), "--latency"]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd.arg(url).output().expect("wrk (bash benches/run.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!text.contains("Non-2xx"), "{name}: errors during the run:\n{text}");
    let rps = text.lines().find_map(|l| l.strip_prefix("Requests/sec:")).map(|v| v.trim().parse().unwrap()).unwrap();
    let pct = |p: &str| {
        let line = text.lines().find(|l| l.trim_start().starts_with(p)).unwrap_or_else(|| panic!("{text}"));
        let v = line.split_whitespace().nth(1).unwrap();
        let (num, unit) = v.split_at(v.find(|c: char| c.is_alphabetic()).unwrap());
        let n: f64 = num.parse().unwrap();
        match unit {
            "us" => n / 1000.0,
            "ms" => n,
            "s" => n * 1000.0,
            _ => panic!("unit {unit}"),
        }
    };
    Run { name, rps, p50_ms: pct("50%"), p99_ms: pct("99%") }
}

async fn gateway(mock: &MockEntra, upstream: std::net::SocketAddr, dir: &std::path::Path) -> std::net::SocketAddr {
    let key = dir.join("k1.pem");
    std::fs::write(&key, entra_gateway::keys::generate_pem(SigningAlgorithm::ES256).unwrap()).unwrap();
    let s = mock.settings();
    let yaml = format!(
        r#"
entra: {{ authority_host: "{a}", graph_url: "{g}", tenants: ["{t}"], client_id: "{c}", graph_mode: claims }}
authorization: {{ allowed_groups: ["{GROUP}"] }}
issuer: {{ issuer: "https://bench.test", signing_keys: [{{ kid: k1, private_key_file: "{k}" }}] }}
server: {{ rate_limit: {{ exchange_per_ip: null, exchange_per_user: null }} }}
logging: {{ level: error }}
proxy:
  routes:
    - {{ path_prefix: "/api/", upstream: "http://{upstream}", auth: required }}
    - {{ path_prefix: "/public/", upstream: "http://{upstream}", auth: none }}
"#,
        a = mock.authority_host(),
        g = mock.graph_url(),
        t = s.tenant_id,
        c = s.client_id,
        k = key.display()
    );
    let config = Config::from_yaml(&yaml, &Vec::new()).unwrap();
    let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = public.local_addr().unwrap();
    let state = AppState::build(config).unwrap();
    tokio::spawn(entra_gateway::server::run_with_state(
        state,
        Listeners { public, admin },
        std::future::pending(),
        None,
    ));
    addr
}

/// nginx as a plain reverse proxy to the same upstream: the reference a gateway is compared with.
fn nginx(upstream: std::net::SocketAddr, dir: &std::path::Path) -> Option<(std::process::Child, u16)> {
    let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().find(|p| std::path::Path::new(p).exists())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
    let d = dir.display();
    let conf = format!(
        "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx.err warn;\n\
         events {{ worker_connections 1024; }}\nhttp {{ access_log off; client_body_temp_path {d}/b; proxy_temp_path {d}/p;\n\
         fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n\
         upstream up {{ server {upstream}; keepalive 64; }}\n\
         server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }} }}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).ok()?;
    let child = Command::new(bin)
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((child, port));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("proxy benchmark: run it with `bash benches/run.sh` (cargo bench --bench proxy)");
        return;
    }
    let secs: u32 = std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let dir = std::env::temp_dir().join(format!("entra-gateway-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (upstream, gw, token) = rt.block_on(async {
        let mock = MockEntra::start(MockSettings::default()).await.unwrap();
        mock.state().add_user(MockUser {
            login: "alice".into(),
            oid: "a11ce000-0000-4000-8000-000000000001".into(),
            display_name: Some("Alice Jørgensen".into()),
            groups: vec![GROUP.into()],
            ..Default::default()
        });
        let (_stop_tx, stop_rx) = watch::channel(false);
        std::mem::forget(_stop_tx);
        let upstream = entra_gateway::demo::start_echo(stop_rx).await.unwrap();
        let gw = gateway(&mock, upstream, &dir).await;
        let entra = mock.mint(&TokenSpec { user: Some("alice".into()), ..Default::default() });
        let r: serde_json::Value = reqwest::Client::new()
            .post(format!("http://{gw}/auth/exchange"))
            .bearer_auth(entra)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        std::mem::forget(mock);
        (upstream, gw, r["access_token"].as_str().unwrap().to_string())
    });
    let _guard = rt.enter();
    std::thread::sleep(Duration::from_millis(200));
    let mut runs = vec![wrk("upstream directly (baseline)", &format!("http://{upstream}/api/x"), None, secs, 32)];
    let reference = nginx(upstream, &dir);
    if let Some((_, port)) = &reference {
        runs.push(wrk("nginx proxy_pass (reference)", &format!("http://127.0.0.1:{port}/api/x"), None, secs, 32));
    }
    runs.push(wrk("gateway, auth: none", &format!("http://{gw}/public/x"), None, secs, 32));
    runs.push(wrk("gateway, auth: required", &format!("http://{gw}/api/x"), Some(&token), secs, 32));
    if let Some((mut child, _)) = reference {
        // SIGTERM: nginx's fast shutdown stops the workers too (SIGKILL would orphan them).
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let _ = child.wait();
    }
    let base = &runs[0];
    println!("\n{:<32} {:>10} {:>8} {:>10} {:>10}", "scenario (32 connections)", "req/s", "ratio", "p50 ms", "p99 ms");
    for r in &runs {
        println!("{:<32} {:>10.0} {:>8.2} {:>10.3} {:>10.3}", r.name, r.rps, r.rps / base.rps, r.p50_ms, r.p99_ms);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
