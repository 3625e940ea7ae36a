//! Rate limits of `/auth/exchange`: token buckets per client IP and per user.
//!
//! Owns: finding the client IP (the socket peer, or, when the peer is a trusted proxy, the
//! right-most `X-Forwarded-For` hop that is not itself trusted), the keyed buckets (GCRA, from
//! `governor`), and how long a refused caller should wait. Must not: trust `X-Forwarded-For`
//! from anyone not listed in `server.trusted_proxies`.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::HeaderMap;
use ipnet::IpNet;

use crate::config::{BucketConfig, ServerConfig};

fn limiter<K: std::hash::Hash + Eq + Clone>(b: Option<BucketConfig>) -> Option<DefaultKeyedRateLimiter<K>> {
    let b = b?;
    let quota = Quota::per_minute(NonZeroU32::new(b.per_minute)?).allow_burst(NonZeroU32::new(b.burst)?);
    Some(RateLimiter::keyed(quota))
}

pub struct ExchangeLimits {
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    per_user: Option<DefaultKeyedRateLimiter<(String, String)>>,
    trusted: Vec<IpNet>,
    clock: DefaultClock,
}

impl ExchangeLimits {
    pub fn new(cfg: &ServerConfig) -> ExchangeLimits {
        ExchangeLimits {
            per_ip: limiter(cfg.rate_limit.exchange_per_ip),
            per_user: limiter(cfg.rate_limit.exchange_per_user),
            trusted: cfg.trusted_proxies.clone(),
            clock: DefaultClock::default(),
        }
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client's address: the peer, unless the peer is a trusted proxy; then the right-most
    /// `X-Forwarded-For` entry that is not a trusted proxy.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusted(peer) {
            return peer;
        }
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        let mut client = peer;
        for hop in hops.iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(ip) if self.trusted(ip) => client = ip,
                Ok(ip) => return ip,
                // An unparsable hop: stop at the last address we could trust.
                Err(_) => return client,
            }
        }
        client
    }

    /// `Err(wait)` when `ip` is over its budget.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Duration> {
        match &self.per_ip {
            Some(l) => l.check_key(&ip).map_err(|n| n.wait_time_from(self.clock.now())),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RateLimitConfig;

    fn limits(trusted: &[&str], per_ip: Option<BucketConfig>) -> ExchangeLimits {
        let cfg = ServerConfig {
            trusted_proxies: trusted.iter().map(|t| t.parse().unwrap()).collect(),
            rate_limit: RateLimitConfig { exchange_per_ip: per_ip, exchange_per_user: None },
            ..ServerConfig::default()
        };
        ExchangeLimits::new(&cfg)
    }

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", v.parse().unwrap());
        h
    }

    #[test]
    fn forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() {
        let l = limits(&[], None);
        assert_eq!(l.client_ip("10.0.0.9".parse().unwrap(), &xff("1.2.3.4")), "10.0.0.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let l = limits(&["10.0.0.0/8"], None);
        let peer = "10.0.0.9".parse().unwrap();
        // The client may prepend anything; only hops added by trusted proxies count.
        assert_eq!(l.client_ip(peer, &xff("6.6.6.6, 1.2.3.4, 10.1.1.1")), "1.2.3.4".parse::<IpAddr>().unwrap());
        assert_eq!(l.client_ip(peer, &HeaderMap::new()), peer);
    }

    #[test]
    fn a_burst_above_the_limit_is_refused_with_a_wait() {
        let l = limits(&[], Some(BucketConfig { per_minute: 60, burst: 2 }));
        let ip = "1.2.3.4".parse().unwrap();
        assert!(l.check_ip(ip).is_ok());
        assert!(l.check_ip(ip).is_ok());
        let wait = l.check_ip(ip).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
        assert!(l.check_ip("5.6.7.8".parse().unwrap()).is_ok(), "buckets are per IP");
    }
}
