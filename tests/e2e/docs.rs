//! The README's and examples' deployment snippets, checked against what they describe: the
//! chart's Service port and the identity headers the gateway really answers with. So that a
//! copied snippet works, and the docs cannot drift from the code.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::support::*;

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The identity headers `/auth/verify` answers with, for a user and for an app caller.
async fn identity_headers_of_the_gateway() -> BTreeSet<String> {
    let mock = mock().await;
    let apps = r#"{clients: {"d0d0d0d0-0000-4000-8000-00000000d0d0": [svc]}}"#;
    let gw = GatewayBuilder::new(&mock)
        .yaml("\nproxy:\n  forward_auth: { original_uri: path }\n  routes:\n    - { path_prefix: /svc/, upstream: \"http://127.0.0.1:9\", allow_apps: true }\n")
        .set("AUTHORIZATION__APPS", apps)
        .start()
        .await;
    let app = mock.mint(&entra_gateway::mock::TokenSpec {
        oid: Some("5e5e5e5e-0000-4000-8000-0000000005e5".into()),
        extra: Some(json!({"scp": null, "sub": "5e5e5e5e-0000-4000-8000-0000000005e5", "azp": "d0d0d0d0-0000-4000-8000-00000000d0d0", "roles": ["R"]}).as_object().unwrap().clone()),
        ..Default::default()
    });
    let mut names = BTreeSet::new();
    for token in [token_for(&mock, "alice"), app] {
        let (status, _, body) = exchange(&gw, &token).await;
        assert_eq!(status, 200, "{body}");
        let internal = body["access_token"].as_str().unwrap();
        let r = client().get(gw.url("/auth/verify/svc/x")).bearer_auth(internal).send().await.unwrap();
        assert_eq!(r.status(), 200);
        names.extend(r.headers().keys().map(|k| k.as_str().to_string()).filter(|k| k.starts_with("x-auth-")));
    }
    names
}

fn list(text: &str, sep: char) -> BTreeSet<String> {
    text.split(sep)
        .map(|h| h.trim().trim_matches(['"', '[', ']']).to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect()
}

/// Every `auth-response-headers` / `authResponseHeaders` / `headersToBackend` list in a text
/// (one line, a YAML block list, or a flow list over several lines).
fn header_lists(text: &str) -> Vec<BTreeSet<String>> {
    let mut lists = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let flow_below = lines.get(i + 1).is_some_and(|l| l.trim_start().starts_with('['));
        let key = ["authResponseHeaders:", "headersToBackend:"].iter().find_map(|k| line.split(k).nth(1));
        if let Some(v) = line.split("auth-response-headers:").nth(1) {
            lists.push(list(v, ','));
        } else if let (Some(v), true) = (key, flow_below) {
            let _ = v;
            let mut flow = String::new();
            for l in &lines[i + 1..] {
                flow.push_str(l);
                if l.contains(']') {
                    break;
                }
            }
            lists.push(list(&flow, ','));
        } else if let Some(v) = key {
            if v.trim().is_empty() {
                // A YAML block list on the next lines.
                let items: Vec<&str> =
                    text.lines().skip(i + 1).take_while(|l| l.trim_start().starts_with("- ")).collect();
                lists.push(items.iter().map(|l| l.trim().trim_start_matches("- ").to_ascii_lowercase()).collect());
            } else {
                lists.push(list(v, ','));
            }
        }
    }
    lists
}

#[tokio::test]
async fn every_documented_auth_response_header_list_is_exactly_what_the_gateway_answers() {
    let expected = identity_headers_of_the_gateway().await;
    assert_eq!(expected.len(), 9, "{expected:?}");
    for file in [
        "docs/forward-auth.md",
        "deploy/examples/ingress-nginx/app-ingress.yaml",
        "deploy/examples/traefik/middleware.yaml",
        "deploy/examples/traefik-gateway-api/httproute.yaml",
        "deploy/examples/envoy-gateway/policy.yaml",
    ] {
        let lists = header_lists(&read(file));
        assert!(!lists.is_empty(), "{file} has no header list");
        for l in lists {
            assert_eq!(l, expected, "{file}: the list of identity headers an ingress should copy");
        }
    }
    let nginx = read("deploy/nginx/entra-gateway.conf");
    for h in &expected {
        assert!(nginx.to_ascii_lowercase().contains(&format!("proxy_set_header {h} ")), "deploy/nginx copies {h}");
    }
}

#[test]
fn the_documented_in_cluster_urls_reach_the_charts_service_port() {
    let helm = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/helm3/helm");
    let rendered = |extra: &[&str]| {
        let mut args = vec![
            "template",
            "entra-gateway",
            "helm/entra-gateway",
            "--namespace",
            "auth",
            "--set",
            "entra.tenantIds[0]=c0ffee00-0000-4000-8000-00000000a0a0",
            "--set",
            "entra.clientId=6e1f3c2a-4b5d-4e6f-8a7b-9c0d1e2f3a4b",
            "--set",
            "image.repository=registry.example.com/entra-gateway",
        ];
        args.extend(extra);
        let out = std::process::Command::new(&helm).args(&args).output().expect("helm runs (bash .ci/tools.sh)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        let service: Value = text
            .split("\n---")
            .filter_map(|d| serde_saphyr::from_str::<Value>(d).ok())
            .find(|d| d["kind"] == "Service")
            .expect("a Service");
        service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "http" || p["name"] == "https")
            .unwrap()["port"]
            .as_u64()
            .unwrap()
    };
    let port_of = |url: &str| -> u64 {
        let rest = url.split("://").nth(1).unwrap();
        let authority = rest.split('/').next().unwrap();
        match authority.rsplit_once(':') {
            Some((_, p)) => p.parse().unwrap(),
            None if url.starts_with("https://") => 443,
            None => 80,
        }
    };
    let default_port = rendered(&[]);
    let urls = |text: &str| -> Vec<String> {
        text.split(['"', ' ', '\n'])
            .filter(|w| w.contains("entra-gateway.auth.svc.cluster.local"))
            .map(|w| w.trim_end_matches([',', '}']).to_string())
            .collect()
    };
    let readme = urls(&(read("README.md") + &read("docs/forward-auth.md")));
    assert!(readme.len() >= 3, "{readme:?}");
    for url in readme {
        assert_eq!(port_of(&url), default_port, "README: {url} misses the chart's Service port {default_port}");
    }
    for url in urls(&read("deploy/examples/ingress-nginx/app-ingress.yaml")) {
        assert_eq!(port_of(&url), rendered(&["-f", "deploy/examples/ingress-nginx/values.yaml"]), "{url}");
    }
    for url in urls(&read("deploy/examples/traefik/middleware.yaml")) {
        assert_eq!(port_of(&url), rendered(&["-f", "deploy/examples/traefik/values.yaml"]), "{url}");
    }
    for (example, manifest) in [("traefik-gateway-api", "httproute.yaml")] {
        let port = rendered(&["-f", &format!("deploy/examples/{example}/values.yaml")]);
        for url in urls(&read(&format!("deploy/examples/{example}/{manifest}"))) {
            assert_eq!(port_of(&url), port, "{example}: {url}");
        }
    }
}

/// The Entra setup script is valid bash and passes shellcheck (it needs a tenant to run).
#[test]
fn the_entra_setup_script_passes_bash_n_and_shellcheck() {
    let script = "deploy/entra/create-app-registrations.sh";
    let out = std::process::Command::new("bash").args(["-n", script]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shellcheck = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/venv/bin/shellcheck");
    assert!(shellcheck.exists(), "shellcheck is missing: run `bash .ci/tools.sh`");
    let out = std::process::Command::new(shellcheck).arg(script).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let text = read(script);
    for needed in ["requestedAccessTokenVersion", "access_as_user", "spa", "User.Read.All", "GroupMember.Read.All"] {
        assert!(text.contains(needed), "{needed}");
    }
}
