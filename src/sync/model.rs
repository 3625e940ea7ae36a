//! What the directory sync knows of the directory, and what follows from it for each user.
//!
//! Owns: applying users-delta and groups-delta entries idempotently (entries repeat and carry
//! unchanged properties: values are compared, never counted), the transitive membership of the
//! allowed groups (Graph's groups delta gives direct members only; a member group is watched
//! itself), and deriving each user's [`UserEntry`] with the changes since the last derivation.
//! The model is what replicas share through Redis (sealed) and what a new poller resumes from.
//! Must not: do I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::user_access::{DenyReason, KEEP_SECS, UserAccess, UserEntry};

/// A member of a group: a user or a group.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Member {
    User(String),
    Group(String),
}

/// What happened to a user, for the metrics and the log (ids only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Denied(DenyReason),
    SessionsRevoked,
    Restored,
}

impl Change {
    pub fn kind(self) -> &'static str {
        match self {
            Change::Denied(DenyReason::Disabled) => "disabled",
            Change::Denied(DenyReason::Deleted) => "deleted",
            Change::Denied(DenyReason::Removed) => "removed",
            Change::SessionsRevoked => "sessions_revoked",
            Change::Restored => "restored",
        }
    }
}

/// The directory as the sync knows it, for one tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Model {
    pub tenant: String,
    /// The users delta link to poll next; `None`: a full round is due.
    pub users_link: Option<String>,
    /// Per batch of watched groups (ids joined by `,`), the groups delta link to poll next.
    pub groups_links: BTreeMap<String, String>,
    /// The groups whose members are known (the allowed groups and every group nested in them).
    pub watched: BTreeSet<String>,
    /// Direct members of each watched group.
    pub members: BTreeMap<String, BTreeSet<Member>>,
    /// Disabled users, since when (Unix seconds, when the sync saw it).
    pub disabled: BTreeMap<String, u64>,
    /// Deleted users, since when.
    pub deleted: BTreeMap<String, u64>,
    /// Users who were in an allowed group (as the sync saw it) and are no longer, since when.
    pub removed: BTreeMap<String, u64>,
    /// `signInSessionsValidFromDateTime` in Unix seconds, kept while it can matter.
    pub sessions_valid_from: BTreeMap<String, u64>,
    /// When a user's access was given back (tokens from before stay refused).
    pub restored: BTreeMap<String, u64>,
    /// The transitive members of the allowed groups at the last derivation.
    pub in_allowed: BTreeSet<String>,
    /// Whether a full users round and a full groups round have completed.
    pub complete: bool,
    /// When the poller last completed a poll (Unix seconds).
    #[serde(default)]
    pub synced_at: u64,
}

impl Model {
    pub fn new(tenant: &str, allowed: &BTreeSet<String>) -> Model {
        Model { tenant: tenant.to_ascii_lowercase(), watched: allowed.clone(), ..Default::default() }
    }

    /// Applies users-delta entries.
    pub fn apply_users(&mut self, entries: &[Value], now: u64) {
        for e in entries {
            let Some(id) = e.get("id").and_then(Value::as_str).map(str::to_ascii_lowercase) else { continue };
            if e.get("@removed").is_some() {
                self.deleted.entry(id.clone()).or_insert(now);
                self.disabled.remove(&id);
                continue;
            }
            if self.deleted.remove(&id).is_some() {
                // Restored from the recycle bin.
                self.restored.insert(id.clone(), now);
            }
            match e.get("accountEnabled").and_then(Value::as_bool) {
                Some(false) => {
                    self.disabled.entry(id.clone()).or_insert(now);
                }
                Some(true) if self.disabled.remove(&id).is_some() => {
                    self.restored.insert(id.clone(), now);
                }
                Some(true) | None => {}
            }
            if let Some(at) = e.get("signInSessionsValidFromDateTime").and_then(Value::as_str).and_then(parse_time)
                && at + KEEP_SECS > now
            {
                let known = self.sessions_valid_from.entry(id).or_insert(0);
                *known = (*known).max(at);
            }
        }
    }

    /// Applies groups-delta entries (`members@delta`); a full round first clears the members of
    /// the groups it covers (`full_for`). Returns groups newly found nested in watched ones.
    pub fn apply_groups(&mut self, entries: &[Value], full_for: Option<&[String]>) -> BTreeSet<String> {
        if let Some(groups) = full_for {
            for g in groups {
                self.members.insert(g.clone(), BTreeSet::new());
            }
        }
        let mut found = BTreeSet::new();
        for e in entries {
            let Some(group) = e.get("id").and_then(Value::as_str).map(str::to_ascii_lowercase) else { continue };
            let Some(list) = e.get("members@delta").and_then(Value::as_array) else { continue };
            let members = self.members.entry(group).or_default();
            for m in list {
                let Some(id) = m.get("id").and_then(Value::as_str).map(str::to_ascii_lowercase) else { continue };
                let is_group = m.get("@odata.type").and_then(Value::as_str).is_some_and(|t| t.ends_with(".group"));
                let member = if is_group { Member::Group(id.clone()) } else { Member::User(id.clone()) };
                if m.get("@removed").is_some() {
                    members.remove(&member);
                } else {
                    if is_group && !self.watched.contains(&id) {
                        found.insert(id);
                    }
                    members.insert(member);
                }
            }
        }
        found
    }

    /// Users reachable from `allowed` through the watched groups' members.
    fn transitive_members(&self, allowed: &BTreeSet<String>) -> BTreeSet<String> {
        let mut users = BTreeSet::new();
        let mut seen = BTreeSet::new();
        let mut todo: Vec<&String> = allowed.iter().collect();
        while let Some(g) = todo.pop() {
            if !seen.insert(g.clone()) {
                continue;
            }
            for m in self.members.get(g).into_iter().flatten() {
                match m {
                    Member::User(u) => {
                        users.insert(u.clone());
                    }
                    Member::Group(child) => todo.push(child),
                }
            }
        }
        users
    }

    /// Recomputes membership (`removed` / `restored`), drops what no longer matters, and returns
    /// each user's entry with the changes since `previous`.
    #[cfg(test)]
    pub fn derive(
        &mut self,
        allowed: &BTreeSet<String>,
        check_groups: bool,
        now: u64,
        previous: &HashMap<String, UserEntry>,
    ) -> (HashMap<String, UserEntry>, Vec<(String, Change)>) {
        self.update(allowed, check_groups, now);
        let entries = self.entries();
        let changes = changes(previous, &entries);
        (entries, changes)
    }

    /// Recomputes membership (`removed` / `restored`) once both rounds are complete, and drops
    /// what no longer matters.
    pub fn update(&mut self, allowed: &BTreeSet<String>, check_groups: bool, now: u64) {
        if check_groups && self.complete {
            let members = self.transitive_members(allowed);
            for gone in self.in_allowed.difference(&members) {
                self.removed.entry(gone.clone()).or_insert(now);
            }
            for back in members.iter() {
                if self.removed.remove(back).is_some() {
                    self.restored.insert(back.clone(), now);
                }
            }
            self.in_allowed = members;
        }
        let cutoff = now.saturating_sub(KEEP_SECS);
        self.sessions_valid_from.retain(|_, at| *at > cutoff);
        self.restored.retain(|_, at| *at > cutoff);
        self.deleted.retain(|_, at| *at > cutoff);
        self.removed.retain(|_, at| *at > cutoff);
    }

    /// Each user's entry as the model stands (what every replica applies).
    pub fn entries(&self) -> HashMap<String, UserEntry> {
        let mut entries: HashMap<String, UserEntry> = HashMap::new();
        let key = |oid: &String| UserAccess::key(&self.tenant, oid);
        for oid in self.removed.keys() {
            entries.entry(key(oid)).or_default().denied = Some(DenyReason::Removed);
        }
        for oid in self.disabled.keys() {
            entries.entry(key(oid)).or_default().denied = Some(DenyReason::Disabled);
        }
        for oid in self.deleted.keys() {
            entries.entry(key(oid)).or_default().denied = Some(DenyReason::Deleted);
        }
        for (oid, at) in &self.sessions_valid_from {
            entries.entry(key(oid)).or_default().not_before = *at;
        }
        for (oid, at) in &self.restored {
            let e = entries.entry(key(oid)).or_default();
            e.tokens_not_before = e.tokens_not_before.max(*at);
        }
        entries
    }
}

/// What changed for each user between two derivations.
pub fn changes(previous: &HashMap<String, UserEntry>, entries: &HashMap<String, UserEntry>) -> Vec<(String, Change)> {
    let mut changes = Vec::new();
    for (key, e) in entries {
        let before = previous.get(key).copied().unwrap_or_default();
        if let Some(reason) = e.denied.filter(|_| e.denied != before.denied) {
            changes.push((key.clone(), Change::Denied(reason)));
        } else if e.not_before > before.not_before {
            changes.push((key.clone(), Change::SessionsRevoked));
        } else if e.denied.is_none() && before.denied.is_some() {
            changes.push((key.clone(), Change::Restored));
        }
    }
    for (key, before) in previous {
        if before.denied.is_some() && !entries.contains_key(key) {
            changes.push((key.clone(), Change::Restored));
        }
    }
    changes.sort_by(|a, b| a.0.cmp(&b.0));
    changes
}

/// `2026-12-02T10:02:00Z` (fractions and offsets accepted) as Unix seconds.
pub fn parse_time(s: &str) -> Option<u64> {
    humantime::parse_rfc3339_weak(s.trim_end_matches('Z').split('.').next()?)
        .ok()
        .or_else(|| humantime::parse_rfc3339(s).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn repeated_entries_apply_once_and_unchanged_properties_change_nothing() {
        let mut m = Model::new("t", &set(&["g"]));
        let disabled =
            json!({"id": "U1", "accountEnabled": false, "signInSessionsValidFromDateTime": "2000-01-01T00:00:00Z"});
        let now = 1_800_000_000;
        m.apply_users(&[disabled.clone(), disabled.clone()], now);
        m.apply_users(&[disabled], now + 1000);
        assert_eq!(m.disabled.get("u1"), Some(&now), "the first time it was seen");
        assert!(m.sessions_valid_from.is_empty(), "an old sign-in time does not matter");
        let (entries, changes) = m.derive(&set(&["g"]), false, now + 1000, &HashMap::new());
        assert_eq!(entries["t:u1"].denied, Some(DenyReason::Disabled));
        assert_eq!(changes, vec![("t:u1".to_string(), Change::Denied(DenyReason::Disabled))]);
        let (_, again) = m.derive(&set(&["g"]), false, now + 1001, &entries);
        assert!(again.is_empty(), "nothing new");
    }

    #[test]
    fn membership_is_transitive_and_leaving_every_allowed_group_denies_until_added_back() {
        let mut m = Model::new("t", &set(&["allowed"]));
        let full = [json!({"id": "allowed", "members@delta": [
            {"@odata.type": "#microsoft.graph.user", "id": "alice"},
            {"@odata.type": "#microsoft.graph.group", "id": "child"}]})];
        let nested = m.apply_groups(&full, Some(&["allowed".to_string()]));
        assert_eq!(nested, set(&["child"]), "a member group is watched too");
        m.watched.extend(nested);
        m.apply_groups(
            &[json!({"id": "child", "members@delta": [{"@odata.type": "#microsoft.graph.user", "id": "bob"}]})],
            Some(&["child".to_string()]),
        );
        m.complete = true;
        let allowed = set(&["allowed"]);
        let t = 1_800_000_000;
        let (entries, changes) = m.derive(&allowed, true, t + 10, &HashMap::new());
        assert!(entries.is_empty() && changes.is_empty(), "{entries:?}");
        assert_eq!(m.in_allowed, set(&["alice", "bob"]));
        // bob leaves the nested group: removed (denied); alice stays.
        m.apply_groups(
            &[json!({"id": "child", "members@delta": [
            {"@odata.type": "#microsoft.graph.user", "id": "bob", "@removed": {"reason": "deleted"}}]})],
            None,
        );
        let (entries, changes) = m.derive(&allowed, true, t + 20, &entries);
        assert_eq!(entries["t:bob"].denied, Some(DenyReason::Removed));
        assert_eq!(changes, vec![("t:bob".to_string(), Change::Denied(DenyReason::Removed))]);
        // Added back directly: restored, and what was issued before stays refused.
        m.apply_groups(
            &[json!({"id": "allowed", "members@delta": [{"@odata.type": "#microsoft.graph.user", "id": "bob"}]})],
            None,
        );
        let (entries, changes) = m.derive(&allowed, true, t + 30, &entries);
        assert_eq!(entries["t:bob"], UserEntry { denied: None, not_before: 0, tokens_not_before: t + 30 });
        assert_eq!(changes, vec![("t:bob".to_string(), Change::Restored)]);
    }

    #[test]
    fn deleted_users_and_revoked_sessions_are_entries() {
        let mut m = Model::new("t", &set(&[]));
        let now = 1_800_000_000;
        m.apply_users(&[json!({"id": "gone", "@removed": {"reason": "changed"}})], now);
        m.apply_users(
            &[json!({"id": "u", "accountEnabled": true, "signInSessionsValidFromDateTime": "2027-01-15T08:00:00Z"})],
            now,
        );
        let (entries, _) = m.derive(&set(&[]), false, now, &HashMap::new());
        assert_eq!(entries["t:gone"].denied, Some(DenyReason::Deleted));
        assert_eq!(entries["t:u"].not_before, parse_time("2027-01-15T08:00:00Z").unwrap());
        assert_eq!(parse_time("2027-01-15T08:00:00.1234567Z"), parse_time("2027-01-15T08:00:00Z"));
        assert_eq!(parse_time("1970-01-01T00:00:10Z"), Some(10));
    }
}
