//! The command line: `serve`, `check-config`, `demo`, `init`, `migrate`, `revoke-user`, `keys generate`.
//!
//! Owns: argument parsing, exit codes, logging set-up and the process signals (SIGTERM/SIGINT
//! shut down gracefully). Must not: contain gateway logic; each command calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod init;

use crate::config::{Config, FileChecks, GraphMode, ProcessEnv, SigningAlgorithm};

#[derive(Debug, Parser)]
#[command(name = "entra-gateway", version, about = "Token-exchange gateway for Microsoft Entra ID")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    #[command(
        after_help = "Examples:\n  entra-gateway serve --config gateway.yaml\n  ENTRA_GATEWAY_CONFIG=/etc/entra-gateway/gateway.yaml entra-gateway serve\n  ENTRA_GATEWAY__SERVER__LISTEN=0.0.0.0:8443 entra-gateway serve --config gateway.yaml   (any key: ENTRA_GATEWAY__SECTION__KEY)"
    )]
    Serve {
        /// YAML config file.
        #[arg(long, env = "ENTRA_GATEWAY_CONFIG")]
        config: PathBuf,
    },
    /// Parse and validate a config, print it with secrets redacted; exit 1 listing every problem.
    #[command(
        after_help = "Examples:\n  entra-gateway check-config --config gateway.yaml\n  entra-gateway check-config --config rendered.yaml --syntax-only      (a config rendered by the chart, away from its secrets)\n  helm template gw helm/entra-gateway -f values.yaml --show-only templates/configmap.yaml > cm.yaml\n  entra-gateway check-config --syntax-only --config cm.yaml           (a rendered ConfigMap is read as its config.yaml)"
    )]
    CheckConfig {
        #[arg(long, env = "ENTRA_GATEWAY_CONFIG")]
        config: PathBuf,
        /// Do not read the key and secret files the config names (they exist only where the
        /// gateway runs, e.g. in a cluster).
        #[arg(long)]
        syntax_only: bool,
    },
    /// Start mock Entra ID + Graph, an echo upstream and the gateway on loopback, and print
    /// curl lines for the whole flow.
    #[cfg(feature = "demo")]
    Demo {
        /// Public port of the demo gateway (0 = any free port).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Admin port of the demo gateway (0 = any free port).
        #[arg(long, default_value_t = 9090)]
        admin_port: u16,
        /// Port of the sample single-page app, on its own origin (0 = any free port).
        #[arg(long, default_value_t = 3000)]
        app_port: u16,
        /// The identity headers the echo service gets: x-auth, easy-auth (App Service's
        /// X-MS-CLIENT-PRINCIPAL*) or both.
        #[arg(long, value_enum, default_value_t = IdentityHeadersArg::XAuth)]
        identity_headers: IdentityHeadersArg,
    },
    /// Run only the loopback mock of Entra ID + Graph, with the demo's users (for benchmarks:
    /// `benches/run.sh` starts it as its own process).
    #[cfg(feature = "demo")]
    #[command(hide = true)]
    Mock {
        /// Port on 127.0.0.1 (0 = any free port; the address is printed).
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// Write a starting config for your tenant (gateway.yaml, a signing key, secrets/) into a
    /// directory, and print the next steps.
    #[command(
        after_help = "Example:\n  entra-gateway init --dir ./gw --tenant-id <tenant-guid> --client-id <app-guid> --group <group-guid>"
    )]
    Init {
        /// Directory to write into (created if needed; nothing in it is overwritten).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Your tenant's ID (Entra admin center: Identity > Overview > Tenant ID).
        #[arg(long, value_parser = guid)]
        tenant_id: String,
        /// The Application (client) ID of the gateway's app registration.
        #[arg(long, value_parser = guid)]
        client_id: String,
        /// Object ID of a group whose members may sign in (repeatable; none: every user of the
        /// tenant).
        #[arg(long = "group", value_parser = guid)]
        groups: Vec<String>,
        /// How group overage is resolved: app, obo or claims (no Graph, no client secret).
        #[arg(long, value_enum, ignore_case = true, default_value_t = GraphModeArg::App)]
        graph_mode: GraphModeArg,
        /// The gateway's public base URL (the `iss` of its tokens).
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        public_url: String,
    },
    /// Apply the PostgreSQL user directory's schema migrations and exit (the gateway applies
    /// them at start too; run this before a rollout, e.g. as a Helm pre-upgrade hook).
    #[command(
        after_help = "Example:\n  ENTRA_GATEWAY__DIRECTORY__POSTGRES_URL=postgres://... entra-gateway migrate --config gateway.yaml"
    )]
    Migrate {
        /// YAML config file (its `directory` section names the database).
        #[arg(long, env = "ENTRA_GATEWAY_CONFIG")]
        config: PathBuf,
    },
    /// The kill switch: refuse every token of a user on every replica, within a second, until
    /// they sign in again. Talks to a running gateway's admin listener, e.g.
    /// `kubectl exec deploy/entra-gateway -- entra-gateway revoke-user --tenant T --oid O`.
    RevokeUser {
        /// The user's tenant id (`tid`).
        #[arg(long, value_parser = guid)]
        tenant: String,
        /// The user's object id (`oid`; Entra admin center: Users > the user > Object ID).
        #[arg(long, value_parser = guid)]
        oid: String,
        /// The gateway's admin listener.
        #[arg(long, default_value = "http://127.0.0.1:9090")]
        admin_url: String,
        /// File holding `server.admin_token_file`'s token (not needed from loopback).
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Signing key management.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Write a new PEM (PKCS#8) private signing key.
    #[command(
        after_help = "Examples:\n  entra-gateway keys generate --out k-2026-12.pem\n  entra-gateway keys generate --algorithm EdDSA --out k-2026-12.pem"
    )]
    Generate {
        #[arg(long, value_enum, ignore_case = true, default_value_t = AlgorithmArg::Es256)]
        algorithm: AlgorithmArg,
        /// Output file (created with mode 0600; never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AlgorithmArg {
    #[value(name = "ES256")]
    Es256,
    #[value(name = "RS256")]
    Rs256,
    #[value(name = "EdDSA")]
    EdDsa,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum IdentityHeadersArg {
    XAuth,
    EasyAuth,
    Both,
}

impl From<IdentityHeadersArg> for crate::identity::HeaderProfile {
    fn from(a: IdentityHeadersArg) -> Self {
        match a {
            IdentityHeadersArg::XAuth => crate::identity::HeaderProfile::XAuth,
            IdentityHeadersArg::EasyAuth => crate::identity::HeaderProfile::EasyAuth,
            IdentityHeadersArg::Both => crate::identity::HeaderProfile::Both,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GraphModeArg {
    App,
    Obo,
    Claims,
}

impl From<GraphModeArg> for GraphMode {
    fn from(m: GraphModeArg) -> Self {
        match m {
            GraphModeArg::App => GraphMode::App,
            GraphModeArg::Obo => GraphMode::Obo,
            GraphModeArg::Claims => GraphMode::Claims,
        }
    }
}

/// A GUID such as `8f2d1c4e-52a0-4b8e-9d6f-0a1b2c3d4e5f`, lowercase.
fn guid(value: &str) -> Result<String, String> {
    match uuid::Uuid::parse_str(value) {
        Ok(id) if id.is_nil() => Err("the all-zero placeholder: use the real id".into()),
        Ok(_) if value.len() == 36 => Ok(value.to_ascii_lowercase()),
        _ => Err("not a GUID such as 8f2d1c4e-52a0-4b8e-9d6f-0a1b2c3d4e5f".into()),
    }
}

impl From<AlgorithmArg> for SigningAlgorithm {
    fn from(a: AlgorithmArg) -> Self {
        match a {
            AlgorithmArg::Es256 => SigningAlgorithm::ES256,
            AlgorithmArg::Rs256 => SigningAlgorithm::RS256,
            AlgorithmArg::EdDsa => SigningAlgorithm::EdDSA,
        }
    }
}

/// Runs a parsed command.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::CheckConfig { config, syntax_only } => check_config(&config, syntax_only),
        Command::Keys { command: KeysCommand::Generate { algorithm, out } } => {
            match crate::keys::generate_to_file(algorithm.into(), &out) {
                Ok(()) => {
                    println!("wrote a new {:?} signing key to {}", SigningAlgorithm::from(algorithm), out.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Migrate { config } => with_runtime_threads(1, migrate(config)),
        Command::RevokeUser { tenant, oid, admin_url, token_file } => {
            with_runtime_threads(1, revoke_user(tenant, oid, admin_url, token_file))
        }
        Command::Init { dir, tenant_id, client_id, groups, graph_mode, public_url } => {
            let args = init::InitArgs { dir, tenant_id, client_id, groups, graph_mode: graph_mode.into(), public_url };
            match init::init(&args) {
                Ok(config) => {
                    print!("{}", init::next_steps(&args, &config));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        // The public listener has its own worker threads (`server.workers`); this runtime runs
        // the background tasks and the admin listener.
        Command::Serve { config } => with_runtime_threads(1, serve(config)),
        #[cfg(feature = "demo")]
        Command::Mock { port } => with_runtime(async move { crate::demo::run_mock(port, shutdown_signal()).await }),
        #[cfg(feature = "demo")]
        Command::Demo { port, admin_port, app_port, identity_headers } => {
            let _logging = crate::logging::init("info", crate::config::LogFormat::Pretty, true);
            let ports = crate::demo::DemoPorts {
                gateway: port,
                admin: admin_port,
                app: app_port,
                identity_headers: identity_headers.into(),
            };
            with_runtime(async move { crate::demo::run(ports, shutdown_signal()).await })
        }
    }
}

fn check_config(path: &std::path::Path, syntax_only: bool) -> ExitCode {
    let files = if syntax_only { FileChecks::Skip } else { FileChecks::Read };
    match crate::config::check(path, &ProcessEnv, files) {
        Ok(raw) => {
            print!("{}", raw.redacted_yaml());
            eprintln!("configuration is valid{}", if syntax_only { " (key and secret files not read)" } else { "" });
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprint!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn revoke_user(
    tenant: String,
    oid: String,
    admin_url: String,
    token_file: Option<PathBuf>,
) -> Result<(), String> {
    let url = format!("{}/admin/users/{tenant}/{oid}/revoke", admin_url.trim_end_matches('/'));
    let mut req = reqwest::Client::new().post(&url).timeout(std::time::Duration::from_secs(10));
    if let Some(file) = token_file {
        let token = std::fs::read_to_string(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        req = req.bearer_auth(token.trim());
    }
    let resp = req.send().await.map_err(|e| format!("{url}: {}", crate::outbound::error_chain(&e)))?;
    match resp.status().as_u16() {
        204 => {
            println!(
                "revoked: every token of {oid} (tenant {tenant}) is refused on every replica until the user signs in again"
            );
            Ok(())
        }
        status => {
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            Err(format!("{url}: HTTP {status}: {}", body["error_description"].as_str().unwrap_or("no description")))
        }
    }
}

async fn migrate(path: PathBuf) -> Result<(), String> {
    let config = Config::load(&path, &ProcessEnv).map_err(|e| e.to_string())?;
    let pg = config.directory.postgres.as_ref().ok_or(
        "directory.postgres_url_file (or ENTRA_GATEWAY__DIRECTORY__POSTGRES_URL) is not set: nothing to migrate",
    )?;
    let mut roots = config.server.extra_ca.clone();
    roots.extend(pg.ca.iter().cloned());
    let tls = crate::proxy::client_tls(&roots)?;
    let applied = crate::directory::postgres::migrate_once(pg, tls).await?;
    match applied.now.as_slice() {
        [] => println!("the user directory's schema is up to date (version {})", applied.version),
        now => println!("applied migration(s) {now:?}: the user directory's schema is at version {}", applied.version),
    }
    Ok(())
}

async fn serve(path: PathBuf) -> Result<(), String> {
    let config = Config::load(&path, &ProcessEnv).map_err(|e| e.to_string())?;
    let logging = crate::logging::init(&config.logging.level, config.logging.format, config.logging.access_log);
    let listeners = crate::server::Listeners::bind(&config).await.map_err(|e| e.to_string())?;
    let addr = |l: &tokio::net::TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let (public, admin) = (addr(&listeners.public), addr(&listeners.admin));
    tracing::info!(public = %public, admin = %admin, version = env!("CARGO_PKG_VERSION"), "entra-gateway listening");
    crate::server::run(config, listeners, shutdown_signal(), Some(path), logging.dropped_lines())
        .await
        .map_err(|e| e.to_string())
}

#[cfg(feature = "demo")]
fn with_runtime<F: std::future::Future<Output = Result<(), String>>>(f: F) -> ExitCode {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    with_runtime_threads(threads, f)
}

fn with_runtime_threads<F: std::future::Future<Output = Result<(), String>>>(threads: usize, f: F) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
