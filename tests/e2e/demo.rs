//! `entra-gateway demo`, run as a user runs it: start it, wait for its self-check, then execute
//! the curl lines it prints (with bash and the real curl) and check what they show.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

#[test]
fn the_demo_checks_itself_and_its_printed_curl_lines_show_the_whole_flow() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_entra-gateway"))
        .args(["demo", "--port", "0", "--admin-port", "0"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("demo starts");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
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
    loop {
        let line = rx.recv_timeout(Duration::from_secs(120)).expect("the demo prints its instructions");
        if line.contains("demo is running") {
            in_instructions = true;
        } else if in_instructions
            && (line.starts_with("curl ") || line.starts_with("ENTRA_TOKEN=") || line.starts_with("GW_TOKEN="))
        {
            script.push(line.clone());
            if line.contains("/metrics") {
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
    ] {
        assert!(shown.contains(expected), "missing `{expected}` in:\n{shown}");
    }
    assert!(!shown.contains("spoofed"), "the spoofed identity header reached the echo service:\n{shown}");

    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let status = child.wait().unwrap();
    assert!(status.success(), "demo exit: {status}");
}
