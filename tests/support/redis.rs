//! A real `redis-server` process on a free loopback port, for the shared-state tests.
//! `bash .ci/test.sh` installs redis-server; these tests fail (never skip) without it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    extra: Vec<String>,
    /// How the test itself connects (URL and TLS roots).
    client_url: String,
    client_ca: Option<Vec<u8>>,
}

fn binary() -> &'static str {
    for candidate in ["/usr/bin/redis-server", "/usr/local/bin/redis-server"] {
        if std::path::Path::new(candidate).exists() {
            return candidate;
        }
    }
    panic!("redis-server is not installed: run `bash .ci/test.sh`, which installs it");
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        let port = free_port();
        RedisServer::start_with(port, vec![], format!("redis://127.0.0.1:{port}/0"), None).await
    }

    /// A server with extra arguments (`--port` is set unless `extra` sets it); the test's own
    /// connections use `client_url` (and `client_ca` for TLS).
    pub async fn start_with(
        port: u16,
        extra: Vec<String>,
        client_url: String,
        client_ca: Option<Vec<u8>>,
    ) -> RedisServer {
        let mut server =
            RedisServer { child: None, port, dir: tempfile::tempdir().unwrap(), extra, client_url, client_ca };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let mut cmd = Command::new(binary());
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        if !self.extra.iter().any(|a| a == "--port") {
            cmd.args(["--port", &self.port.to_string()]);
        }
        let child = cmd
            .args(&self.extra)
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        self.wait_ready().await;
    }

    /// Waits (bounded) until the server answers PING.
    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = self.try_connection().await
                && redis::cmd("PING").query_async::<String>(&mut c).await.is_ok()
            {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not start on port {}", self.port);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn try_connection(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        let client = match &self.client_ca {
            Some(ca) => redis::Client::build_with_tls(
                self.client_url.as_str(),
                redis::TlsCertificates { client_tls: None, root_cert: Some(ca.clone()) },
            )?,
            None => redis::Client::open(self.client_url.as_str())?,
        };
        client.get_multiplexed_async_connection().await
    }

    pub fn url(&self) -> String {
        self.client_url.clone()
    }

    /// A connection for the test itself (inspecting or planting keys).
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        self.try_connection().await.expect("redis answers")
    }

    /// Kills the server (SIGKILL: no goodbye to the clients).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty: it never saved).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

/// A free loopback port whose cluster-bus companion (port + 10000) is free too.
pub fn free_port() -> u16 {
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if port < 55000 && std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
