//! Runs the real `entra-gateway` binary as a child process (for what only a process shows:
//! memory, signals, exit codes). The addresses are read from its "listening" log line.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

pub struct GatewayProcess {
    pub child: Child,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    /// Every stdout line after the "listening" one.
    pub lines: mpsc::Receiver<String>,
}

impl GatewayProcess {
    /// `serve --config path` with JSON logs; waits for the "listening" line.
    pub fn spawn(config: &Path) -> GatewayProcess {
        GatewayProcess::spawn_with_env(config, &[])
    }

    /// `spawn` with more environment variables.
    pub fn spawn_with_env(config: &Path, env: &[(&str, &str)]) -> GatewayProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_entra-gateway"))
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            // As the image runs it (deploy/Dockerfile): mimalloc commits its arenas as used.
            .env("MIMALLOC_ARENA_EAGER_COMMIT", "0")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("gateway binary starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let (public, admin) = loop {
            let line = rx.recv_timeout(std::time::Duration::from_secs(60)).expect("the gateway logs that it listens");
            if !line.contains("entra-gateway listening") {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
            let addr = |k: &str| -> SocketAddr { v[k].as_str().unwrap().parse().unwrap() };
            break (addr("public"), addr("admin"));
        };
        GatewayProcess { child, public, admin, lines: rx }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.public)
    }

    /// Peak resident memory (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc")
    }

    /// Waits (bounded) for a stdout line containing `needle`; returns it.
    pub fn wait_for_line(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => continue,
                Err(_) => panic!("no log line containing {needle:?}"),
            }
        }
    }

    /// Every stdout line until the process exits (after a signal), and its exit status.
    pub fn collect_until_exit(&mut self) -> (Vec<String>, std::process::ExitStatus) {
        let mut lines = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(std::time::Duration::from_secs(60)) {
            lines.push(line);
        }
        let status = self.child.wait().expect("the gateway exits");
        (lines, status)
    }

    pub fn signal(&self, sig: &str) {
        let ok =
            Command::new("kill").args([&format!("-{sig}"), &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill -{sig}");
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
