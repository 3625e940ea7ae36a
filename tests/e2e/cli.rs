//! The command line, run as a user runs it: the real binary in a child process.

use std::process::Command;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_entra-gateway"));
    c.env_remove("ENTRA_GATEWAY_CONFIG");
    c
}

#[test]
fn check_config_accepts_the_shipped_example_in_syntax_only_mode_and_redacts_secrets() {
    let out = bin()
        .args(["check-config", "--syntax-only", "--config", "config/example.yaml"])
        .env("ENTRA_GATEWAY__CACHE__REDIS_URL", "redis://gw:s3cret-pw@127.0.0.1:6379/0")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("client_id"));
    assert!(!stdout.contains("s3cret-pw"), "{stdout}");
}

#[test]
fn check_config_without_syntax_only_reports_the_missing_key_and_secret_files() {
    let out = bin().args(["check-config", "--config", "config/example.yaml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("issuer.signing_keys[0].private_key_file"), "{stderr}");
    assert!(stderr.contains("entra.client_secret_file"), "{stderr}");
}

#[test]
fn check_config_lists_every_problem_with_its_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "entra:\n  tenants: [not-a-guid]\n  client_id: x\n  graph_url: http://graph.example\nauthorization: {}\nissuer: {issuer: nope}\nextra_section: 1\n",
    )
    .unwrap();
    let out = bin().args(["check-config", "--syntax-only", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for path in [
        "extra_section",
        "entra.tenants[0]",
        "entra.client_id",
        "entra.graph_url",
        "authorization.allowed_groups",
        "issuer.issuer",
        "issuer.signing_keys",
    ] {
        assert!(stderr.contains(&format!("{path}: ")), "{path} missing in:\n{stderr}");
    }
}

#[test]
fn the_demo_config_is_valid() {
    let out = bin().args(["check-config", "--syntax-only", "--config", "config/demo.yaml"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn keys_generate_writes_a_private_key_file_that_the_gateway_loads() {
    let dir = tempfile::tempdir().unwrap();
    for alg in ["ES256", "RS256", "EdDSA"] {
        let path = dir.path().join(format!("{alg}.pem"));
        let out = bin().args(["keys", "generate", "--algorithm", alg, "--out"]).arg(&path).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let algorithm = serde_json::from_value(serde_json::json!(alg)).unwrap();
        entra_gateway::keys::SigningKey::load("k", algorithm, &path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let again = bin().args(["keys", "generate", "--algorithm", alg, "--out"]).arg(&path).output().unwrap();
        assert!(!again.status.success(), "never overwrites a key");
    }
}
