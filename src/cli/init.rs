//! `entra-gateway init`: a starting configuration for your own tenant, in a directory.
//!
//! Owns: writing `gateway.yaml` (paths relative to it, so it works from any directory), a new
//! signing key under `keys/`, the `secrets/` directory for the client secret, and printing the
//! next steps. Must not: overwrite anything, or write a secret it was not given.

use std::path::{Path, PathBuf};

use crate::config::GraphMode;
use crate::keys::{SigningAlgorithm, generate_to_file};

/// What `init` is told.
pub struct InitArgs {
    pub dir: PathBuf,
    pub tenant_id: String,
    pub client_id: String,
    pub groups: Vec<String>,
    pub graph_mode: GraphMode,
    pub public_url: String,
}

/// Writes the files; returns the config file's path.
pub fn init(a: &InitArgs) -> Result<PathBuf, String> {
    let config = a.dir.join("gateway.yaml");
    if config.exists() {
        return Err(format!("{} exists: refusing to overwrite it (choose another --dir)", config.display()));
    }
    std::fs::create_dir_all(a.dir.join("keys")).map_err(|e| format!("cannot create {}/keys: {e}", a.dir.display()))?;
    let secrets = a.dir.join("secrets");
    std::fs::create_dir_all(&secrets).map_err(|e| format!("cannot create {}: {e}", secrets.display()))?;
    let key = a.dir.join("keys/k1.pem");
    generate_to_file(SigningAlgorithm::ES256, &key).map_err(|e| e.to_string())?;
    std::fs::write(&config, yaml(a)).map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    Ok(config)
}

fn yaml(a: &InitArgs) -> String {
    let authorization = if a.groups.is_empty() {
        "  # No group given: every user of the tenant may sign in. List group Object IDs instead:\n  \
         # allowed_groups: [\"<group-object-id>\"]\n  allowed_groups: []\n  allow_any_tenant_user: true\n"
            .to_string()
    } else {
        let list: Vec<String> = a.groups.iter().map(|g| format!("\"{g}\"")).collect();
        format!("  allowed_groups: [{}]\n", list.join(", "))
    };
    let (mode, credential) = match a.graph_mode {
        GraphMode::Claims => ("claims", "  # graph_mode claims: no Graph calls, so no client secret.\n".to_string()),
        GraphMode::App => ("app", SECRET.to_string()),
        GraphMode::Obo => ("obo", SECRET.to_string()),
    };
    format!(
        "# entra-gateway configuration, written by `entra-gateway init`. Every key, with its default,\n\
         # is in config/example.yaml of the project. Relative paths are relative to this file.\n\
         # Check it:  entra-gateway check-config --config {config}\n\
         # Run it:    entra-gateway serve --config {config}\n\
         server:\n  listen: \"127.0.0.1:8080\"\n  admin_listen: \"127.0.0.1:9090\"\n\
         entra:\n  tenants: [\"{tenant}\"]\n  client_id: \"{client}\"\n  graph_mode: {mode}\n{credential}\
         authorization:\n{authorization}\
         issuer:\n  issuer: \"{url}\"   # the gateway's public base URL (`iss` of its tokens)\n  signing_keys:\n    \
         - {{ kid: k1, algorithm: ES256, private_key_file: keys/k1.pem }}\n\
         proxy:\n  routes: []\n  # Add your services, e.g.:\n  \
         # - {{ path_prefix: \"/api/\", upstream: \"http://127.0.0.1:3000\", auth: required }}\n",
        config = display(&a.dir.join("gateway.yaml")),
        tenant = a.tenant_id,
        client = a.client_id,
        url = a.public_url,
    )
}

const SECRET: &str = "  # The app registration's client secret, in this file (or the variable\n  \
                      # ENTRA_GATEWAY__ENTRA__CLIENT_SECRET). Never put it in this YAML.\n  \
                      client_secret_file: secrets/client-secret\n";

fn display(p: &Path) -> String {
    p.display().to_string()
}

/// What to do next, for the person who ran `init`.
pub fn next_steps(a: &InitArgs, config: &Path) -> String {
    let c = display(config);
    let secret = match a.graph_mode {
        GraphMode::Claims => String::new(),
        _ => format!(
            "  1. The config reads the client secret from {} (client_secret_file); put the app\n     registration's secret there (Entra admin center: App registrations > your app >\n     Certificates & secrets), or leave the file absent and set ENTRA_GATEWAY__ENTRA__CLIENT_SECRET.\n",
            display(&a.dir.join("secrets/client-secret"))
        ),
    };
    format!(
        "wrote {c} and a new ES256 signing key {}\n\nNext:\n{secret}  \
         2. entra-gateway check-config --config {c}\n  \
         3. entra-gateway serve --config {c}\n  \
         4. Exchange a real token (README: \"Run it for your tenant\"):\n     \
         curl -s -X POST http://127.0.0.1:8080/auth/exchange -H \"Authorization: Bearer $ENTRA_TOKEN\"\n",
        display(&a.dir.join("keys/k1.pem"))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path, mode: GraphMode, groups: &[&str]) -> InitArgs {
        InitArgs {
            dir: dir.to_path_buf(),
            tenant_id: "c0ffee00-0000-4000-8000-00000000a0a0".into(),
            client_id: "6e1f3c2a-4b5d-4e6f-8a7b-9c0d1e2f3a4b".into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            graph_mode: mode,
            public_url: "http://127.0.0.1:8080".into(),
        }
    }

    #[test]
    fn the_written_config_loads_from_another_directory_and_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let a = args(dir.path(), GraphMode::Claims, &["0a1b2c3d-0000-4000-8000-00000000e001"]);
        let config = init(&a).unwrap();
        let loaded = crate::config::Config::load(&config, &Vec::new()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loaded.entra.client_id, "6e1f3c2a-4b5d-4e6f-8a7b-9c0d1e2f3a4b");
        // The live reload's first check reads an unchanged file as the one loaded (no reload).
        assert_eq!(loaded.source_sha256, crate::reload::hash(&config));
        assert!(loaded.source_sha256.is_some());
        assert!(init(&a).unwrap_err().contains("refusing to overwrite"));
    }

    #[test]
    fn app_mode_asks_for_the_secret_file_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let a = args(dir.path(), GraphMode::App, &[]);
        let config = init(&a).unwrap();
        let err = crate::config::check(&config, &Vec::new(), crate::config::FileChecks::Read).unwrap_err();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, vec!["entra.client_secret_file"], "{err}");
        assert!(err.problems[0].message.contains("printf %s"), "the fix: {err}");
        // The documented variable works with init's own config while the file is absent.
        let env = vec![("ENTRA_GATEWAY__ENTRA__CLIENT_SECRET".to_string(), "from-env".to_string())];
        assert!(crate::config::check(&config, &env, crate::config::FileChecks::Read).is_ok());
        std::fs::write(dir.path().join("secrets/client-secret"), "s3cr3t").unwrap();
        assert!(crate::config::check(&config, &Vec::new(), crate::config::FileChecks::Read).is_ok());
        let both = crate::config::check(&config, &env, crate::config::FileChecks::Read).unwrap_err();
        assert!(both.to_string().contains("keep one"), "{both}");
        let steps = next_steps(&a, &config);
        assert!(
            steps.contains("client_secret_file") && steps.contains("ENTRA_GATEWAY__ENTRA__CLIENT_SECRET"),
            "{steps}"
        );
    }
}
