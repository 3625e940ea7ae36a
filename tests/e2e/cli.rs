//! The command line, run as a user runs it: the real binary in a child process.

use std::process::Command;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_entra-gateway"));
    c.env_remove("ENTRA_GATEWAY_CONFIG");
    c
}

#[test]
fn check_config_accepts_the_shipped_example_once_its_ids_are_set_and_redacts_secrets() {
    let out = bin().args(["check-config", "--syntax-only", "--config", "config/example.yaml"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "the all-zero placeholder ids are refused");
    assert!(stderr.contains("entra.tenants[0]: the all-zero placeholder: put your tenant's ID"), "{stderr}");
    assert!(stderr.contains("entra.client_id: the all-zero placeholder: put the Application (client) ID"), "{stderr}");
    assert!(stderr.contains("(2 problem(s))"), "nothing else is wrong with it: {stderr}");
    let out = bin()
        .args(["check-config", "--syntax-only", "--config", "config/example.yaml"])
        .env("ENTRA_GATEWAY__ENTRA__TENANTS", "[c0ffee00-0000-4000-8000-00000000a0a0]")
        .env("ENTRA_GATEWAY__ENTRA__CLIENT_ID", "6e1f3c2a-4b5d-4e6f-8a7b-9c0d1e2f3a4b")
        .env("ENTRA_GATEWAY__CACHE__REDIS_URL", "redis://gw:s3cret-pw@127.0.0.1:6379/0")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("client_id"));
    assert!(!stdout.contains("s3cret-pw"), "{stdout}");
}

#[test]
fn check_config_finds_ten_mistakes_in_one_run_each_with_its_path_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ten.yaml");
    std::fs::write(
        &path,
        "server:\n  listen: 8080\n  shutdown_grace: twenty\n  max_connectionz: 5\n\
         entra:\n  tenants: [nope]\n  client_id: \"00000000-0000-0000-0000-000000000000\"\n  graph_mode: appp\n  clock_skew: soon\n\
         proxy:\n  routes:\n    - { path_prefix: /api/, upstream: \"http://x\", auth: maybe }\n    - { upstream: \"http://x\", timeout: fast }\n",
    )
    .unwrap();
    let out = bin()
        .args(["check-config", "--syntax-only", "--config"])
        .arg(&path)
        .env("ENTRA_GATEWAY__CACHE__GROUP_TLL", "5m")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for (path, says) in [
        ("server.listen", "expected a string"),
        ("server.shutdown_grace", "write a duration such as 500ms, 30s, 15m or 24h"),
        ("server.max_connectionz", "did you mean `max_connections`?"),
        ("entra.tenants[0]", "is not a GUID such as"),
        ("entra.client_id", "the all-zero placeholder"),
        ("entra.graph_mode", "expected one of `app`, `obo`, `claims`"),
        ("entra.clock_skew", "write a duration"),
        ("authorization", "missing: who may sign in"),
        ("issuer", "missing: the gateway's own tokens"),
        ("proxy.routes[0].auth", "expected `required` or `none`"),
        ("proxy.routes[1].timeout", "write a duration"),
        ("proxy.routes[1].path_prefix", "required"),
        (
            "cache.group_tll",
            "did you mean `group_ttl`?) (set by the environment variable ENTRA_GATEWAY__CACHE__GROUP_TLL)",
        ),
    ] {
        let line = stderr
            .lines()
            .find(|l| l.contains(&format!(" {path}: ")))
            .unwrap_or_else(|| panic!("{path} missing:\n{stderr}"));
        assert!(line.contains(says), "{path}: {line}");
    }
    assert!(!stderr.contains("routes.0"), "one path notation: {stderr}");
    let empty = dir.path().join("empty.yaml");
    std::fs::write(&empty, "").unwrap();
    let out = bin().args(["check-config", "--syntax-only", "--config"]).arg(&empty).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the file is empty: start from config/example.yaml, or run `entra-gateway init`"),
        "{stderr}"
    );
    assert!(!stderr.contains(".: missing field"), "{stderr}");
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
    for (alg, spelled) in [("ES256", "es256"), ("RS256", "rs256"), ("EdDSA", "EdDSA")] {
        let path = dir.path().join(format!("{alg}.pem"));
        let out = bin().args(["keys", "generate", "--algorithm", spelled, "--out"]).arg(&path).output().unwrap();
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

#[test]
fn keys_generate_says_why_it_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.pem");
    assert!(bin().args(["keys", "generate", "--out"]).arg(&path).output().unwrap().status.success());
    let out = bin().args(["keys", "generate", "--out"]).arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("exists: refusing to overwrite it"), "{stderr}");
    let out = bin().args(["keys", "generate", "--out"]).arg(dir.path().join("missing/k.pem")).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot write") && !stderr.contains("cannot read"), "{stderr}");
}

#[test]
fn the_demo_refuses_a_port_in_use_instead_of_moving_silently() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let out = bin().args(["demo", "--port", &port, "--admin-port", "0"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the demo started on another port");
    assert!(
        stderr.contains(&format!("127.0.0.1:{port} is in use: pass --port with a free port (0 picks one)")),
        "{stderr}"
    );
}

#[test]
fn init_writes_a_config_that_check_config_accepts_once_the_secret_is_there() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("gw");
    let out = bin()
        .args(["init", "--tenant-id", "c0ffee00-0000-4000-8000-00000000a0a0", "--client-id"])
        .arg("6e1f3c2a-4b5d-4e6f-8a7b-9c0d1e2f3a4b")
        .args(["--group", "0a1b2c3d-0000-4000-8000-00000000e001", "--dir"])
        .arg(&target)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("check-config --config"));
    std::fs::write(target.join("secrets/client-secret"), "s3cr3t\n").unwrap();
    // From another working directory: the paths in gateway.yaml are relative to it.
    let out =
        bin().current_dir("/").args(["check-config", "--config"]).arg(target.join("gateway.yaml")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = bin().args(["init", "--tenant-id", "nope", "--client-id", "x"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a GUID"));
}
