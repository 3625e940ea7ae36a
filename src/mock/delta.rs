//! Microsoft Graph delta queries, as Graph serves them: `GET /users/delta` and
//! `GET /groups/delta?$select=members&$filter=id eq '…' or …` (at most 50 ids).
//!
//! Pages carry `@odata.nextLink` (`$skiptoken`) until the last, which carries
//! `@odata.deltaLink` (`$deltatoken`); `$deltatoken=latest` starts from now. Users come with
//! `id`, `accountEnabled` and `signInSessionsValidFromDateTime`; a deleted user as
//! `{"id", "@removed": {"reason": "changed"|"deleted"}}`. Groups list their direct members in
//! `members@delta` (users and groups, a removal with `@removed`); a group may repeat across
//! pages, and an entry may repeat within a round. Tokens are opaque strings; after
//! [`MockState::expire_delta_tokens`] every older one answers 410 Gone with a `Location` to
//! start over (or 400 `syncStateNotFound`). The switches of the directory (disable, revoke
//! sessions, delete, change a membership) each record a change.

use super::endpoints::{graph_error, reply};
use super::*;

/// How an old delta token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiredAs {
    /// 410 Gone with a `Location` to start over.
    Gone,
    /// 400 with the error code `syncStateNotFound`.
    SyncStateNotFound,
}

/// A membership change of a group: (seq, group, member, member is a group, removed).
type MemberChange = (u64, String, String, bool, bool);

/// The change log the delta queries read.
pub(super) struct DeltaLog {
    seq: u64,
    /// (seq, oid) of every user change (the state itself is read at query time).
    user_changes: Vec<(u64, String)>,
    member_changes: Vec<MemberChange>,
    disabled: BTreeSet<String>,
    /// `signInSessionsValidFromDateTime` per user (ISO 8601).
    sessions_valid_from: HashMap<String, String>,
    /// Deleted users: oid -> (reason, tenant).
    deleted: HashMap<String, (String, Option<String>)>,
    /// Tokens from before this sequence number are refused.
    valid_from: u64,
    expired_as: ExpiredAs,
    page_size: usize,
    /// Every delta entry is sent twice (Graph repeats entries; the client must not care).
    repeat: bool,
}

impl Default for DeltaLog {
    fn default() -> Self {
        DeltaLog {
            seq: 0,
            user_changes: Vec::new(),
            member_changes: Vec::new(),
            disabled: BTreeSet::new(),
            sessions_valid_from: HashMap::new(),
            deleted: HashMap::new(),
            valid_from: 0,
            expired_as: ExpiredAs::Gone,
            page_size: 100,
            repeat: true,
        }
    }
}

impl DeltaLog {
    fn next(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
}

/// A token's round: changes in `(from, to]`, this page starting at `offset`, for `ids`.
struct Round {
    from: u64,
    to: u64,
    offset: usize,
    ids: Vec<String>,
}

impl Round {
    fn encode(&self) -> String {
        format!("{}.{}.{}.{}", self.from, self.to, self.offset, self.ids.join(","))
    }

    fn decode(token: &str) -> Option<Round> {
        let mut p = token.splitn(4, '.');
        let (from, to, offset) = (p.next()?.parse().ok()?, p.next()?.parse().ok()?, p.next()?.parse().ok()?);
        let ids = p.next().unwrap_or_default().split(',').filter(|s| !s.is_empty()).map(str::to_string).collect();
        Some(Round { from, to, offset, ids })
    }
}

// === the switches ===

impl MockState {
    /// Records that user `oid` changed (any property the users delta selects).
    pub(super) fn log_user_change(&self, oid: &str) {
        let mut log = lock(&self.delta);
        let seq = log.next();
        log.user_changes.push((seq, oid.to_ascii_lowercase()));
    }

    pub(super) fn log_member_change(&self, group: &str, member: &str, member_is_group: bool, removed: bool) {
        let mut log = lock(&self.delta);
        let seq = log.next();
        log.member_changes.push((
            seq,
            group.to_ascii_lowercase(),
            member.to_ascii_lowercase(),
            member_is_group,
            removed,
        ));
    }

    /// `accountEnabled: false` (an admin disabled the account).
    pub fn disable_user(&self, oid: &str) {
        lock(&self.delta).disabled.insert(oid.to_ascii_lowercase());
        self.log_user_change(oid);
    }

    /// `accountEnabled: true` again.
    pub fn enable_user(&self, oid: &str) {
        lock(&self.delta).disabled.remove(&oid.to_ascii_lowercase());
        self.log_user_change(oid);
    }

    /// "Revoke sessions" (`revokeSignInSessions`): `signInSessionsValidFromDateTime` becomes now.
    /// Returns it in Unix seconds.
    pub fn revoke_sessions(&self, oid: &str) -> u64 {
        let now = unix_now();
        let iso = httpdate_iso(now);
        lock(&self.delta).sessions_valid_from.insert(oid.to_ascii_lowercase(), iso);
        self.log_user_change(oid);
        now
    }

    /// Deletes a user (`reason`: `changed` for a soft delete, restorable for 30 days, or
    /// `deleted`): gone from Graph (404), `@removed` in the users delta, removed from each
    /// of their groups.
    pub fn delete_user(&self, oid: &str, reason: &str) {
        let oid = oid.to_ascii_lowercase();
        let Some(user) = lock(&self.users).remove(&oid) else { return };
        for g in &user.groups {
            self.log_member_change(g, &oid, false, true);
        }
        lock(&self.delta).deleted.insert(oid.clone(), (reason.to_string(), user.tenant.clone()));
        self.log_user_change(&oid);
    }

    /// Removes user `oid` from group `group` (a direct membership).
    pub fn remove_membership(&self, oid: &str, group: &str) {
        let (oid, group) = (oid.to_ascii_lowercase(), group.to_ascii_lowercase());
        let removed = match lock(&self.users).get_mut(&oid) {
            Some(u) => {
                let before = u.groups.len();
                u.groups.retain(|g| !g.eq_ignore_ascii_case(&group));
                before != u.groups.len()
            }
            None => false,
        };
        if removed {
            self.log_member_change(&group, &oid, false, true);
        }
    }

    /// Adds user `oid` to group `group` (a direct membership).
    pub fn add_membership(&self, oid: &str, group: &str) {
        let (oid, group) = (oid.to_ascii_lowercase(), group.to_ascii_lowercase());
        if let Some(u) = lock(&self.users).get_mut(&oid)
            && !u.groups.iter().any(|g| g.eq_ignore_ascii_case(&group))
        {
            u.groups.push(group.clone());
        }
        self.log_member_change(&group, &oid, false, false);
    }

    /// Every delta token issued so far is refused from now on (Graph's are good for about a
    /// week), as `how`.
    pub fn expire_delta_tokens(&self, how: ExpiredAs) {
        let mut log = lock(&self.delta);
        log.valid_from = log.seq + 1;
        log.expired_as = how;
        log.seq += 1;
    }

    /// Entries per delta page.
    pub fn set_delta_page_size(&self, size: usize) {
        lock(&self.delta).page_size = size.max(1);
    }

    // === the endpoints ===

    /// `GET /users/delta` for the users of `tenant`.
    pub(super) fn users_delta(&self, tenant: &str, q: &HashMap<String, String>) -> Response<Body> {
        let round = match self.round(q, Vec::new(), "users") {
            Ok(r) => r,
            Err(resp) => return *resp,
        };
        let entries = self.user_entries(tenant, &round);
        self.page(entries, round, "users/delta")
    }

    /// `GET /groups/delta?$select=members&$filter=id eq '…' or …`.
    pub(super) fn groups_delta(&self, tenant: &str, q: &HashMap<String, String>) -> Response<Body> {
        let ids = match q.get("$filter") {
            Some(f) => match parse_id_filter(f) {
                Some(ids) if ids.len() <= 50 => ids,
                Some(_) => {
                    return graph_error(
                        StatusCode::BAD_REQUEST,
                        "Request_UnsupportedQuery",
                        "at most 50 ids in a $filter",
                    );
                }
                None => return graph_error(StatusCode::BAD_REQUEST, "Request_BadRequest", "unsupported $filter"),
            },
            None => Vec::new(),
        };
        let round = match self.round(q, ids, "groups") {
            Ok(r) => r,
            Err(resp) => return *resp,
        };
        let pairs = self.member_entries(tenant, &round);
        // A page holds up to page_size (group, member) pairs, grouped by group in order.
        let size = lock(&self.delta).page_size;
        let total = pairs.len();
        let page: Vec<&(String, Value)> = pairs.iter().skip(round.offset).take(size).collect();
        let mut value: Vec<Value> = Vec::new();
        for (group, member) in page {
            match value.last_mut() {
                Some(last) if last["id"] == json!(group) => {
                    if !member.is_null()
                        && let Some(a) = last["members@delta"].as_array_mut()
                    {
                        a.push(member.clone());
                    }
                }
                _ => {
                    let members = if member.is_null() { vec![] } else { vec![member.clone()] };
                    value.push(json!({"id": group, "members@delta": members}));
                }
            }
        }
        self.links(value, round, total, size, "groups/delta")
    }

    /// The round a request continues: from its token, or a new one from the start.
    fn round(&self, q: &HashMap<String, String>, ids: Vec<String>, what: &str) -> Result<Round, Box<Response<Body>>> {
        let log = lock(&self.delta);
        let token = q.get("$skiptoken").or(q.get("$deltatoken"));
        let round = match (token.map(String::as_str), q.contains_key("$deltatoken")) {
            (None, _) => Round { from: 0, to: log.seq, offset: 0, ids },
            (Some("latest"), true) => Round { from: log.seq, to: log.seq, offset: 0, ids },
            (Some(t), is_delta) => {
                let Some(mut r) = Round::decode(t) else {
                    return Err(Box::new(graph_error(StatusCode::BAD_REQUEST, "Request_BadRequest", "bad token")));
                };
                if r.from < log.valid_from && (r.from > 0 || r.offset > 0 || is_delta) {
                    return Err(Box::new(expired(log.expired_as, &format!("{}/graph/v1.0/{what}/delta", self.base()))));
                }
                if is_delta {
                    // A delta token: the changes since its round ended, up to now.
                    r = Round { from: r.to, to: log.seq, offset: 0, ids: r.ids };
                }
                r
            }
        };
        Ok(round)
    }

    fn user_entries(&self, tenant: &str, round: &Round) -> Vec<Value> {
        let users = lock(&self.users);
        let log = lock(&self.delta);
        let home = self.settings.tenant_id.to_ascii_lowercase();
        let of_tenant = |t: &Option<String>| t.as_deref().unwrap_or(&home).eq_ignore_ascii_case(tenant);
        let state = |oid: &str| -> Option<Value> {
            if let Some((reason, t)) = log.deleted.get(oid) {
                return of_tenant(t).then(|| json!({"id": oid, "@removed": {"reason": reason}}));
            }
            let u = users.get(oid).filter(|u| of_tenant(&u.tenant))?;
            Some(json!({
                "id": u.oid,
                "accountEnabled": !log.disabled.contains(oid),
                "signInSessionsValidFromDateTime": log.sessions_valid_from.get(oid).cloned()
                    .unwrap_or_else(|| "2026-01-01T00:00:00Z".into()),
            }))
        };
        let oids: Vec<String> = if round.from == 0 {
            let mut all: Vec<String> = users.keys().cloned().collect();
            all.sort();
            all
        } else {
            let mut seen = BTreeSet::new();
            log.user_changes
                .iter()
                .filter(|(s, _)| *s > round.from && *s <= round.to)
                .filter(|(_, oid)| seen.insert(oid.clone()))
                .map(|(_, oid)| oid.clone())
                .collect()
        };
        let repeat = log.repeat && round.from > 0;
        oids.iter()
            .filter_map(|oid| state(oid))
            .flat_map(|v| if repeat { vec![v.clone(), v] } else { vec![v] })
            .collect()
    }

    /// (group, member entry) pairs of a groups round; a group without members has a `null`.
    fn member_entries(&self, tenant: &str, round: &Round) -> Vec<(String, Value)> {
        let users = lock(&self.users);
        let nesting = lock(&self.nesting);
        let log = lock(&self.delta);
        let home = self.settings.tenant_id.to_ascii_lowercase();
        let member = |id: &str, is_group: bool, removed: bool| {
            let kind = if is_group { "#microsoft.graph.group" } else { "#microsoft.graph.user" };
            let mut m = json!({"@odata.type": kind, "id": id});
            if removed {
                m["@removed"] = json!({"reason": "deleted"});
            }
            m
        };
        let mut out = Vec::new();
        for g in &round.ids {
            if round.from == 0 {
                let mut members: Vec<Value> = Vec::new();
                let mut uids: Vec<&MockUser> = users
                    .values()
                    .filter(|u| u.tenant.as_deref().unwrap_or(&home).eq_ignore_ascii_case(tenant))
                    .filter(|u| u.groups.iter().any(|x| x.eq_ignore_ascii_case(g)))
                    .collect();
                uids.sort_by(|a, b| a.oid.cmp(&b.oid));
                members.extend(uids.iter().map(|u| member(&u.oid.to_ascii_lowercase(), false, false)));
                let mut children: Vec<&String> =
                    nesting.iter().filter(|(_, parents)| parents.contains(g)).map(|(c, _)| c).collect();
                children.sort();
                members.extend(children.into_iter().map(|c| member(c, true, false)));
                if members.is_empty() {
                    out.push((g.clone(), Value::Null));
                }
                out.extend(members.into_iter().map(|m| (g.clone(), m)));
            } else {
                for (_, group, m, is_group, removed) in
                    log.member_changes.iter().filter(|c| c.0 > round.from && c.0 <= round.to && &c.1 == g)
                {
                    out.push((group.clone(), member(m, *is_group, *removed)));
                    if log.repeat {
                        out.push((group.clone(), member(m, *is_group, *removed)));
                    }
                }
            }
        }
        out
    }

    fn page(&self, entries: Vec<Value>, round: Round, what: &str) -> Response<Body> {
        let size = lock(&self.delta).page_size;
        let total = entries.len();
        let value: Vec<Value> = entries.into_iter().skip(round.offset).take(size).collect();
        self.links(value, round, total, size, what)
    }

    /// The page with its `@odata.nextLink`, or the last one with its `@odata.deltaLink`.
    fn links(&self, value: Vec<Value>, round: Round, total: usize, size: usize, what: &str) -> Response<Body> {
        let base = format!("{}/graph/v1.0/{what}", self.base());
        let mut body =
            json!({"@odata.context": format!("{}/graph/v1.0/$metadata#{what}", self.base()), "value": value});
        let enc = |t: String| url::form_urlencoded::byte_serialize(t.as_bytes()).collect::<String>();
        if round.offset + size < total {
            let next = Round { offset: round.offset + size, ..round };
            body["@odata.nextLink"] = json!(format!("{base}?$skiptoken={}", enc(next.encode())));
        } else {
            let done = Round { from: round.to, offset: 0, ..round };
            body["@odata.deltaLink"] = json!(format!("{base}?$deltatoken={}", enc(done.encode())));
        }
        reply(StatusCode::OK, body)
    }
}

fn expired(how: ExpiredAs, start_over: &str) -> Response<Body> {
    match how {
        ExpiredAs::Gone => {
            let mut r = graph_error(StatusCode::GONE, "resyncRequired", "The delta token has expired; start over.");
            if let Ok(v) = header::HeaderValue::from_str(start_over) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        ExpiredAs::SyncStateNotFound => {
            graph_error(StatusCode::BAD_REQUEST, "syncStateNotFound", "The sync state could not be found.")
        }
    }
}

/// `id eq 'a' or id eq 'b'` -> [a, b] (lowercase).
fn parse_id_filter(filter: &str) -> Option<Vec<String>> {
    filter
        .split(" or ")
        .map(|part| {
            let id = part.trim().strip_prefix("id eq '")?.strip_suffix('\'')?;
            Some(id.to_ascii_lowercase())
        })
        .collect()
}

/// Unix seconds as `2026-12-02T10:02:00Z`.
fn httpdate_iso(secs: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_filter_is_read_and_anything_else_refused() {
        assert_eq!(parse_id_filter("id eq 'A' or id eq 'b'"), Some(vec!["a".into(), "b".into()]));
        assert_eq!(parse_id_filter("displayName eq 'x'"), None);
        assert_eq!(httpdate_iso(0), "1970-01-01T00:00:00Z");
    }
}
