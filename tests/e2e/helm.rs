//! The Helm chart, validated with the real tools (installed into target/tools by
//! `.ci/tools.sh`, which `bash .ci/test.sh` runs): `helm lint --strict` and `helm template` on
//! Helm 3 and Helm 4 with the default values and every example; every rendered manifest (and the
//! examples' own manifests) against the Kubernetes schemas with `kubernetes-validate --strict`;
//! the rendered config file through `entra-gateway check-config --syntax-only`, so that values and
//! config can never drift apart; and bad values refused by the schema with a readable message.

use std::path::{Path, PathBuf};
use std::process::Command;

const CHART: &str = "helm/entra-gateway";
const EXAMPLES: [&str; 6] = ["sidecar", "ingress-nginx", "traefik", "envoy-gateway", "istio", "traefik-gateway-api"];
/// The oldest Kubernetes the chart supports (native preStop sleep) and the newest schema set.
const KUBERNETES: [&str; 2] = ["1.30.0", "1.37.0"];
/// Custom resources with no schema in kubernetes-validate: allowed to warn, nothing else is.
const CRD_KINDS: [&str; 7] = [
    "ServiceMonitor",
    "Middleware",
    "HTTPRoute",
    "SecurityPolicy",
    "ClientTrafficPolicy",
    "ReferenceGrant",
    "AuthorizationPolicy",
];

fn tool(rel: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools").join(rel);
    assert!(p.exists(), "{} is missing: run `bash .ci/tools.sh` (part of `bash .ci/test.sh`)", p.display());
    p
}

fn helms() -> Vec<(&'static str, PathBuf)> {
    vec![("helm3", tool("helm3/helm")), ("helm4", tool("helm4/helm"))]
}

/// The values every install must set (the defaults are placeholders the chart refuses).
const REQUIRED: [&str; 6] = [
    "--set",
    "entra.tenantIds[0]=c0ffee00-0000-4000-8000-00000000a0a0",
    "--set",
    "entra.clientId=6e1f3c2a-4b5d-4e6f-8a7b-9c0d1e2f3a4b",
    "--set",
    "image.repository=registry.example.com/entra-gateway",
];
/// No image is published yet: every install names its own.
const IMAGE: [&str; 2] = ["--set", "image.repository=registry.example.com/entra-gateway"];

fn values_sets() -> Vec<(String, Vec<String>)> {
    let mut sets = vec![("default values with the required ids".to_string(), REQUIRED.map(String::from).to_vec())];
    for e in EXAMPLES {
        let mut args = vec!["-f".into(), format!("deploy/examples/{e}/values.yaml")];
        args.extend(IMAGE.map(String::from));
        sets.push((format!("example {e}"), args));
    }
    let mut browser = REQUIRED.map(String::from).to_vec();
    for v in [
        "server.corsAllowedOrigins={https://app.example.com,https://*.example.org}",
        "logging.accessLog=false",
        "server.workers=2",
    ] {
        browser.extend(["--set".to_string(), v.to_string()]);
    }
    sets.push(("CORS origins, access log off, two workers".to_string(), browser));
    let mut continuous = REQUIRED.map(String::from).to_vec();
    for v in [
        "continuousAccess.enabled=true",
        "continuousAccess.pollInterval=15s",
        "entra.graphMode=claims",
        "proxy.routes[0].pathPrefix=/payments/",
        "proxy.routes[0].upstream=http://payments:8080",
        "proxy.routes[0].authContext=c1",
        "proxy.routes[0].forwardToken=session",
    ] {
        continuous.extend(["--set".to_string(), v.to_string()]);
    }
    sets.push(("continuous access in claims mode, a step-up route".to_string(), continuous));
    let mut postgres = REQUIRED.map(String::from).to_vec();
    for v in [
        "directory.postgres.existingSecret=gateway-postgres",
        "directory.postgres.caSecret=postgres-ca",
        "directory.postgres.poolSize=4",
        "directory.postgres.timeout=3s",
        "telemetry.otlpEndpoint=http://otel-collector.observability:4318",
    ] {
        postgres.extend(["--set".to_string(), v.to_string()]);
    }
    postgres.extend(["--set-json".to_string(), "telemetry.sampleRatio=0.1".to_string()]);
    sets.push(("the user directory in PostgreSQL (URL and CA from Secrets), traces at 10%".to_string(), postgres));
    sets
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().expect("tool runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn template(helm: &Path, args: &[String]) -> (bool, String, String) {
    run(Command::new(helm).args(["template", "entra-gateway", CHART, "--namespace", "auth"]).args(args))
}

/// Validates a manifest file; fails on any problem or a warning about a non-CRD kind.
fn kubernetes_validate(file: &Path, what: &str) {
    for version in KUBERNETES {
        let (ok, stdout, stderr) =
            run(Command::new(tool("venv/bin/kubernetes-validate")).args(["--strict", "-k", version]).arg(file));
        let text = format!("{stdout}{stderr}");
        assert!(ok, "{what} is invalid for Kubernetes {version}:\n{text}");
        for line in text.lines().filter(|l| !l.starts_with("INFO")) {
            assert!(CRD_KINDS.iter().any(|k| line.contains(&format!("kind {k} "))), "{what} ({version}): {line}");
        }
        // A file of custom resources only is validated against their CRDs instead (below).
        let only_crds = text.lines().any(|l| l.starts_with("WARN"));
        assert!(text.contains("passed") || only_crds, "{what}: nothing validated:\n{text}");
    }
}

/// The documents of a multi-document YAML stream.
fn documents(yaml: &str) -> Vec<serde_json::Value> {
    serde_saphyr::from_multiple::<serde_json::Value>(yaml).unwrap().into_iter().filter(|d| !d.is_null()).collect()
}

#[test]
fn the_chart_lints_strictly_on_helm_3_and_4_with_every_values_set() {
    for (name, helm) in helms() {
        for (set, args) in values_sets() {
            let (ok, out, err) = run(Command::new(&helm).args(["lint", "--strict", CHART]).args(&args));
            assert!(ok, "{name} lint --strict, {set}:\n{out}{err}");
            assert!(out.contains("0 chart(s) failed"), "{name}, {set}: {out}");
        }
    }
}

#[test]
fn rendered_manifests_and_example_manifests_pass_the_kubernetes_schemas() {
    let dir = tempfile::tempdir().unwrap();
    for (name, helm) in helms() {
        for (i, (set, args)) in values_sets().into_iter().enumerate() {
            let (ok, out, err) = template(&helm, &args);
            assert!(ok, "{name} template, {set}:\n{err}");
            let kinds: Vec<String> =
                documents(&out).iter().map(|d| d["kind"].as_str().unwrap_or("?").to_string()).collect();
            for kind in ["Deployment", "Service", "ConfigMap", "ServiceAccount", "NetworkPolicy", "Pod"] {
                assert!(kinds.iter().any(|k| k == kind), "{name}, {set}: no {kind} in {kinds:?}");
            }
            let file = dir.path().join(format!("{name}-{i}.yaml"));
            std::fs::write(&file, &out).unwrap();
            kubernetes_validate(&file, &format!("{name} render of {set}"));
        }
    }
    for e in EXAMPLES {
        for entry in std::fs::read_dir(format!("deploy/examples/{e}")).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().is_some_and(|n| !n.to_string_lossy().ends_with("values.yaml")) {
                kubernetes_validate(&path, &path.display().to_string());
            }
        }
    }
}

#[test]
fn the_rendered_config_file_passes_check_config_for_every_values_set() {
    let dir = tempfile::tempdir().unwrap();
    let (_, helm) = &helms()[0];
    for (i, (set, args)) in values_sets().into_iter().enumerate() {
        let (ok, out, err) = template(helm, &args);
        assert!(ok, "{set}: {err}");
        let docs = documents(&out);
        let config = docs
            .iter()
            .find(|d| d["kind"] == "ConfigMap")
            .and_then(|d| d["data"]["config.yaml"].as_str())
            .unwrap_or_else(|| panic!("{set}: no config.yaml in the ConfigMap"));
        let path = dir.path().join(format!("config-{i}.yaml"));
        std::fs::write(&path, config).unwrap();
        let (ok, _, err) = run(Command::new(env!("CARGO_BIN_EXE_entra-gateway"))
            .args(["check-config", "--syntax-only", "--config"])
            .arg(&path));
        assert!(ok, "{set}: the chart renders a config the gateway refuses:\n{err}\n{config}");
        if set.starts_with("CORS") {
            for line in [
                r#"allowed_origins: ["https://app.example.com","https://*.example.org"]"#,
                "access_log: false",
                "workers: 2",
            ] {
                assert!(config.contains(line), "{set}: `{line}` missing in\n{config}");
            }
        }
        // The pod mounts what the config names.
        let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
        let mounts: Vec<&str> = deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["mountPath"].as_str().unwrap())
            .collect();
        let files: Vec<&str> = config.split("_file: \"").skip(1).filter_map(|rest| rest.split('"').next()).collect();
        assert!(!files.is_empty(), "{set}: the config names no file");
        for file in files {
            assert!(mounts.iter().any(|m| file.starts_with(m)), "{set}: {file} is not mounted ({mounts:?})");
        }
    }
}

#[test]
fn the_deployment_is_hardened_and_rolls_on_config_changes() {
    let (_, helm) = &helms()[0];
    let render = |extra: &[&str]| {
        let args: Vec<String> = REQUIRED.iter().chain(extra).map(|s| s.to_string()).collect();
        let (ok, out, err) = template(helm, &args);
        assert!(ok, "{err}");
        documents(&out).into_iter().find(|d| d["kind"] == "Deployment").unwrap()
    };
    let d = render(&[]);
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/.well-known/jwks.json");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "http", "liveness through the public workers");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(c["lifecycle"]["preStop"]["sleep"]["seconds"], 5);
    assert!(pod["topologySpreadConstraints"].as_array().is_some_and(|t| t.len() == 2));
    let checksum = |d: &serde_json::Value| {
        d["spec"]["template"]["metadata"]["annotations"]["checksum/config"].as_str().unwrap().to_string()
    };
    assert_ne!(
        checksum(&d),
        checksum(&render(&["--set", "authorization.allowedGroups[0]=0a1b2c3d-0000-4000-8000-00000000e009"]))
    );
    // Workload identity: labelled pod, annotated service account, no secret volume.
    let args: Vec<String> =
        REQUIRED.iter().chain(&["--set", "entra.credential.type=workloadIdentity"]).map(|s| s.to_string()).collect();
    let (ok, out, err) = template(helm, &args);
    assert!(ok, "{err}");
    let docs = documents(&out);
    let d = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(d["spec"]["template"]["metadata"]["labels"]["azure.workload.identity/use"], "true");
    let sa = docs.iter().find(|d| d["kind"] == "ServiceAccount").unwrap();
    assert_eq!(
        sa["metadata"]["annotations"]["azure.workload.identity/client-id"],
        "6e1f3c2a-4b5d-4e6f-8a7b-9c0d1e2f3a4b"
    );
    assert!(!out.contains("/var/run/secrets/entra\""), "no client-secret mount with workload identity");
}

/// Every manifest of a render with `extra` on top of the required values.
fn render_all(helm: &Path, extra: &[&str]) -> Vec<serde_json::Value> {
    let args: Vec<String> = REQUIRED.iter().chain(extra).map(|s| s.to_string()).collect();
    let (ok, out, err) = template(helm, &args);
    assert!(ok, "{extra:?}: {err}");
    documents(&out)
}

fn kind<'a>(docs: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

#[test]
fn the_kubernetes_posture_holds_on_the_rendered_chart() {
    let (_, helm) = &helms()[0];
    let docs = render_all(helm, &[]);
    // The admin port is never on the public Service, and has no Service unless asked for.
    let services = kind(&docs, "Service");
    assert_eq!(services.len(), 1, "{services:?}");
    let ports: Vec<&str> =
        services[0]["spec"]["ports"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(ports, ["http"]);
    let with_monitor =
        render_all(helm, &["--set", "serviceMonitor.enabled=true", "--set", "service.type=LoadBalancer"]);
    let admin = kind(&with_monitor, "Service")
        .into_iter()
        .find(|s| s["metadata"]["name"].as_str().unwrap().ends_with("-admin"))
        .unwrap();
    assert_eq!(admin["spec"]["type"], "ClusterIP", "never published by service.type");
    // The NetworkPolicy is on, limits egress, keeps the metadata address out.
    let np = kind(&docs, "NetworkPolicy")[0];
    assert_eq!(np["spec"]["policyTypes"], serde_json::json!(["Ingress", "Egress"]));
    let egress = np["spec"]["egress"].to_string();
    assert!(egress.contains("169.254.0.0/16") && egress.contains("\"port\":443"), "{egress}");
    assert!(egress.contains("\"port\":53"));
    let pod = &kind(&docs, "Deployment")[0]["spec"]["template"]["spec"];
    assert_eq!(pod["enableServiceLinks"], false);
    assert_eq!(pod["automountServiceAccountToken"], false);
    // One replica: no PDB (it would block every drain); two: one.
    assert!(kind(&render_all(helm, &["--set", "replicaCount=1"]), "PodDisruptionBudget").is_empty());
    assert_eq!(kind(&render_all(helm, &["--set", "replicaCount=2"]), "PodDisruptionBudget").len(), 1);
    // A digest pins the image.
    let digest = format!("sha256:{}", "ab".repeat(32));
    let pinned = render_all(helm, &["--set", &format!("image.digest={digest}")]);
    assert_eq!(
        kind(&pinned, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["image"],
        format!("registry.example.com/entra-gateway@{digest}")
    );
    // The Redis URL from a Secret is a mounted file, never an environment variable.
    let redis = render_all(
        helm,
        &[
            "--set",
            "redis.existingSecret=redis",
            "--set",
            "redis.username=gateway",
            "--set",
            "redis.passwordSecret=redis-pw",
        ],
    );
    let d = kind(&redis, "Deployment")[0];
    assert!(!d.to_string().contains("ENTRA_GATEWAY__CACHE__REDIS_URL"), "{d}");
    let config = kind(&redis, "ConfigMap")[0]["data"]["config.yaml"].as_str().unwrap();
    assert!(
        config.contains("redis_url_file: \"/var/run/secrets/redis-url/url\"") && config.contains("redis_password_file"),
        "{config}"
    );
    // The PostgreSQL URL and CA are mounted files; the NetworkPolicy lets the pod reach 5432.
    let pg = render_all(
        helm,
        &["--set", "directory.postgres.existingSecret=gateway-postgres", "--set", "directory.postgres.caSecret=pg-ca"],
    );
    let d = kind(&pg, "Deployment")[0];
    assert!(!d.to_string().contains("POSTGRES_URL"), "{d}");
    let volumes = d["spec"]["template"]["spec"]["volumes"].to_string();
    assert!(volumes.contains("gateway-postgres") && volumes.contains("pg-ca"), "{volumes}");
    let config = kind(&pg, "ConfigMap")[0]["data"]["config.yaml"].as_str().unwrap();
    assert!(
        config.contains("postgres_url_file: \"/var/run/secrets/postgres-url/url\"")
            && config.contains("postgres_ca_file: \"/var/run/secrets/postgres-ca/ca.crt\""),
        "{config}"
    );
    let egress = kind(&pg, "NetworkPolicy")[0]["spec"]["egress"].to_string();
    assert!(egress.contains("5432"), "{egress}");
    // Traces: the config names the receiver; the NetworkPolicy lets the pod reach its port.
    let traced = render_all(
        helm,
        &[
            "--set",
            "telemetry.otlpEndpoint=http://otel-collector.observability:4317",
            "--set",
            "telemetry.otlpProtocol=grpc",
        ],
    );
    let config = kind(&traced, "ConfigMap")[0]["data"]["config.yaml"].as_str().unwrap();
    assert!(
        config.contains("otlp_endpoint: \"http://otel-collector.observability:4317\"")
            && config.contains("otlp_protocol: grpc"),
        "{config}"
    );
    assert!(kind(&traced, "NetworkPolicy")[0]["spec"]["egress"].to_string().contains("4317"));
    // Workload identity with a sidecar: the token goes to the gateway only; the sidecar gets
    // the securityContext defaults.
    let wi = render_all(
        helm,
        &[
            "--set",
            "entra.credential.type=workloadIdentity",
            "--set",
            "sidecar.enabled=true",
            "--set",
            "sidecar.container.name=app",
            "--set",
            "sidecar.container.image=app:1",
        ],
    );
    let pod = &kind(&wi, "Deployment")[0]["spec"]["template"];
    assert_eq!(pod["metadata"]["annotations"]["azure.workload.identity/skip-containers"], "app");
    assert_eq!(pod["spec"]["automountServiceAccountToken"], true);
    assert_eq!(pod["spec"]["containers"][1]["securityContext"]["readOnlyRootFilesystem"], true);
    // `helm test` runs check-config on the rendered config in the cluster.
    let test = kind(&docs, "Pod").into_iter().find(|p| p["metadata"]["annotations"]["helm.sh/hook"] == "test").unwrap();
    assert_eq!(test["spec"]["containers"][0]["args"][0], "check-config");
    assert_eq!(test["spec"]["containers"][0]["args"][1], "--syntax-only");
}

#[test]
fn notes_are_generated_from_the_values() {
    let (_, helm) = &helms()[0];
    // `helm template` does not render NOTES.txt: a copy of the chart with one more template
    // renders the same named template into a ConfigMap.
    let copy = tempfile::tempdir().unwrap();
    let chart = copy.path().join("entra-gateway");
    copy_dir(Path::new(CHART), &chart);
    std::fs::write(
        chart.join("templates/notes-probe.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: notes-probe }\ndata:\n  notes: {{ include \"entra-gateway.notes\" . | toJson }}\n",
    )
    .unwrap();
    let notes = |extra: &[&str]| {
        let args: Vec<String> = ["template", "notes"]
            .iter()
            .map(|s| s.to_string())
            .chain([chart.display().to_string(), "--namespace".into(), "auth".into()])
            .chain(REQUIRED.iter().chain(extra).map(|s| s.to_string()))
            .chain(["--show-only".to_string(), "templates/notes-probe.yaml".to_string()])
            .collect();
        let (ok, out, err) = run(Command::new(helm).args(&args));
        assert!(ok, "{err}");
        documents(&out)[0]["data"]["notes"].as_str().unwrap().to_string()
    };
    let plain = notes(&["-f", "deploy/examples/sidecar/values.yaml"]);
    for expected in [
        "--from-file=k-2026-11.pem --from-file=k-2026-08.pem",
        "http://notes-entra-gateway.auth.svc:80/auth/exchange",
        "Forward-auth:        off",
    ] {
        assert!(plain.contains(expected), "missing `{expected}` in:\n{plain}");
    }
    assert!(!plain.contains("k1.pem"), "{plain}");
    let tls = notes(&[
        "--set",
        "server.tls.existingSecret=gw-tls",
        "--set",
        "service.port=443",
        "--set",
        "proxy.forwardAuth.originalUri=x-forwarded-uri",
        "--set",
        "redis.existingSecret=redis-url",
        "--set",
        "redis.caSecret=redis-ca",
        "--set",
        "directory.postgres.existingSecret=gateway-postgres",
    ]);
    for expected in [
        "https://notes-entra-gateway.auth.svc:443/auth/exchange",
        "https://notes-entra-gateway.auth.svc:443/auth/verify",
        "gw-tls",
        "redis-url",
        "redis-ca",
        "gateway-postgres: key postgres-url = the PostgreSQL URL",
    ] {
        assert!(tls.contains(expected), "missing `{expected}` in:\n{tls}");
    }
    assert!(!tls.contains("http://notes"), "{tls}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn bad_values_fail_at_template_time_with_every_problem_in_one_message() {
    for (name, helm) in helms() {
        let args: Vec<String> = [
            "--set", "entra.tenantIds[0]=c0ffee00-0000-4000-8000-00000000a0a0",
            "--set", "entra.clientId=6e1f3c2a-4b5d-4e6f-8a7b-9c0d1e2f3a4b",
            "--set-json", "authorization.allowedGroups=null",
            "--set-json", r#"proxy.routes=[{"pathPrefix":"/api/","upstream":"http://a:1"},{"pathPrefix":"/API/","upstream":"http://b:1"}]"#,
            "--set", "server.trustedProxies[0]=0.0.0.0/0",
            "--set", "issuer.signingKeys.existingSecret=",
            "--set", "sidecar.enabled=true", "--set", "sidecar.container.name=app", "--set", "sidecar.container.image=app:1",
            "--set-json", r#"sidecar.container.ports=[{"containerPort":3000}]"#,
            "--set-json", "networkPolicy.publicFrom=[]",
            "--set", "directory.postgres.caSecret=pg-ca",
        ]
        .map(String::from)
        .to_vec();
        let (ok, _, err) = template(&helm, &args);
        assert!(!ok, "{name}: rendered");
        for expected in [
            "problem(s)",
            "image.repository is empty",
            "docker build -f deploy/Dockerfile",
            "authorization.allowedGroups is empty or null",
            "proxy.routes[1].pathPrefix \"/API/\" is a duplicate of proxy.routes[0]",
            "server.trustedProxies[0]: 0.0.0.0/0",
            "issuer.signingKeys.existingSecret is empty",
            "sidecar.container.ports: 3000 is reachable from the pod network",
            "networkPolicy.publicFrom is empty",
            "directory.postgres.caSecret is set but directory.postgres.existingSecret is empty",
        ] {
            assert!(err.contains(expected), "{name}: missing `{expected}` in:\n{err}");
        }
    }
}

#[test]
fn bad_values_fail_with_a_message_that_names_the_fix_on_both_helm_versions() {
    let cases: [(&[&str], &str); 8] = [
        (&[], "entra.tenantIds[0] is the placeholder 00000000-0000-0000-0000-000000000000: set it to your tenant's ID"),
        (&["--set", "entra.clientId=00000000-0000-0000-0000-000000000000"], "entra.clientId is the placeholder"),
        (&["--set", "authorization.allowedGroups[0]=admins"], "\"admins\" is not a GUID"),
        (&["--set-json", "entra.tenantIds=[]"], "tenantIds"),
        (&["--set", "entra.clientid=typo"], "clientid"),
        (&["--set", "entra.graphMode=magic"], "graphMode"),
        (&["--set", "redis.url=redis://user:password@redis:6379"], "without a user or password"),
        (
            &["--set", "cache.groupTtl=5 minutes"],
            "\"5 minutes\" is not a duration: write it like 500ms, 30s, 15m or 24h",
        ),
    ];
    for (name, helm) in helms() {
        for (args, expected) in cases {
            let mut all: Vec<String> = if args.is_empty() { vec![] } else { REQUIRED.map(String::from).to_vec() };
            if args.iter().any(|a| a.starts_with("entra.tenantIds")) {
                all.clear();
                all.extend(["--set".to_string(), REQUIRED[3].to_string()]);
            }
            all.extend(args.iter().map(|s| s.to_string()));
            let (ok, _, err) = template(&helm, &all);
            assert!(!ok, "{name} accepted {all:?}");
            assert!(err.contains(expected), "{name} {all:?}: {err}");
            assert!(!err.contains("^[") && !err.contains("{8}"), "{name} {all:?} shows a regex: {err}");
        }
    }
}

#[test]
fn the_gateway_api_examples_validate_against_their_crd_schemas() {
    let mut files = Vec::new();
    for e in EXAMPLES {
        for entry in std::fs::read_dir(format!("deploy/examples/{e}")).unwrap() {
            let path = entry.unwrap().path();
            if !path.file_name().unwrap().to_string_lossy().ends_with("values.yaml") {
                files.push(path);
            }
        }
    }
    let (ok, out, err) = run(Command::new(tool("venv/bin/python")).arg("tests/fixtures/crds/validate.py").args(&files));
    assert!(ok, "{out}{err}");
    for resource in [
        "envoy-gateway/policy.yaml: SecurityPolicy entra-gateway",
        "envoy-gateway/policy.yaml: HTTPRoute orders",
        "envoy-gateway/policy.yaml: ReferenceGrant",
        "envoy-gateway/policy.yaml: ClientTrafficPolicy",
        "istio/authorization-policy.yaml: AuthorizationPolicy",
        "traefik-gateway-api/httproute.yaml: HTTPRoute orders",
        "traefik-gateway-api/httproute.yaml: Middleware entra-gateway",
        "traefik/middleware.yaml: Middleware entra-gateway",
    ] {
        assert!(out.lines().any(|l| l.starts_with("ok") && l.contains(resource)), "{resource} not validated:\n{out}");
    }
    // The mesh configuration (istiod values) names the provider the AuthorizationPolicy uses.
    let mesh: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string("deploy/examples/istio/istiod-values.yaml").unwrap()).unwrap();
    let provider = &mesh["meshConfig"]["extensionProviders"][0];
    assert_eq!(provider["name"], "entra-gateway");
    assert_eq!(provider["envoyExtAuthzHttp"]["pathPrefix"], "/auth/verify");
    // Each example's values set original_uri to what its ingress sends.
    for (e, source) in [("envoy-gateway", "path"), ("istio", "path"), ("traefik-gateway-api", "x-forwarded-uri")] {
        let values = std::fs::read_to_string(format!("deploy/examples/{e}/values.yaml")).unwrap();
        assert!(values.contains(&format!("originalUri: {source}")), "{e}");
    }
}

/// The README's one-liner: a rendered ConfigMap checked as it is.
#[test]
fn the_readme_check_of_a_rendered_configmap_works_as_printed() {
    let (_, helm) = &helms()[0];
    let args: Vec<String> = REQUIRED
        .iter()
        .map(|s| s.to_string())
        .chain(["--show-only".into(), "templates/configmap.yaml".into()])
        .collect();
    let (ok, out, err) = template(helm, &args);
    assert!(ok, "{err}");
    let dir = tempfile::tempdir().unwrap();
    let rendered = dir.path().join("rendered.yaml");
    std::fs::write(&rendered, out).unwrap();
    let (ok, _, err) = run(Command::new(env!("CARGO_BIN_EXE_entra-gateway"))
        .args(["check-config", "--syntax-only", "--config"])
        .arg(&rendered));
    assert!(ok, "{err}");
    let readme = std::fs::read_to_string("README.md").unwrap();
    assert!(readme.contains("--show-only templates/configmap.yaml > rendered.yaml"));
    assert!(readme.contains("entra-gateway check-config --syntax-only --config rendered.yaml"));
}
