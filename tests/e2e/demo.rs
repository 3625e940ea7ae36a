//! `entra-gateway demo`, run as a user runs it: start it, wait for its self-check, then execute
//! the curl lines it prints (with bash and the real curl) and check what they show.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

#[test]
fn the_demo_checks_itself_and_its_printed_curl_lines_show_the_whole_flow() {
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_entra-gateway"))
            .args(["demo", "--port", "0", "--admin-port", "0", "--app-port", "0"])
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("demo starts"),
    );
    let (tx, rx) = mpsc::channel();
    let stdout = child.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut log = Vec::new();
    let mut script = Vec::new();
    let mut in_instructions = false;
    let mut app = None;
    loop {
        let line = rx.recv_timeout(Duration::from_secs(120)).expect("the demo prints its instructions");
        if let Some(url) = line.trim().strip_prefix("Open ").and_then(|l| l.split(' ').next()) {
            assert!(line.contains("in a browser"), "{line}");
            app = Some(url.to_string());
        }
        if line.contains("demo is running") {
            in_instructions = true;
        } else if in_instructions
            && (line.starts_with("curl ")
                || line.starts_with("for ")
                || line.starts_with("ENTRA_TOKEN=")
                || line.starts_with("GW_TOKEN="))
        {
            script.push(line.clone());
            if line.contains("/revoke") {
                break;
            }
        } else if !in_instructions {
            log.push(line.clone());
        }
    }
    let log = log.join("\n");
    for expected in
        ["self-check: alice exchange -> 200", "self-check: bob exchange -> 200", "self-check: carol exchange -> 403"]
    {
        assert!(log.contains(expected), "missing `{expected}` in:\n{log}");
    }
    assert!(script.len() >= 10, "{script:?}");

    let out = Command::new("bash")
        .arg("-c")
        .arg(script.join("\n"))
        .output()
        .expect("bash and curl (installed by .ci/test.sh)");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}{}", String::from_utf8_lossy(&out.stderr));
    for expected in [
        "\"access_token\"",
        "\"display_name\":\"Alice Jørgensen\"",
        "\"x-auth-name\":\"Alice J%C3%B8rgensen\"",
        "\"x-auth-roles\":\"admin,reader\"",
        "HTTP/1.1 401",
        "\"error\":\"access_denied\"",
        "\"keys\":[",
        "\"status\":\"ready\"",
        "entra_gateway_exchange_total{outcome=\"success\"}",
        "\"done\":\"disable\"",
        "alice's gateway token now: HTTP 401",
        "kill switch: HTTP 204",
    ] {
        assert!(shown.contains(expected), "missing `{expected}` in:\n{shown}");
    }
    assert!(!shown.contains("spoofed"), "the spoofed identity header reached the echo service:\n{shown}");

    // The sample app, on its own origin, and the gateway's CORS answer for that origin.
    let app = app.expect("the demo prints `Open http://127.0.0.1:<port>/ in a browser`");
    assert!(app.starts_with("http://127.0.0.1:") && app.ends_with('/'), "{app}");
    let origin = app.trim_end_matches('/');
    let check = format!(
        "set -e; curl -sf {app} | grep -q '>Sign in</button>'; \
         gw=$(curl -sf {app}config.json | sed -E 's/.*\"gatewayUrl\":\"([^\"]+)\".*/\\1/'); \
         curl -s -o /dev/null -w '%{{http_code}} ' -X OPTIONS $gw/auth/exchange -H 'Origin: {origin}' \
           -H 'Access-Control-Request-Method: POST' -H 'Access-Control-Request-Headers: authorization'; \
         curl -s -D - -o /dev/null -X OPTIONS $gw/auth/exchange -H 'Origin: {origin}' \
           -H 'Access-Control-Request-Method: POST' | tr -d '\\r' | grep -i '^access-control-allow-origin'; \
         curl -s -o /dev/null -w '%{{http_code}}' -X OPTIONS $gw/auth/exchange -H 'Origin: http://evil.test' \
           -H 'Access-Control-Request-Method: POST'"
    );
    let out = Command::new("bash").arg("-c").arg(&check).output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(shown.trim(), format!("204 access-control-allow-origin: {origin}\n403"), "{shown}");

    let _ = Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "demo exit: {status}");
}

/// The demo process, killed if the test fails before stopping it (an orphaned demo would keep
/// the test's output pipe open).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_demo_shows_the_easy_auth_headers_when_asked() {
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_entra-gateway"))
            .args(["demo", "--port", "0", "--admin-port", "0", "--app-port", "0", "--identity-headers", "easy-auth"])
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("demo starts"),
    );
    let stdout = child.0.stdout.take().unwrap();
    let mut script = Vec::new();
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if line.starts_with("ENTRA_TOKEN=") || line.starts_with("GW_TOKEN=") {
            script.push(line);
        } else if line.starts_with("curl -s http://") && line.contains("/api/hello") {
            script.push(line);
            break;
        }
    }
    assert_eq!(script.len(), 3, "{script:?}");
    let out = Command::new("bash").arg("-c").arg(script.join("\n")).output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("\"x-ms-client-principal\":\"") && shown.contains("\"x-ms-client-principal-idp\":\"aad\""),
        "{shown}"
    );
    assert!(shown.contains("\"x-ms-client-principal-name\":\"alice@contoso.example\""), "{shown}");
    assert!(!shown.contains("x-auth-oid"), "{shown}");
}
