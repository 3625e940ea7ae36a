//! YAML text + overrides → the raw config, with every problem of the file in one pass.
//!
//! Owns: the YAML and override trees, and finding every type error, missing section and unknown
//! key at once: serde stops at the first error, so each one is recorded and the tree repaired
//! at that spot (a missing section becomes `{}`, a bad value is removed so that its default or
//! the semantic checks speak for it) before the next attempt. Paths use one notation
//! (`proxy.routes[1].timeout`) and the file's own list indexes; a problem inside a value set by
//! an environment variable names that variable; an unknown key gets a "did you mean"; a bad
//! duration gets an example. Must not: check meanings (see `build`).

use serde_json::Value;

use super::{ENV_PREFIX, EnvSource, Problem, RawConfig, env};

/// At most this many repairs: a file with more problems gets the first ones.
const MAX_ROUNDS: usize = 100;

/// The reference config: every key, for "did you mean".
const EXAMPLE: &str = include_str!("../../config/example.yaml");

/// Keys whose values are durations.
const DURATION_KEYS: &[&str] = &[
    "shutdown_grace",
    "header_read_timeout",
    "idle_timeout",
    "exchange_body_timeout",
    "write_timeout",
    "poll_interval",
    "clock_skew",
    "request_timeout",
    "graph_max_retry_wait",
    "token_ttl",
    "redis_timeout",
    "l1_ttl",
    "group_ttl",
    "negative_ttl",
    "jwks_ttl",
    "jwks_max_stale",
    "profile_ttl",
    "timeout",
];

/// Sections that must be present (their own fields say what they need).
const REQUIRED_SECTIONS: &[(&str, &str)] = &[
    ("entra", "the Entra ID app registration: tenants and client_id"),
    ("authorization", "who may sign in: allowed_groups (or allow_any_tenant_user: true)"),
    ("issuer", "the gateway's own tokens: issuer and signing_keys"),
];

/// One step of a path in the config tree.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn display(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) if out.is_empty() => out.push_str(k),
            Seg::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    if out.is_empty() { "(top level)".into() } else { out }
}

/// Parses YAML `text` with `env` overlaid: the raw config and every problem found on the way
/// (a config with problems is still returned when it could be read, for the later checks),
/// and the config paths environment variables set.
/// The config paths set by environment variables, with the variable's name.
pub(super) type FromEnv = Vec<(String, String)>;

/// [`parse`], and which config paths environment variables set (so that later problems can
/// name the variable too).
pub(super) fn parse_with_sources(text: &str, env: &dyn EnvSource) -> (Option<RawConfig>, Vec<Problem>, FromEnv) {
    let mut problems = Vec::new();
    let mut tree: Value = if text.trim().is_empty() {
        problems.push(Problem {
            path: "(file)".into(),
            message: "the file is empty: start from config/example.yaml, or run `entra-gateway init`".into(),
        });
        Value::Object(Default::default())
    } else {
        match serde_saphyr::from_str(text) {
            Ok(Value::Object(map)) => Value::Object(map),
            Ok(_) => {
                problems.push(Problem {
                    path: "(file)".into(),
                    message: "the file must be a YAML mapping of sections (server:, entra:, ...)".into(),
                });
                return (None, problems, Vec::new());
            }
            Err(e) => {
                problems.push(Problem { path: "(file)".into(), message: format!("not valid YAML: {e}") });
                return (None, problems, Vec::new());
            }
        }
    };
    if tree.pointer("/entra/client_secret").is_some_and(|v| !v.is_null()) {
        problems.push(Problem {
            path: "entra.client_secret".into(),
            message: "secrets never go in the YAML file: use entra.client_secret_file or \
                      the ENTRA_GATEWAY__ENTRA__CLIENT_SECRET environment variable"
                .into(),
        });
    }
    if tree.pointer("/directory/postgres_url").is_some_and(|v| !v.is_null()) {
        problems.push(Problem {
            path: "directory.postgres_url".into(),
            message: "the PostgreSQL URL carries a password: never put it in the YAML file; use \
                      directory.postgres_url_file or the ENTRA_GATEWAY__DIRECTORY__POSTGRES_URL environment variable"
                .into(),
        });
    }
    let from_env = env::apply_env(&mut tree, env, &mut problems);
    let mut repairs = Repairs::default();
    for section in REQUIRED_SECTIONS {
        if tree.get(section.0).is_none_or(Value::is_null) {
            problems.push(Problem { path: section.0.into(), message: format!("missing: {}", section.1) });
            if let Value::Object(map) = &mut tree {
                map.insert(section.0.into(), Value::Object(Default::default()));
            }
        }
    }
    let known = KnownKeys::new();
    for _ in 0..MAX_ROUNDS {
        let mut unknown: Vec<Vec<Seg>> = Vec::new();
        let attempt: Result<RawConfig, _> = {
            let mut record = |p: serde_ignored::Path<'_>| unknown.push(ignored_path(&p));
            let de = serde_ignored::Deserializer::new(tree.clone(), &mut record);
            serde_path_to_error::deserialize(de)
        };
        match attempt {
            Ok(raw) => {
                for path in unknown {
                    let original = repairs.original(&path);
                    let message = match known.suggest(&original) {
                        Some(s) => format!("unknown key (did you mean `{s}`?)"),
                        None => "unknown key".into(),
                    };
                    problems.push(problem(&original, message, &from_env));
                }
                return (Some(raw), unknown_first(problems), from_env);
            }
            Err(e) => {
                let path = error_path(e.path());
                let message = e.inner().to_string();
                let mut original = repairs.original(&path);
                let missing = message.strip_prefix("missing field `").and_then(|m| m.strip_suffix('`'));
                let mut typo_of_missing = false;
                if let Some(field) = missing {
                    // The item is dropped below: report its unknown keys now, and a misspelt
                    // key as what it is rather than as a missing one.
                    for key in known.unknown_children(&tree, &path, &original) {
                        let mut at = original.clone();
                        at.push(Seg::Key(key.clone()));
                        let message = match known.suggest(&at) {
                            Some(s) => {
                                typo_of_missing |= s == field;
                                format!("unknown key (did you mean `{s}`?)")
                            }
                            None => "unknown key".into(),
                        };
                        problems.push(problem(&at, message, &from_env));
                    }
                    original.push(Seg::Key(field.to_string()));
                }
                if !typo_of_missing {
                    problems.push(problem(&original, friendly(&original, &message), &from_env));
                }
                if !repairs.repair(&mut tree, &path) {
                    return (None, unknown_first(problems), from_env);
                }
            }
        }
    }
    (None, unknown_first(problems), from_env)
}

/// Unknown keys first: a misspelt key explains what follows. A problem under a known key that
/// an unknown sibling's did-you-mean names (`entar:` for `entra:`) is a follow-on of that typo
/// and is dropped.
fn unknown_first(problems: Vec<Problem>) -> Vec<Problem> {
    let typo_of: Vec<String> = problems
        .iter()
        .filter_map(|p| {
            let suggested = p.message.strip_prefix("unknown key (did you mean `")?.split('`').next()?;
            let parent = p.path.rsplit_once('.').map(|(parent, _)| format!("{parent}.")).unwrap_or_default();
            Some(format!("{parent}{suggested}"))
        })
        .collect();
    let (unknown, rest): (Vec<Problem>, Vec<Problem>) =
        problems.into_iter().partition(|p| p.message.starts_with("unknown key"));
    let follow_on = |p: &Problem| {
        typo_of
            .iter()
            .any(|t| p.path == *t || p.path.starts_with(&format!("{t}.")) || p.path.starts_with(&format!("{t}[")))
    };
    unknown.into_iter().chain(rest.into_iter().filter(|p| !follow_on(p))).collect()
}

/// Names the environment variable behind each problem whose key one set, if the message does
/// not already.
pub(super) fn name_env_vars(problems: &mut [Problem], from_env: &FromEnv) {
    for p in problems {
        if p.message.contains("(set by the environment variable") {
            continue;
        }
        let var = from_env.iter().find(|(path, _)| {
            p.path == *path || p.path.starts_with(&format!("{path}.")) || p.path.starts_with(&format!("{path}["))
        });
        if let Some((_, name)) = var {
            p.message = format!("{} (set by the environment variable {name})", p.message);
        }
    }
}

/// A problem at `path`, naming the environment variable that supplied it, if one did.
fn problem(path: &[Seg], message: String, from_env: &[(String, String)]) -> Problem {
    let shown = display(path);
    let var = from_env
        .iter()
        .find(|(p, _)| shown == *p || shown.starts_with(&format!("{p}.")) || shown.starts_with(&format!("{p}[")));
    let message = match var {
        Some((_, name)) => format!("{message} (set by the environment variable {name})"),
        None => message,
    };
    Problem { path: shown, message }
}

/// serde's message, with the accepted form spelled out where serde does not.
fn friendly(path: &[Seg], message: &str) -> String {
    let key = path.iter().rev().find_map(|s| match s {
        Seg::Key(k) => Some(k.as_str()),
        Seg::Index(_) => None,
    });
    if message.starts_with("missing field `") {
        return "required".into();
    }
    if key.is_some_and(|k| DURATION_KEYS.contains(&k)) {
        return format!("{message}: write a duration such as 500ms, 30s, 15m or 24h");
    }
    message.to_string()
}

fn error_path(path: &serde_path_to_error::Path) -> Vec<Seg> {
    path.iter()
        .filter_map(|s| match s {
            serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
            serde_path_to_error::Segment::Map { key } | serde_path_to_error::Segment::Enum { variant: key } => {
                Some(Seg::Key(key.clone()))
            }
            serde_path_to_error::Segment::Unknown => None,
        })
        .collect()
}

fn ignored_path(p: &serde_ignored::Path<'_>) -> Vec<Seg> {
    let mut out = match p {
        serde_ignored::Path::Root => return Vec::new(),
        serde_ignored::Path::Seq { parent, .. }
        | serde_ignored::Path::Map { parent, .. }
        | serde_ignored::Path::Some { parent }
        | serde_ignored::Path::NewtypeStruct { parent }
        | serde_ignored::Path::NewtypeVariant { parent } => ignored_path(parent),
    };
    match p {
        serde_ignored::Path::Seq { index, .. } => out.push(Seg::Index(*index)),
        serde_ignored::Path::Map { key, .. } => out.push(Seg::Key(key.clone())),
        _ => {}
    }
    out
}

/// The repairs made so far; removed list items keep later indexes in the file's numbering.
#[derive(Default)]
struct Repairs {
    /// (list path in the file's numbering, removed index in the file's numbering).
    removed: Vec<(Vec<Seg>, usize)>,
}

impl Repairs {
    /// `path` (in the repaired tree's numbering) in the file's numbering.
    fn original(&self, path: &[Seg]) -> Vec<Seg> {
        let mut out: Vec<Seg> = Vec::with_capacity(path.len());
        for seg in path {
            match seg {
                Seg::Key(k) => out.push(Seg::Key(k.clone())),
                Seg::Index(current) => {
                    let mut gone: Vec<usize> =
                        self.removed.iter().filter(|(list, _)| *list == out).map(|(_, i)| *i).collect();
                    gone.sort_unstable();
                    let mut original = *current;
                    for g in gone {
                        if g <= original {
                            original += 1;
                        }
                    }
                    out.push(Seg::Index(original));
                }
            }
        }
        out
    }

    /// Makes the tree deserialize past the error at `path`; false when it cannot.
    fn repair(&mut self, tree: &mut Value, path: &[Seg]) -> bool {
        if path.is_empty() {
            return false;
        }
        // A bad value goes (its default, or the checks of what remains, speak for it); a
        // missing required field is reported at its item, which goes.
        let target = path;
        let Some((last, parent)) = target.split_last() else { return false };
        let Some(container) = pointer_mut(tree, parent) else { return false };
        match (container, last) {
            (Value::Object(map), Seg::Key(k)) => map.remove(k).is_some(),
            (Value::Array(items), Seg::Index(i)) if *i < items.len() => {
                items.remove(*i);
                if let Some((Seg::Index(oi), list)) = self.original(target).split_last() {
                    self.removed.push((list.to_vec(), *oi));
                }
                true
            }
            _ => false,
        }
    }
}

fn pointer<'a>(tree: &'a Value, path: &[Seg]) -> Option<&'a Value> {
    let mut node = tree;
    for seg in path {
        node = match (node, seg) {
            (Value::Object(map), Seg::Key(k)) => map.get(k)?,
            (Value::Array(items), Seg::Index(i)) => items.get(*i)?,
            _ => return None,
        };
    }
    Some(node)
}

fn pointer_mut<'a>(tree: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    let mut node = tree;
    for seg in path {
        node = match (node, seg) {
            (Value::Object(map), Seg::Key(k)) => map.get_mut(k)?,
            (Value::Array(items), Seg::Index(i)) => items.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(node)
}

/// The keys of the reference config (`config/example.yaml` with every default), for
/// suggestions. Children of maps whose keys are data (group ids, client ids, app roles) have
/// none.
struct KnownKeys {
    tree: Value,
}

impl KnownKeys {
    fn new() -> KnownKeys {
        let tree = serde_saphyr::from_str::<RawConfig>(EXAMPLE)
            .ok()
            .and_then(|raw| serde_json::to_value(raw.with_defaults()).ok())
            .unwrap_or(Value::Null);
        let mut known = KnownKeys { tree };
        // Keys of optional sections that the example leaves commented out.
        if let Some(Value::Object(server)) = known.tree.get_mut("server") {
            server
                .insert("tls".into(), serde_json::json!({"cert_file": null, "key_file": null, "extra_ca_file": null}));
        }
        known
    }

    /// The keys of the object at `path` (in `tree`) that the reference config does not know at
    /// `original` (the same place in the file's numbering).
    fn unknown_children(&self, tree: &Value, path: &[Seg], original: &[Seg]) -> Vec<String> {
        let Some(Value::Object(item)) = pointer(tree, path) else { return Vec::new() };
        let mut node = &self.tree;
        for seg in original {
            node = match (seg, node) {
                (Seg::Key(k), n) => match n.get(k) {
                    Some(v) => v,
                    None => return Vec::new(),
                },
                (Seg::Index(_), n) => match n.get(0) {
                    Some(v) => v,
                    None => return Vec::new(),
                },
            };
        }
        let Some(known) = node.as_object() else { return Vec::new() };
        item.keys().filter(|k| !known.contains_key(*k)).cloned().collect()
    }

    /// The closest known sibling of an unknown key, if it is close enough to be a typo.
    fn suggest(&self, path: &[Seg]) -> Option<String> {
        let (Seg::Key(unknown), parent) = path.split_last()? else { return None };
        let mut node = &self.tree;
        for seg in parent {
            node = match seg {
                Seg::Key(k) => node.get(k)?,
                // Any item of a list has the keys of the example's first item.
                Seg::Index(_) => node.get(0)?,
            };
        }
        let siblings = node.as_object()?;
        let unknown = unknown.to_ascii_lowercase();
        siblings
            .keys()
            .map(|k| (strsim::jaro_winkler(&unknown, k), k))
            .filter(|(score, _)| *score >= 0.85)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, k)| k.clone())
    }
}

/// The config path (`server.listen`, `proxy.routes[0].timeout`) of an override variable.
pub(super) fn env_path(name: &str) -> String {
    let mut out = String::new();
    for seg in name[ENV_PREFIX.len()..].split("__") {
        let seg = seg.to_ascii_lowercase();
        match seg.parse::<usize>() {
            Ok(i) => out.push_str(&format!("[{i}]")),
            Err(_) if out.is_empty() => out.push_str(&seg),
            Err(_) => {
                out.push('.');
                out.push_str(&seg);
            }
        }
    }
    out
}
