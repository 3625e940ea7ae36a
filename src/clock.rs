//! Wall-clock time for token claims (`iat`, `nbf`, `exp`).
//!
//! Owns: seconds since the Unix epoch. Intervals the gateway measures itself (refetch cooldowns,
//! back-offs, idle connections, in-process revocation expiry) use `tokio::time::Instant`
//! instead, so that tests can pause and advance them. Must not: be used to measure intervals.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn unix_now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
