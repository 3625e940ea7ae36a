//! Environment overrides: `ENTRA_GATEWAY__SECTION__KEY=value` laid over the YAML tree.
//!
//! Owns: where overrides come from ([`EnvSource`], injectable so tests never call `set_var`),
//! reading values as YAML scalars or flow collections, and addressing list items by index.
//! Must not: validate values (the typed config does).

use serde_json::Value;

use super::{ENV_PREFIX, Problem};

/// Where `load` reads environment overrides from; tests pass a map instead of `set_var`.
pub trait EnvSource {
    /// Every `(name, value)` pair whose name starts with [`ENV_PREFIX`].
    fn overrides(&self) -> Vec<(String, String)>;
    /// One other variable (e.g. `AZURE_FEDERATED_TOKEN_FILE`, set by the AKS webhook).
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn overrides(&self) -> Vec<(String, String)> {
        std::env::vars().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect()
    }
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl EnvSource for Vec<(String, String)> {
    fn overrides(&self) -> Vec<(String, String)> {
        self.iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).cloned().collect()
    }
    fn var(&self, name: &str) -> Option<String> {
        self.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }
}

/// Applies `ENTRA_GATEWAY__SECTION__KEY=value` overrides to the tree. Values are read as YAML
/// scalars or flow collections (`true`, `15m`, `[a, b]`); numeric indexes address list items
/// (`ENTRA_GATEWAY__PROXY__ROUTES__0__TIMEOUT=5s`).
/// Returns the config path each variable set (`server.listen`), with the variable's name.
pub(super) fn apply_env(tree: &mut Value, env: &dyn EnvSource, problems: &mut Vec<Problem>) -> Vec<(String, String)> {
    let mut vars = env.overrides();
    vars.sort();
    let mut applied = Vec::new();
    for (name, raw) in vars {
        let segments: Vec<String> = name[ENV_PREFIX.len()..].split("__").map(|s| s.to_ascii_lowercase()).collect();
        if segments.iter().any(String::is_empty) {
            problems.push(Problem { path: name, message: "malformed override name".into() });
            continue;
        }
        let value = parse_env_value(&raw);
        match set_path(tree, &segments, value) {
            Ok(()) => applied.push((super::parse::env_path(&name), name)),
            Err(msg) => problems.push(Problem { path: name, message: msg }),
        }
    }
    applied
}

fn parse_env_value(raw: &str) -> Value {
    let t = raw.trim();
    if t == "null" || t == "~" {
        return Value::Null;
    }
    let yaml_syntax = t.starts_with(['[', '{', '"', '\'']) || t == "true" || t == "false";
    if yaml_syntax && let Ok(v) = serde_saphyr::from_str::<Value>(t) {
        return v;
    }
    if let Ok(n) = t.parse::<u64>() {
        return Value::from(n);
    }
    // `0.1` (a ratio): a number; `1.5s`, `1.2.3` and `.5` stay text.
    if t.contains('.')
        && t.starts_with(|c: char| c.is_ascii_digit())
        && let Ok(f) = t.parse::<f64>()
        && f.is_finite()
    {
        return Value::from(f);
    }
    Value::String(raw.to_string())
}

fn set_path(tree: &mut Value, segments: &[String], value: Value) -> Result<(), String> {
    let mut node = tree;
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        node = match node {
            Value::Object(map) => {
                if last {
                    map.insert(seg.clone(), value);
                    return Ok(());
                }
                map.entry(seg.clone()).or_insert_with(|| Value::Object(Default::default()))
            }
            Value::Array(items) => {
                let idx: usize = seg.parse().map_err(|_| format!("`{seg}` is not a list index"))?;
                let len = items.len();
                let slot = items.get_mut(idx).ok_or(format!("index {idx} out of range (list has {len})"))?;
                if last {
                    *slot = value;
                    return Ok(());
                }
                slot
            }
            Value::Null => {
                *node = Value::Object(Default::default());
                return set_path(node, &segments[i..], value);
            }
            _ => return Err(format!("`{seg}` is inside a scalar")),
        };
    }
    Ok(())
}
