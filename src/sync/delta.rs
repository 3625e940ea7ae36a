//! Delta rounds: follow a Graph delta query's pages to its delta link.
//!
//! Owns: the start URLs (`/users/delta?$select=id,accountEnabled,signInSessionsValidFromDateTime`,
//! `/groups/delta?$select=members&$filter=id eq '…' or …` with at most 50 ids), following
//! `@odata.nextLink` to the final `@odata.deltaLink`, and a bound on pages per round. Must not:
//! interpret entries (see `model`) or back off (see `sync`).

use serde_json::Value;

use crate::graph::{DeltaError, GraphClient};

/// At most this many ids in one groups-delta `$filter` (Graph's limit).
pub const GROUPS_PER_FILTER: usize = 50;
/// A round longer than this many pages is abandoned (and retried later).
const MAX_PAGES: usize = 5000;

/// The first URL of a users round.
pub fn users_start(graph: &GraphClient) -> String {
    format!("{}/users/delta?$select=id,accountEnabled,signInSessionsValidFromDateTime", graph.base())
}

/// The first URL of a groups round for `ids` (at most [`GROUPS_PER_FILTER`]).
pub fn groups_start(graph: &GraphClient, ids: &[String]) -> String {
    let filter = ids.iter().map(|id| format!("id eq '{id}'")).collect::<Vec<_>>().join(" or ");
    let filter: String = url::form_urlencoded::byte_serialize(filter.as_bytes()).collect();
    format!("{}/groups/delta?$select=members&$filter={filter}", graph.base())
}

/// Every entry of the round that starts at `url`, and the delta link that ends it; the number
/// of requests made is added to `requests`.
pub async fn round(
    graph: &GraphClient,
    tid: &str,
    endpoint: &'static str,
    url: &str,
    requests: &mut u64,
) -> Result<(Vec<Value>, String), DeltaError> {
    let mut entries = Vec::new();
    let mut next = url.to_string();
    for _ in 0..MAX_PAGES {
        *requests += 1;
        let page = graph.delta_page(tid, endpoint, &next).await?;
        entries.extend(page.value);
        match (page.next_link, page.delta_link) {
            (Some(n), _) => next = n,
            (None, Some(delta)) => return Ok((entries, delta)),
            (None, None) => return Err(DeltaError::Failed(format!("{endpoint}: a page with neither link"))),
        }
    }
    Err(DeltaError::Failed(format!("{endpoint}: more than {MAX_PAGES} pages")))
}
