//! Unit tests of the config: raw parsing, overrides, problems with key paths, the typed build.

use super::*;

const TENANT: &str = "11111111-1111-1111-1111-111111111111";
const CLIENT: &str = "22222222-2222-2222-2222-222222222222";
const GROUP: &str = "33333333-3333-3333-3333-333333333333";

fn minimal() -> String {
    format!(
        "entra:\n  tenants: [\"{TENANT}\"]\n  client_id: \"{CLIENT}\"\n  graph_mode: claims\n\
         authorization:\n  allowed_groups: [\"{GROUP}\"]\n\
         issuer:\n  issuer: https://gw.example\n  signing_keys:\n    - {{ kid: k1, private_key_file: /nonexistent.pem }}\n"
    )
}

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = check_yaml(&minimal(), &no_env(), FileChecks::Skip).unwrap();
    assert_eq!(c.entra.audiences, vec![format!("api://{CLIENT}"), CLIENT.to_string()]);
    assert_eq!(c.issuer.token_ttl, Duration::from_secs(900));
    assert_eq!(c.cache.group_ttl, Duration::from_secs(300));
    assert_eq!(c.server.listen, "0.0.0.0:8080");
    assert_eq!(c.issuer.signing_keys[0].algorithm, SigningAlgorithm::ES256);
}

#[test]
fn every_problem_is_listed_with_its_key_path() {
    let yaml = "entra:\n  tenants: [nope]\n  client_id: \"\"\n  authority_host: http://evil.example\n\
                authorization: {}\nissuer:\n  issuer: \"\"\n  signing_keys: []\nbogus: 1\n";
    let err = check_yaml(yaml, &no_env(), FileChecks::Skip).unwrap_err();
    let paths: Vec<_> = err.problems.iter().map(|p| p.path.as_str()).collect();
    for expected in [
        "bogus",
        "entra.tenants[0]",
        "entra.client_id",
        "entra.authority_host",
        "authorization.allowed_groups",
        "issuer.issuer",
        "issuer.signing_keys",
        "entra.client_secret_file",
    ] {
        assert!(paths.contains(&expected), "missing {expected} in {paths:?}");
    }
}

#[test]
fn unknown_nested_keys_are_errors() {
    let yaml = minimal() + "cache:\n  group_tll: 5m\n";
    let err = check_yaml(&yaml, &no_env(), FileChecks::Skip).unwrap_err();
    assert_eq!(err.problems[0].path, "cache.group_tll");
}

#[test]
fn env_overrides_scalars_lists_and_list_items() {
    let yaml = minimal() + "proxy:\n  routes:\n    - { path_prefix: /api/, upstream: \"http://127.0.0.1:1\" }\n";
    let env = vec![
        ("ENTRA_GATEWAY__CACHE__GROUP_TTL".to_string(), "2m".to_string()),
        ("ENTRA_GATEWAY__ENTRA__ACCEPTED_TOKEN_VERSIONS".to_string(), "[2]".to_string()),
        ("ENTRA_GATEWAY__PROXY__ROUTES__0__TIMEOUT".to_string(), "5s".to_string()),
        ("ENTRA_GATEWAY__PROXY__FORWARD_TOKEN".to_string(), "false".to_string()),
        ("ENTRA_GATEWAY__SERVER__RATE_LIMIT__EXCHANGE_PER_USER".to_string(), "null".to_string()),
        ("ENTRA_GATEWAY__ISSUER__AUDIENCE".to_string(), "\"123\"".to_string()),
        ("ENTRA_GATEWAY_CONFIG".to_string(), "/ignored".to_string()),
    ];
    let c = check_yaml(&yaml, &env, FileChecks::Skip).unwrap();
    assert_eq!(c.cache.group_ttl, Duration::from_secs(120));
    assert_eq!(c.entra.accepted_token_versions, vec![2]);
    assert_eq!(c.proxy.routes[0].timeout, Duration::from_secs(5));
    assert_eq!(c.proxy.forward_token, ForwardToken::Off);
    assert_eq!(c.server.rate_limit.exchange_per_user, None);
    assert_eq!(c.issuer.audience, "123", "a quoted value is a string, quotes removed");
}

#[test]
fn client_secret_in_yaml_is_refused_but_accepted_from_env() {
    let yaml = minimal().replace("graph_mode: claims", "graph_mode: app\n  client_secret: s3cr3t");
    let err = check_yaml(&yaml, &no_env(), FileChecks::Skip).unwrap_err();
    assert!(err.problems.iter().any(|p| p.path == "entra.client_secret"));
    let yaml = minimal().replace("graph_mode: claims", "graph_mode: app");
    let env = vec![("ENTRA_GATEWAY__ENTRA__CLIENT_SECRET".to_string(), "s3cr3t".to_string())];
    let c = check_yaml(&yaml, &env, FileChecks::Skip).unwrap();
    assert_eq!(c.entra.client_secret.as_ref().unwrap().expose(), "s3cr3t");
    assert!(!format!("{c:?}").contains("s3cr3t"));
    assert!(!c.redacted_yaml().contains("s3cr3t"));
}

#[test]
fn redis_password_is_redacted_when_printed() {
    let env =
        vec![("ENTRA_GATEWAY__CACHE__REDIS_URL".to_string(), "redis://user:hunter2@127.0.0.1:6379/0".to_string())];
    let c = check_yaml(&minimal(), &env, FileChecks::Skip).unwrap();
    let shown = c.redacted_yaml();
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("redis://user:redacted@127.0.0.1:6379/0"), "{shown}");
}

#[test]
fn missing_key_file_is_reported_unless_syntax_only() {
    assert!(check_yaml(&minimal(), &no_env(), FileChecks::Skip).is_ok());
    let err = check_yaml(&minimal(), &no_env(), FileChecks::Read).unwrap_err();
    assert_eq!(err.problems[0].path, "issuer.signing_keys[0].private_key_file");
}

#[test]
fn each_client_credential_names_what_it_needs() {
    let app = minimal().replace("graph_mode: claims", "graph_mode: app\n  client_credential: certificate");
    let err = check_yaml(&app, &no_env(), FileChecks::Skip).unwrap_err();
    let paths: Vec<_> = err.problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, vec!["entra.client_certificate_file", "entra.client_certificate_key_file"]);
    let wi = minimal().replace("graph_mode: claims", "graph_mode: obo\n  client_credential: workload_identity");
    assert!(check_yaml(&wi, &no_env(), FileChecks::Skip).is_ok(), "no secret needed");
}

#[test]
fn a_cloud_preset_sets_the_hosts_and_explicit_ones_win() {
    let c = check_yaml(
        &minimal().replace("graph_mode: claims", "graph_mode: claims\n  cloud: usgov"),
        &no_env(),
        FileChecks::Skip,
    )
    .unwrap();
    assert_eq!(c.entra.authority_host, "https://login.microsoftonline.us");
    assert_eq!(c.entra.graph_url, "https://graph.microsoft.us/v1.0");
    let yaml = minimal()
        .replace("graph_mode: claims", "graph_mode: claims\n  cloud: china\n  graph_url: https://g.example/v1.0");
    let c = check_yaml(&yaml, &no_env(), FileChecks::Skip).unwrap();
    assert_eq!(c.entra.authority_host, "https://login.chinacloudapi.cn");
    assert_eq!(c.entra.graph_url, "https://g.example/v1.0");
    let c = check_yaml(&minimal(), &no_env(), FileChecks::Skip).unwrap();
    assert_eq!(c.entra.authority_host, "https://login.microsoftonline.com");
}

#[test]
fn empty_allowed_groups_needs_explicit_allow_any() {
    let yaml = minimal().replace(&format!("allowed_groups: [\"{GROUP}\"]"), "allow_any_tenant_user: true");
    assert!(check_yaml(&yaml, &no_env(), FileChecks::Skip).is_ok());
}

#[test]
fn cors_entries_are_checked_and_identity_headers_are_never_exposed() {
    let yaml = format!(
        "{}server:\n  cors:\n    allowed_origins: [\"https://app.example.com/\", \"https://*.example.com\"]\n    \
         expose_headers: [x-request-id, X_Auth_Groups]\n",
        minimal()
    );
    let err = check_yaml(&yaml, &no_env(), FileChecks::Skip).unwrap_err();
    let paths: Vec<_> = err.problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, ["server.cors.allowed_origins[0]", "server.cors.expose_headers[1]"], "{err}");
    assert!(err.to_string().contains("never exposed to browsers"), "{err}");
    let ok = format!("{}server:\n  cors:\n    allowed_origins: [\"http://localhost:3000\"]\n", minimal());
    let c = check_yaml(&ok, &no_env(), FileChecks::Skip).unwrap();
    let cors = c.server.cors.unwrap();
    assert_eq!((cors.max_age, cors.allow_credentials), (Duration::from_secs(600), false));
    assert_eq!(cors.allowed_headers, ["authorization", "content-type", "x-request-id"]);
}

#[test]
fn a_misspelt_key_inside_a_route_is_reported_as_the_unknown_key_it_is() {
    let yaml = format!(
        "{}proxy:\n  routes:\n    - {{ path_prefx: /api/, upstream: \"http://127.0.0.1:3000\", colour: red }}\n",
        minimal()
    );
    let err = check_yaml(&yaml, &no_env(), FileChecks::Skip).unwrap_err();
    let shown: Vec<String> = err.problems.iter().map(|p| p.to_string()).collect();
    assert!(
        shown.iter().any(|p| p == "proxy.routes[0].path_prefx: unknown key (did you mean `path_prefix`?)"),
        "{shown:?}"
    );
    assert!(shown.iter().any(|p| p == "proxy.routes[0].colour: unknown key"), "{shown:?}");
    assert!(!shown.iter().any(|p| p.contains("path_prefix: required")), "{shown:?}");
}

#[test]
fn upstream_urls_with_credentials_or_a_query_are_refused_and_never_printed() {
    for (upstream, why) in [
        ("http://user:hunter2@127.0.0.1:3000", "user:password@"),
        ("http://127.0.0.1:3000/base?x=1", "?query"),
        ("http://127.0.0.1:3000/#frag", "?query"),
        ("ftp://127.0.0.1/", "http:// or https://"),
    ] {
        let yaml =
            format!("{}proxy:\n  routes:\n    - {{ path_prefix: /api/, upstream: \"{upstream}\" }}\n", minimal());
        let err = check_yaml(&yaml, &no_env(), FileChecks::Skip).unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains("proxy.routes[0].upstream") && shown.contains(why), "{upstream}: {shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
    let raw: RawConfig = serde_saphyr::from_str(&format!(
        "{}proxy:\n  routes:\n    - {{ path_prefix: /api/, upstream: \"http://u:hunter2@h:1\" }}\n",
        minimal()
    ))
    .unwrap();
    assert!(!raw.redacted_yaml().contains("hunter2"));
}

#[test]
fn a_value_set_by_an_environment_variable_names_it_in_every_problem() {
    let env = vec![
        ("ENTRA_GATEWAY__SERVER__MAX_CONNECTIONS".to_string(), "0".to_string()),
        ("ENTRA_GATEWAY__ENTRA__TENANTS".to_string(), "[\"nope\"]".to_string()),
    ];
    let err = check_yaml(&minimal(), &env, FileChecks::Skip).unwrap_err();
    let shown = err.to_string();
    assert!(shown.contains("server.max_connections: at least 1 (set by the environment variable ENTRA_GATEWAY__SERVER__MAX_CONNECTIONS)"), "{shown}");
    assert!(shown.contains("entra.tenants[0]") && shown.contains("ENTRA_GATEWAY__ENTRA__TENANTS"), "{shown}");
}

#[test]
fn a_misspelt_section_comes_first_without_its_follow_on_errors() {
    let yaml = minimal().replace("entra:\n", "entar:\n");
    let err = check_yaml(&yaml, &no_env(), FileChecks::Skip).unwrap_err();
    assert_eq!(err.problems[0].path, "entar", "{err}");
    assert!(err.problems[0].message.contains("did you mean `entra`"), "{err}");
    assert!(!err.problems.iter().any(|p| p.path == "entra" || p.path.starts_with("entra.")), "{err}");
}

#[test]
fn yaml_errors_and_duplicates_name_the_file_and_the_other_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, "server: [unclosed\n").unwrap();
    let err = check(&path, &no_env(), FileChecks::Skip).unwrap_err().to_string();
    assert!(err.contains(&path.display().to_string()) && !err.contains("<input>"), "{err}");
    let yaml = format!(
        "{}proxy:\n  routes:\n    - {{ path_prefix: /api/, upstream: \"http://a:1\" }}\n    - {{ path_prefix: /API/, upstream: \"http://b:1\" }}\n",
        minimal().replace(
            "signing_keys:\n    - { kid: k1, private_key_file: /nonexistent.pem }",
            "signing_keys:\n    - { kid: k1, private_key_file: /a.pem }\n    - { kid: k1, private_key_file: /b.pem }"
        )
    );
    let err = check_yaml(&yaml, &no_env(), FileChecks::Skip).unwrap_err().to_string();
    assert!(err.contains("proxy.routes[1].path_prefix: duplicate path_prefix `/API/` (also proxy.routes[0]"), "{err}");
    assert!(err.contains("issuer.signing_keys[1].kid: duplicate kid `k1` (also issuer.signing_keys[0])"), "{err}");
}

#[test]
fn a_missing_key_file_or_a_key_of_another_algorithm_says_how_to_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    let es = dir.path().join("es.pem");
    std::fs::write(&es, crate::keys::generate_pem(SigningAlgorithm::ES256).unwrap()).unwrap();
    let yaml = minimal().replace(
        "- { kid: k1, private_key_file: /nonexistent.pem }",
        &format!(
            "- {{ kid: k1, algorithm: RS256, private_key_file: {} }}\n    - {{ kid: k2, private_key_file: {} }}",
            es.display(),
            dir.path().join("gone.pem").display()
        ),
    );
    let err = check_yaml(&yaml, &no_env(), FileChecks::Read).unwrap_err().to_string();
    assert!(err.contains("is an ES256 key, not RS256: set `algorithm: ES256`"), "{err}");
    assert!(err.contains("entra-gateway keys generate --algorithm ES256 --out"), "{err}");
}

#[test]
fn trusting_every_address_as_a_proxy_is_refused() {
    for net in ["0.0.0.0/0", "::/0"] {
        let yaml = format!("{}server:\n  trusted_proxies: [\"10.0.0.0/8\", \"{net}\"]\n", minimal());
        let err = check_yaml(&yaml, &no_env(), FileChecks::Skip).unwrap_err().to_string();
        assert!(err.contains("server.trusted_proxies[1]") && err.contains("trusts every client"), "{err}");
    }
}

#[test]
fn check_config_reads_the_config_inside_a_rendered_configmap() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cm.yaml");
    let indented: String = minimal().lines().map(|l| format!("    {l}\n")).collect();
    std::fs::write(
        &path,
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{ name: gw }}\ndata:\n  config.yaml: |\n{indented}"),
    )
    .unwrap();
    let raw = check(&path, &no_env(), FileChecks::Skip).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(raw.entra.client_id, CLIENT);
}

#[test]
fn the_postgres_url_is_refused_in_the_file_checked_from_the_environment_and_never_printed() {
    let yaml = minimal() + "directory:\n  postgres_url: postgres://gw:hunter2@db.example:5432/gw\n";
    let err = check_yaml(&yaml, &no_env(), FileChecks::Skip).unwrap_err();
    let problem = err.problems.iter().find(|p| p.path == "directory.postgres_url").expect("refused in the file");
    assert!(problem.message.contains("ENTRA_GATEWAY__DIRECTORY__POSTGRES_URL"), "{problem}");
    assert!(!err.to_string().contains("hunter2"));

    let var = "ENTRA_GATEWAY__DIRECTORY__POSTGRES_URL".to_string();
    let env = vec![(var.clone(), "postgres://gw:hunter2@db.example:5432/gw?sslmode=verify-full".to_string())];
    let c = check_yaml(&minimal(), &env, FileChecks::Skip).unwrap();
    let shown = c.redacted_yaml();
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("postgres://gw:redacted@db.example:5432/gw"), "{shown}");

    let env = vec![(var, "postgres://gw:hunter2@db.example:5432/gw?sslmode=sometimes".to_string())];
    let err = check_yaml(&minimal(), &env, FileChecks::Skip).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("sslmode") && text.contains("postgres://gateway:PASSWORD@"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[test]
fn libpq_verify_modes_read_as_require_which_verifies_and_a_url_needs_a_host_and_a_user() {
    use tokio_postgres::config::SslMode;
    let c = build::postgres_config("postgres://gw@db.example/gw?sslmode=verify-full").unwrap();
    assert_eq!(c.get_ssl_mode(), SslMode::Require);
    let c = build::postgres_config("host=db.example user=gw sslmode=verify-ca").unwrap();
    assert_eq!(c.get_ssl_mode(), SslMode::Require);
    assert!(build::postgres_config("postgres://db.example/gw").unwrap_err().contains("no user"));
    assert!(build::postgres_config("user=gw dbname=gw").unwrap_err().contains("no host"));
    let yaml = minimal() + "directory:\n  postgres_pool_size: 0\n  postgres_ca_file: ca.pem\n";
    let err = check_yaml(&yaml, &no_env(), FileChecks::Skip).unwrap_err();
    let paths: Vec<_> = err.problems.iter().map(|p| p.path.as_str()).collect();
    assert!(
        paths.contains(&"directory.postgres_pool_size") && paths.contains(&"directory.postgres_ca_file"),
        "{paths:?}"
    );
}

#[test]
fn traces_are_on_with_an_endpoint_from_the_file_or_the_standard_variables() {
    let settings = |yaml: &str, env: &[(&str, &str)]| {
        let raw: TelemetryConfig = serde_saphyr::from_str(yaml).unwrap();
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut problems = Vec::new();
        let s = build::telemetry_for_test(&raw, &env, &mut problems);
        (s, problems)
    };
    let (off, _) = settings("{}", &[]);
    assert!(off.exporter.is_none());
    assert_eq!((off.sample_ratio, off.service_name.as_str()), (Some(1.0), "entra-gateway"));
    let (http, _) = settings("otlp_endpoint: http://collector:4318/", &[]);
    assert_eq!(http.exporter.unwrap().endpoint.as_deref(), Some("http://collector:4318/v1/traces"));
    let (grpc, _) = settings("{otlp_endpoint: 'http://collector:4317', otlp_protocol: grpc}", &[]);
    assert_eq!(grpc.exporter.unwrap().endpoint.as_deref(), Some("http://collector:4317"));
    let (from_env, _) = settings(
        "{}",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_TRACES_SAMPLER", "always_off"),
            ("OTEL_SERVICE_NAME", "checkout"),
        ],
    );
    let target = from_env.exporter.unwrap();
    assert_eq!((target.protocol, target.endpoint), (OtlpProtocol::Grpc, None), "the exporter reads the variable");
    assert_eq!((from_env.sample_ratio, from_env.service_name.as_str()), (None, "checkout"));
    let (disabled, _) = settings("otlp_endpoint: http://collector:4318", &[("OTEL_SDK_DISABLED", "true")]);
    assert!(disabled.exporter.is_none());
    let (_, problems) = settings("{otlp_endpoint: 'collector:4318', sample_ratio: 2}", &[]);
    let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, ["telemetry.sample_ratio", "telemetry.otlp_endpoint"]);
}

#[test]
fn a_ratio_from_the_environment_is_a_number_and_durations_stay_text() {
    let env = vec![("ENTRA_GATEWAY__TELEMETRY__SAMPLE_RATIO".to_string(), "0.25".to_string())];
    let c = check_yaml(&minimal(), &env, FileChecks::Skip).unwrap();
    assert_eq!(c.telemetry.sample_ratio, 0.25);
    let env = vec![("ENTRA_GATEWAY__CACHE__GROUP_TTL".to_string(), "1.5s".to_string())];
    assert!(check_yaml(&minimal(), &env, FileChecks::Skip).is_ok());
}
