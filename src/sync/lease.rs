//! Which replica polls Graph: a lease in Redis.
//!
//! Owns: taking the lease (`SET key id NX PX`), renewing it while held (only by its holder: a
//! compare-and-expire script), and telling whether this replica holds it. A holder that dies
//! stops renewing; another replica takes the lease within [`TTL`]. Must not: poll Graph or
//! touch the directory model.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::cache::redis::RedisStore;

/// How long a lease lasts without renewal.
pub const TTL: Duration = Duration::from_secs(5);
/// How often the holder renews and the others try to take it.
pub const EVERY: Duration = Duration::from_secs(1);

/// This replica's view of the lease.
pub struct Lease {
    key: String,
    id: String,
    held: AtomicBool,
}

impl Lease {
    pub fn new(redis: &RedisStore, id: &str) -> Lease {
        Lease { key: redis.key("sync:lease"), id: id.to_string(), held: AtomicBool::new(false) }
    }

    pub fn held(&self) -> bool {
        self.held.load(Ordering::Relaxed)
    }

    /// Renews the lease when held, or tries to take it; returns whether it is held now (and
    /// whether that is new).
    pub async fn refresh(&self, redis: &RedisStore) -> (bool, bool) {
        let was = self.held();
        let now = if was {
            matches!(redis.renew_if(&self.key, &self.id, TTL).await, Ok(true))
        } else {
            matches!(redis.set_nx(&self.key, &self.id, TTL).await, Ok(true))
        };
        self.held.store(now, Ordering::Relaxed);
        (now, now && !was)
    }
}
