//! A real PostgreSQL server on a free loopback port, in a throwaway cluster (`initdb` in a temp
//! dir), with TLS from a test CA. `bash .ci/test.sh` installs Debian's `postgresql`; these tests
//! fail (never skip) without it. As root, the server runs as the `postgres` user (PostgreSQL
//! refuses to run as root).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::tls::TestCa;

pub struct PostgresServer {
    child: Option<Child>,
    pub port: u16,
    /// The server's files: `data/` (the cluster), `sock/`, `server.crt`, `server.key`.
    dir: tempfile::TempDir,
    owner: Option<(u32, u32)>,
    /// The CA that issued the server's certificate (PEM).
    pub ca_pem: String,
}

fn bin(name: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!("PostgreSQL ({name}) is not installed: run `bash .ci/test.sh`, which installs Debian's postgresql")
    })
}

/// (uid, gid) of the `postgres` user when this process is root: the server cannot run as root.
fn server_owner() -> Option<(u32, u32)> {
    let me = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&me.stdout).trim() != "0" {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    let line =
        passwd.lines().find(|l| l.starts_with("postgres:")).expect("the postgres user exists (Debian's package)");
    let fields: Vec<&str> = line.split(':').collect();
    Some((fields[2].parse().unwrap(), fields[3].parse().unwrap()))
}

fn as_owner(cmd: &mut Command, owner: Option<(u32, u32)>) -> &mut Command {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

fn chown(path: &Path, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    }
}

impl PostgresServer {
    /// A new cluster (superuser `gateway`, trust authentication on loopback), started.
    pub async fn start() -> PostgresServer {
        let dir = tempfile::tempdir().unwrap();
        let owner = server_owner();
        // The server's user must be able to enter the directory.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for sub in ["data", "sock"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
            chown(&dir.path().join(sub), owner);
        }
        std::fs::set_permissions(dir.path().join("data"), std::fs::Permissions::from_mode(0o700)).unwrap();
        let ca = TestCa::new();
        let (cert, key) = ca.issue(&["localhost", "127.0.0.1"]);
        std::fs::write(dir.path().join("server.crt"), cert).unwrap();
        std::fs::write(dir.path().join("server.key"), key).unwrap();
        std::fs::set_permissions(dir.path().join("server.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
        chown(&dir.path().join("server.crt"), owner);
        chown(&dir.path().join("server.key"), owner);
        let status = as_owner(&mut Command::new(bin("initdb")), owner)
            .args(["-A", "trust", "-U", "gateway", "--no-sync", "-E", "UTF8", "--locale", "C", "-D"])
            .arg(dir.path().join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .expect("initdb runs");
        assert!(status.success(), "initdb failed");
        let mut server =
            PostgresServer { child: None, port: super::redis::free_port(), dir, owner, ca_pem: ca.cert_pem.clone() };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let d = self.dir.path();
        let child = as_owner(&mut Command::new(bin("postgres")), self.owner)
            .arg("-D")
            .arg(d.join("data"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(d.join("sock"))
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=60"])
            .args(["-c", "ssl=on", "-c"])
            .arg(format!("ssl_cert_file={}", d.join("server.crt").display()))
            .arg("-c")
            .arg(format!("ssl_key_file={}", d.join("server.key").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres starts");
        self.child = Some(child);
        self.wait_ready().await;
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((client, conn)) = tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls).await {
                tokio::spawn(conn);
                if client.simple_query("SELECT 1").await.is_ok() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "postgres did not start on port {}", self.port);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A URL for database `db` (TLS off, for the test's own connections and gateways that do
    /// not test TLS).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://gateway@127.0.0.1:{}/{db}?sslmode=disable", self.port)
    }

    /// A URL that requires TLS, verified against [`Self::ca_pem`] (by the host name `localhost`).
    pub fn tls_url(&self, db: &str) -> String {
        format!("postgres://gateway:unused-password@localhost:{}/{db}?sslmode=verify-full", self.port)
    }

    /// Creates database `db` and returns a URL for it.
    pub async fn create_db(&self, db: &str) -> String {
        let c = self.client("postgres").await;
        c.batch_execute(&format!("CREATE DATABASE \"{db}\"")).await.unwrap();
        self.url(db)
    }

    /// A connection of the test itself.
    pub async fn client(&self, db: &str) -> tokio_postgres::Client {
        let (client, conn) =
            tokio_postgres::connect(&self.url(db), tokio_postgres::NoTls).await.expect("postgres answers");
        tokio::spawn(conn);
        client
    }

    /// Stops the server (fast shutdown: open connections are terminated) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-INT", &c.id().to_string()]).status();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same data.
    pub async fn start_again(&mut self) {
        self.spawn().await;
    }
}

impl Drop for PostgresServer {
    /// Immediate shutdown (SIGQUIT): the server ends its backends too.
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-QUIT", &c.id().to_string()]).status();
            let _ = c.wait();
        }
    }
}
