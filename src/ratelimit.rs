//! Rate limits of `/auth/exchange`: token buckets per client IP and per user.
//!
//! Owns: the keyed buckets (GCRA, from `governor`) and how long a refused caller should wait.
//! The client address comes from [`crate::forwarded::TrustedProxies`]. Must not: trust
//! `X-Forwarded-For` from anyone not listed in `server.trusted_proxies`.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::HeaderMap;

use crate::config::{BucketConfig, RateLimitConfig};
use crate::forwarded::TrustedProxies;

fn limiter<K: std::hash::Hash + Eq + Clone>(b: Option<BucketConfig>) -> Option<DefaultKeyedRateLimiter<K>> {
    let b = b?;
    let quota = Quota::per_minute(NonZeroU32::new(b.per_minute)?).allow_burst(NonZeroU32::new(b.burst)?);
    Some(RateLimiter::keyed(quota))
}

pub struct ExchangeLimits {
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    per_user: Option<DefaultKeyedRateLimiter<(String, String)>>,
    trusted: TrustedProxies,
    clock: DefaultClock,
}

impl ExchangeLimits {
    pub fn new(cfg: &RateLimitConfig, trusted: TrustedProxies) -> ExchangeLimits {
        ExchangeLimits {
            per_ip: limiter(cfg.exchange_per_ip),
            per_user: limiter(cfg.exchange_per_user),
            trusted,
            clock: DefaultClock::default(),
        }
    }

    /// The client's address (see [`TrustedProxies::client_ip`]).
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        self.trusted.client_ip(peer, headers)
    }

    /// `Err(wait)` when `ip` is over its budget. IPv6 clients share a bucket per /64: one
    /// subscriber usually holds a whole /64, so per-address buckets would be unlimited.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Duration> {
        match &self.per_ip {
            Some(l) => l.check_key(&bucket(ip)).map_err(|n| n.wait_time_from(self.clock.now())),
            None => Ok(()),
        }
    }

    /// `Err(wait)` when the user (tid, oid) is over its budget.
    pub fn check_user(&self, tid: &str, oid: &str) -> Result<(), Duration> {
        match &self.per_user {
            Some(l) => l.check_key(&(tid.to_string(), oid.to_string())).map_err(|n| n.wait_time_from(self.clock.now())),
            None => Ok(()),
        }
    }

    /// Forgets buckets that are full again (keeps memory bounded); called periodically.
    pub fn retain_recent(&self) {
        if let Some(l) = &self.per_ip {
            l.retain_recent();
        }
        if let Some(l) = &self.per_user {
            l.retain_recent();
        }
    }
}

/// The bucket of an address: itself for IPv4 (and v4-mapped IPv6), its /64 for IPv6.
fn bucket(ip: IpAddr) -> IpAddr {
    match crate::forwarded::canonical_ip(ip) {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_ip: Option<BucketConfig>) -> ExchangeLimits {
        let cfg = RateLimitConfig { exchange_per_ip: per_ip, exchange_per_user: None };
        ExchangeLimits::new(&cfg, TrustedProxies::default())
    }

    #[test]
    fn a_burst_above_the_limit_is_refused_with_a_wait() {
        let l = limits(Some(BucketConfig { per_minute: 60, burst: 2 }));
        let ip = "1.2.3.4".parse().unwrap();
        assert!(l.check_ip(ip).is_ok());
        assert!(l.check_ip(ip).is_ok());
        let wait = l.check_ip(ip).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
        assert!(l.check_ip("5.6.7.8".parse().unwrap()).is_ok(), "buckets are per IP");
    }

    #[test]
    fn ipv6_clients_share_a_bucket_per_64() {
        let l = limits(Some(BucketConfig { per_minute: 60, burst: 2 }));
        assert!(l.check_ip("2001:db8:1:2::1".parse().unwrap()).is_ok());
        assert!(l.check_ip("2001:db8:1:2:ffff::9".parse().unwrap()).is_ok());
        assert!(l.check_ip("2001:db8:1:2:abcd::7".parse().unwrap()).is_err(), "same /64");
        assert!(l.check_ip("2001:db8:1:3::1".parse().unwrap()).is_ok(), "another /64");
        assert!(l.check_ip("::ffff:1.2.3.4".parse().unwrap()).is_ok());
        assert!(l.check_ip("1.2.3.4".parse().unwrap()).is_ok());
        assert!(l.check_ip("1.2.3.4".parse().unwrap()).is_err(), "a v4-mapped address is its IPv4 bucket");
    }
}
