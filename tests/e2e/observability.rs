//! Alerts and the dashboard, against the real tools and the binary: the rule file passes
//! `promtool check rules` and its unit tests (`promtool test rules`: series that fire each alert
//! and series that do not), the chart wraps the same rules and the dashboard, and every metric
//! the dashboard queries is one the gateway exports.

use std::collections::BTreeSet;
use std::process::Command;

const RULES: &str = "helm/entra-gateway/files/prometheus-rules.yaml";
const DASHBOARD: &str = "deploy/grafana/entra-gateway.json";

fn promtool() -> &'static str {
    for p in ["/usr/bin/promtool", "/usr/local/bin/promtool"] {
        if std::path::Path::new(p).exists() {
            return p;
        }
    }
    panic!("promtool is not installed: run `bash .ci/test.sh` (it installs the prometheus package)");
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let out = Command::new(promtool()).args(["check", "rules", RULES]).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS: 7 rules found"));
    let out =
        Command::new(promtool()).args(["test", "rules", "tests/fixtures/prometheus/rules-test.yaml"]).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// Metric names in a text (`entra_gateway_…`), histogram series folded into their family.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("entra_gateway_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
        names.insert(family.to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn every_metric_of_the_dashboard_and_the_alerts_is_one_the_gateway_exports() {
    let declared = std::fs::read_to_string("src/metrics.rs").unwrap();
    let dashboard = std::fs::read_to_string(DASHBOARD).unwrap();
    let _: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let used = metric_names(&dashboard);
    assert!(used.len() >= 15, "{used:?}");
    let rules = metric_names(&std::fs::read_to_string(RULES).unwrap());
    for name in used.iter().chain(&rules) {
        assert!(declared.contains(&format!("\"{name}\"")), "{name} is queried but the gateway does not export it");
    }
}

#[test]
fn the_chart_ships_the_same_rules_and_the_dashboard_when_asked() {
    let helm = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/helm3/helm");
    let out = Command::new(helm)
        .args(["template", "gw", "helm/entra-gateway", "--namespace", "auth"])
        .args(["--set", "entra.tenantIds[0]=c0ffee00-0000-4000-8000-00000000a0a0"])
        .args(["--set", "entra.clientId=6e1f3c2a-4b5d-4e6f-8a7b-9c0d1e2f3a4b"])
        .args(["--set", "image.repository=registry.example.com/entra-gateway"])
        .args(["--set", "prometheusRule.enabled=true", "--set", "grafanaDashboard.enabled=true"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&String::from_utf8_lossy(&out.stdout))
        .unwrap()
        .into_iter()
        .filter(|d: &serde_json::Value| !d.is_null())
        .collect();
    let rule = docs.iter().find(|d| d["kind"] == "PrometheusRule").expect("a PrometheusRule");
    let file: serde_json::Value = serde_saphyr::from_str(&std::fs::read_to_string(RULES).unwrap()).unwrap();
    assert_eq!(rule["spec"]["groups"], file["groups"]);
    let dash =
        docs.iter().find(|d| d["kind"] == "ConfigMap" && d["metadata"]["labels"]["grafana_dashboard"] == "1").unwrap();
    let shipped: serde_json::Value =
        serde_json::from_str(dash["data"]["entra-gateway.json"].as_str().unwrap()).unwrap();
    assert_eq!(shipped["uid"], "entra-gateway");
}
