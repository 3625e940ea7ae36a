//! Authorization policy: which users get in, and with which groups and roles.
//!
//! Owns: the pure decision from "the configured groups this user is (transitively) in" to
//! allow/deny, the roles granted by `group_roles`, and per-route group checks. Deny by default.
//! Must not: do I/O, or look at anything but group ids (never names, emails or UPNs).

use std::collections::{BTreeMap, BTreeSet};

use crate::config::{AppsConfig, AuthorizationSettings};

/// The policy derived from `authorization` (and route groups, for the set Graph is asked about).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    allowed: BTreeSet<String>,
    group_roles: BTreeMap<String, Vec<String>>,
    allow_any_tenant_user: bool,
    configured: BTreeSet<String>,
    fingerprint: String,
    apps: AppsConfig,
}

/// The outcome for one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// In: the configured groups the user is in, and the roles they grant.
    Allow { groups: Vec<String>, roles: Vec<String> },
    /// Not in any allowed group.
    Deny,
}

impl Policy {
    /// The policy of `authorization` (ids already lowercase, configured groups computed).
    pub fn new(a: &AuthorizationSettings) -> Policy {
        Policy {
            allowed: a.allowed_groups.clone(),
            group_roles: a.group_roles.clone(),
            allow_any_tenant_user: a.allow_any_tenant_user,
            fingerprint: fingerprint(&a.configured_groups),
            configured: a.configured_groups.clone(),
            apps: a.apps.clone(),
        }
    }

    /// The allowed groups (lowercase): what the directory sync watches.
    pub fn allowed_groups(&self) -> &BTreeSet<String> {
        &self.allowed
    }

    /// Whether every user of an accepted tenant gets in (no groups to watch).
    pub fn allows_any_tenant_user(&self) -> bool {
        self.allow_any_tenant_user
    }

    /// Whether app callers are configured at all.
    pub fn apps_enabled(&self) -> bool {
        self.apps.enabled()
    }

    /// Whether app rules apply to tokens of tenant `tid` (`authorization.apps.tenants`; the
    /// home tenant by default): a partner tenant's admin can assign our app roles to their own
    /// apps, and that grant means nothing here.
    pub fn apps_tenant_allowed(&self, tid: &str) -> bool {
        self.apps.tenants.iter().any(|t| t == tid)
    }

    /// The internal roles of an app caller of tenant `tid` (`client_id` lowercase, `app_roles`
    /// from its token), or `None` when its tenant is not one the rules apply to, or neither its
    /// client id nor any of its app roles is listed.
    pub fn decide_app(&self, tid: &str, client_id: &str, app_roles: &[String]) -> Option<Vec<String>> {
        if !self.apps_tenant_allowed(tid) {
            return None;
        }
        let by_client = self.apps.clients.get(client_id);
        let by_role: Vec<&Vec<String>> = app_roles.iter().filter_map(|r| self.apps.app_roles.get(r)).collect();
        if by_client.is_none() && by_role.is_empty() {
            return None;
        }
        let roles: BTreeSet<String> = by_client.into_iter().chain(by_role).flatten().cloned().collect();
        Some(roles.into_iter().collect())
    }

    /// A short hash of the configured group set: cached group answers are keyed by it, so that
    /// a config change never reuses an answer to a different question.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Every group id the gateway cares about (sorted, lowercase): what Graph is asked about.
    pub fn configured_groups(&self) -> &BTreeSet<String> {
        &self.configured
    }

    /// Keeps only the configured groups of a membership list (lowercase ids, as the token
    /// and Graph answers are normalised by `entra` and `graph`).
    pub fn relevant<'a>(&self, member_of: impl IntoIterator<Item = &'a String>) -> BTreeSet<String> {
        member_of.into_iter().filter(|g| self.configured.contains(*g)).cloned().collect()
    }

    /// Decides for a user who is in `member_of` (any groups; irrelevant ones are ignored).
    pub fn decide(&self, member_of: &BTreeSet<String>) -> Decision {
        let groups = self.relevant(member_of);
        let allowed = self.allow_any_tenant_user || groups.iter().any(|g| self.allowed.contains(g));
        if !allowed {
            return Decision::Deny;
        }
        let roles: BTreeSet<String> =
            groups.iter().filter_map(|g| self.group_roles.get(g)).flatten().cloned().collect();
        Decision::Allow { groups: groups.into_iter().collect(), roles: roles.into_iter().collect() }
    }
}

fn fingerprint(groups: &BTreeSet<String>) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for g in groups {
        h.update(g.as_bytes());
        h.update(b",");
    }
    h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// A route that names groups lets in members of any of them; a route without groups lets in
/// every authenticated user.
pub fn route_allows(route_groups: Option<&[String]>, token_groups: &[String]) -> bool {
    match route_groups {
        None => true,
        Some(required) => required.iter().any(|r| token_groups.contains(r)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allowed: &[&str], roles: &[(&str, &[&str])], any: bool) -> Policy {
        let allowed: BTreeSet<String> = allowed.iter().map(|s| s.to_string()).collect();
        let group_roles: BTreeMap<String, Vec<String>> =
            roles.iter().map(|(g, r)| (g.to_string(), r.iter().map(|s| s.to_string()).collect())).collect();
        let mut configured = allowed.clone();
        configured.extend(group_roles.keys().cloned());
        Policy {
            allowed,
            group_roles,
            allow_any_tenant_user: any,
            fingerprint: fingerprint(&configured),
            configured,
            apps: AppsConfig::default(),
        }
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn member_of_an_allowed_group_gets_in_with_the_roles_of_all_its_configured_groups() {
        let p = policy(&["a", "b"], &[("a", &["reader"]), ("c", &["admin", "reader"])], false);
        let d = p.decide(&set(&["a", "c", "unrelated"]));
        assert_eq!(
            d,
            Decision::Allow { groups: vec!["a".into(), "c".into()], roles: vec!["admin".into(), "reader".into()] }
        );
    }

    #[test]
    fn nobody_gets_in_by_default() {
        let p = policy(&["a"], &[("c", &["admin"])], false);
        assert_eq!(p.decide(&set(&[])), Decision::Deny);
        // A role group alone does not grant entry.
        assert_eq!(p.decide(&set(&["c"])), Decision::Deny);
    }

    #[test]
    fn allow_any_tenant_user_lets_in_users_without_groups() {
        let p = policy(&[], &[], true);
        assert_eq!(p.decide(&set(&[])), Decision::Allow { groups: vec![], roles: vec![] });
    }

    #[test]
    fn apps_get_in_by_client_id_or_app_role_with_the_union_of_their_roles() {
        let mut p = policy(&["a"], &[], false);
        assert!(!p.apps_enabled());
        p.apps.clients.insert("c1".into(), vec!["svc".into()]);
        p.apps.app_roles.insert("Orders.Read".into(), vec!["orders-reader".into(), "svc".into()]);
        assert!(p.apps_enabled());
        p.apps.tenants = vec!["home".into()];
        assert_eq!(p.decide_app("home", "c1", &[]), Some(vec!["svc".into()]));
        let both = Some(vec!["orders-reader".into(), "svc".into()]);
        assert_eq!(p.decide_app("home", "c1", &["Orders.Read".into()]), both);
        assert_eq!(p.decide_app("home", "c2", &["Orders.Read".into()]), both);
        assert_eq!(p.decide_app("home", "c2", &["Other".into()]), None);
        assert_eq!(p.decide_app("partner", "c2", &["Orders.Read".into()]), None, "a partner admin's grant");
        assert_eq!(p.decide_app("partner", "c1", &[]), None);
    }

    #[test]
    fn route_groups_need_any_one_match() {
        assert!(route_allows(None, &[]));
        assert!(route_allows(Some(&["x".into()]), &["x".into()]));
        assert!(!route_allows(Some(&["x".into()]), &["y".into()]));
    }
}
