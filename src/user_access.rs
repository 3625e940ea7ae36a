//! Per-user decisions that are newer than the tokens: access follows Entra.
//!
//! Owns: the in-process map from a user (`tid:oid`) to what has happened since their tokens
//! were issued: denied outright (disabled, deleted, or no longer in an allowed group, as the
//! directory sync saw it), or "not before" a time (sessions revoked in Entra, the operator's kill
//! switch, or access restored: tokens issued before it are refused). Readers (every proxied
//! request, `/auth/verify`, `/auth/me`, the exchange) load the current snapshot without a lock
//! or any I/O; writers (the directory sync and the kill switch, through `sync`) replace it.
//! Must not: do I/O, or decide anything the token and the policy decide (it only takes access
//! away).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::clock::unix_now;

/// How long a "not before" entry is kept: past it no token issued before can still be valid
/// (internal tokens live at most 24 h, Entra's CAE tokens up to 28 h).
pub const KEEP_SECS: u64 = 30 * 3600;

/// Why a user's access was taken away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyReason {
    /// `accountEnabled: false`.
    Disabled,
    /// Deleted from the directory (`@removed`).
    Deleted,
    /// No longer in any allowed group (directly or through nesting).
    Removed,
}

impl DenyReason {
    pub fn label(self) -> &'static str {
        match self {
            DenyReason::Disabled => "disabled",
            DenyReason::Deleted => "deleted",
            DenyReason::Removed => "removed",
        }
    }

    /// What the client is told.
    pub fn describe(self) -> &'static str {
        match self {
            DenyReason::Disabled => "access revoked: the account is disabled in Entra ID",
            DenyReason::Deleted => "access revoked: the account was deleted from Entra ID",
            DenyReason::Removed => "access revoked: the user is no longer in a group allowed to use this application",
        }
    }
}

/// What is known of one user beyond their tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UserEntry {
    /// Every token refused, and every exchange.
    #[serde(default)]
    pub denied: Option<DenyReason>,
    /// Tokens (internal and Entra) issued before this Unix second are refused: sessions revoked
    /// in Entra (`signInSessionsValidFromDateTime`) or by the operator.
    #[serde(default)]
    pub not_before: u64,
    /// Internal tokens issued before this Unix second are refused (access was taken away and
    /// given back: what was issued before stays refused).
    #[serde(default)]
    pub tokens_not_before: u64,
}

impl UserEntry {
    fn merge(self, other: UserEntry) -> UserEntry {
        UserEntry {
            denied: self.denied.or(other.denied),
            not_before: self.not_before.max(other.not_before),
            tokens_not_before: self.tokens_not_before.max(other.tokens_not_before),
        }
    }

    /// The epoch of the user's cached group decision: a new one after every change.
    pub fn epoch(&self) -> u64 {
        self.not_before.max(self.tokens_not_before)
    }
}

/// Why a token or an exchange is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Denied(DenyReason),
    /// Issued before this Unix second (sessions revoked).
    Before(u64),
}

impl Refused {
    pub fn reason_label(self) -> &'static str {
        match self {
            Refused::Denied(r) => r.label(),
            Refused::Before(_) => "sessions_revoked",
        }
    }
}

/// The map, and the two sources it is merged from.
#[derive(Default)]
pub struct UserAccess {
    merged: ArcSwap<HashMap<String, UserEntry>>,
    // std Mutex: writers only, short sections, never held across an await.
    sources: Mutex<Sources>,
}

#[derive(Default)]
struct Sources {
    /// From the directory sync.
    sync: HashMap<String, UserEntry>,
    /// The operator's kill switch: not-before per user.
    killed: HashMap<String, u64>,
}

impl UserAccess {
    pub fn new() -> Arc<UserAccess> {
        Arc::new(UserAccess::default())
    }

    /// The map key of a user.
    pub fn key(tid: &str, oid: &str) -> String {
        let mut key = String::with_capacity(tid.len() + 1 + oid.len());
        key.push_str(tid);
        key.push(':');
        key.push_str(oid);
        key.make_ascii_lowercase();
        key
    }

    /// The entry of a user (`key` from [`Self::key`]).
    pub fn entry(&self, key: &str) -> Option<UserEntry> {
        let map = self.merged.load();
        if map.is_empty() {
            return None;
        }
        map.get(key).copied()
    }

    /// An internal token of the user, issued at `iat`: refused when the user is denied or the
    /// token is older than either "not before". The hot path: one snapshot load and, when any
    /// user has an entry, one look-up.
    pub fn check_token(&self, key: &str, iat: u64) -> Result<(), Refused> {
        let Some(e) = self.entry(key) else { return Ok(()) };
        if let Some(r) = e.denied {
            return Err(Refused::Denied(r));
        }
        if iat < e.not_before || iat < e.tokens_not_before {
            return Err(Refused::Before(e.not_before.max(e.tokens_not_before)));
        }
        Ok(())
    }

    /// An exchange of an Entra token of the user issued at `iat`.
    pub fn check_exchange(&self, key: &str, iat: u64) -> Result<(), Refused> {
        let Some(e) = self.entry(key) else { return Ok(()) };
        if let Some(r) = e.denied {
            return Err(Refused::Denied(r));
        }
        if iat < e.not_before {
            return Err(Refused::Before(e.not_before));
        }
        Ok(())
    }

    /// Replaces what the directory sync says.
    pub fn set_sync(&self, entries: HashMap<String, UserEntry>) {
        let mut s = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        s.sync = entries;
        self.publish(&s);
    }

    /// The kill switch: every token of the user issued before `not_before` is refused.
    pub fn kill(&self, key: &str, not_before: u64) {
        let mut s = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        let at = s.killed.entry(key.to_string()).or_default();
        *at = (*at).max(not_before);
        self.publish(&s);
    }

    fn publish(&self, s: &Sources) {
        let cutoff = unix_now().saturating_sub(KEEP_SECS);
        let mut merged: HashMap<String, UserEntry> = s.sync.clone();
        for (key, at) in s.killed.iter().filter(|(_, at)| **at > cutoff) {
            let e = merged.entry(key.clone()).or_default();
            *e = e.merge(UserEntry { not_before: *at, ..Default::default() });
        }
        self.merged.store(Arc::new(merged));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denied_users_and_tokens_from_before_are_refused_and_everyone_else_passes() {
        let a = UserAccess::new();
        let key = UserAccess::key("T", "O");
        assert_eq!(a.check_token(&key, 100), Ok(()), "an empty map: nothing to check");
        let mut sync = HashMap::new();
        sync.insert(key.clone(), UserEntry { denied: Some(DenyReason::Disabled), ..Default::default() });
        sync.insert("t:restored".into(), UserEntry { tokens_not_before: 500, ..Default::default() });
        a.set_sync(sync);
        assert_eq!(a.check_token(&key, u64::MAX), Err(Refused::Denied(DenyReason::Disabled)));
        assert_eq!(a.check_exchange(&key, u64::MAX), Err(Refused::Denied(DenyReason::Disabled)));
        assert_eq!(a.check_token("t:restored", 499), Err(Refused::Before(500)));
        assert_eq!(a.check_token("t:restored", 500), Ok(()));
        assert_eq!(a.check_exchange("t:restored", 10), Ok(()), "restored: an older Entra token may exchange");
        assert_eq!(a.check_token("t:other", 1), Ok(()));
        let now = unix_now();
        a.kill("t:other", now + 1);
        assert_eq!(a.check_token("t:other", now), Err(Refused::Before(now + 1)));
        assert_eq!(a.check_exchange("t:other", now), Err(Refused::Before(now + 1)), "the Entra token too");
        assert_eq!(a.check_token("t:other", now + 1), Ok(()), "signed in again after it");
        assert!(a.check_token(&key, 0).is_err(), "the kill merged with the sync's entries");
    }
}
