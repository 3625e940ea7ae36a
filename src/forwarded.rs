//! Who the client is, and the `X-Forwarded-*` / `Forwarded` / `X-Real-IP` headers upstreams see.
//!
//! Owns: `server.trusted_proxies`; finding the client address (the socket peer, or, when the
//! peer is a trusted proxy, the right-most `X-Forwarded-For` hop that is not itself trusted);
//! and rewriting the forwarding headers of a proxied request. From a trusted peer they are kept
//! and the peer is appended to `X-Forwarded-For`; from anyone else `X-Forwarded-For`,
//! `X-Forwarded-Proto` and `X-Forwarded-Host` are overwritten and `Forwarded` and `X-Real-IP`
//! dropped, so that a client cannot choose the address or host an upstream believes.
//! `X-Forwarded-Host` is only ever set from a `Host` that is a valid authority.
//! Must not: decide whether a request is allowed.

use std::cell::RefCell;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// The peers whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> TrustedProxies {
        TrustedProxies { nets }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// The client's address: the peer, unless the peer is a trusted proxy; then the right-most
    /// `X-Forwarded-For` entry that is not a trusted proxy.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical_ip(peer);
        if !self.contains(peer) {
            return peer;
        }
        let hops: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            match hop.parse::<IpAddr>().map(canonical_ip) {
                Ok(ip) if self.contains(ip) => client = ip,
                Ok(ip) => return ip,
                // An unparsable hop: stop at the last address we could trust.
                Err(_) => return client,
            }
        }
        client
    }

    /// Rewrites the forwarding headers of a request from `peer` received over `proto`;
    /// returns whether the peer is a trusted proxy.
    pub fn rewrite(&self, headers: &mut HeaderMap, peer: IpAddr, proto: &'static str) -> bool {
        let peer = canonical_ip(peer);
        let host = headers.get(header::HOST).filter(|h| is_authority(h)).cloned();
        if self.contains(peer) {
            append_for(headers, peer);
            if !headers.contains_key(&X_FORWARDED_PROTO) {
                headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
            }
            if !headers.contains_key(&X_FORWARDED_HOST)
                && let Some(h) = host
            {
                headers.insert(X_FORWARDED_HOST.clone(), h);
            }
            return true;
        }
        // One look at the names first: a removal hashes its name, and most requests carry neither.
        if headers.keys().any(|n| *n == header::FORWARDED || *n == X_REAL_IP) {
            headers.remove(header::FORWARDED);
            headers.remove(&X_REAL_IP);
        }
        headers.insert(X_FORWARDED_FOR.clone(), ip_value(peer));
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
        match host {
            Some(h) => headers.insert(X_FORWARDED_HOST.clone(), h),
            None => headers.remove(&X_FORWARDED_HOST),
        };
        false
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, from dual-stack listeners) as IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

thread_local! {
    /// This thread's last peer with its header value, and the last `Host` found valid: a
    /// worker's connections come from few addresses (an ingress, a load balancer) for one
    /// host, so the value is formatted and the host parsed once, not on every request. A
    /// memo of pure functions of their inputs: it changes no answer.
    static MEMO: RefCell<Memo> = const { RefCell::new(Memo { peer: None, host: None }) };
}

struct Memo {
    peer: Option<(IpAddr, HeaderValue)>,
    host: Option<HeaderValue>,
}

fn ip_value(ip: IpAddr) -> HeaderValue {
    MEMO.with(|memo| {
        let mut memo = memo.borrow_mut();
        match &memo.peer {
            Some((last, value)) if *last == ip => value.clone(),
            _ => {
                let value = HeaderValue::from_str(&ip.to_string()).unwrap_or(HeaderValue::from_static("unknown"));
                memo.peer = Some((ip, value.clone()));
                value
            }
        }
    })
}

fn append_for(headers: &mut HeaderMap, peer: IpAddr) {
    let prior: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    let value = if prior.is_empty() {
        ip_value(peer)
    } else {
        HeaderValue::from_str(&format!("{}, {peer}", prior.join(", "))).unwrap_or_else(|_| ip_value(peer))
    };
    headers.insert(X_FORWARDED_FOR.clone(), value);
}

/// `host[:port]` with nothing else (no userinfo, path or spaces).
fn is_authority(v: &HeaderValue) -> bool {
    if MEMO.with(|memo| memo.borrow().host.as_ref() == Some(v)) {
        return true;
    }
    let valid = parses_as_authority(v);
    if valid {
        MEMO.with(|memo| memo.borrow_mut().host = Some(v.clone()));
    }
    valid
}

fn parses_as_authority(v: &HeaderValue) -> bool {
    let Ok(s) = v.to_str() else { return false };
    !s.is_empty()
        && !s.contains('@')
        && s.parse::<http::uri::Authority>().is_ok_and(|a| a.as_str() == s && !a.host().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| n.parse().unwrap()).collect())
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() {
        let t = trusted(&[]);
        let h = headers(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(t.client_ip("10.0.0.9".parse().unwrap(), &h), "10.0.0.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let t = trusted(&["10.0.0.0/8"]);
        let peer = "10.0.0.9".parse().unwrap();
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 1.2.3.4, 10.1.1.1")]);
        assert_eq!(t.client_ip(peer, &h), "1.2.3.4".parse::<IpAddr>().unwrap());
        assert_eq!(t.client_ip(peer, &HeaderMap::new()), peer);
        let mapped: IpAddr = "::ffff:10.0.0.9".parse().unwrap();
        assert_eq!(t.client_ip(mapped, &h), "1.2.3.4".parse::<IpAddr>().unwrap(), "v4-mapped peer is trusted");
    }

    #[test]
    fn an_untrusted_peer_cannot_choose_the_forwarding_headers() {
        let mut h = headers(&[
            ("host", "app.example"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=6.6.6.6;host=evil.example"),
            ("x-real-ip", "6.6.6.6"),
        ]);
        trusted(&[]).rewrite(&mut h, "127.0.0.1".parse().unwrap(), "http");
        assert_eq!(h[&X_FORWARDED_FOR], "127.0.0.1");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(h[&X_FORWARDED_HOST], "app.example");
        assert!(h.get(header::FORWARDED).is_none());
        assert!(h.get(&X_REAL_IP).is_none());
    }

    #[test]
    fn an_untrusted_peer_loses_every_forwarded_and_x_real_ip_value_however_spelled() {
        let mut h = HeaderMap::new();
        for (name, value) in [("X-REAL-IP", "6.6.6.6"), ("x-real-ip", "7.7.7.7"), ("Forwarded", "for=6.6.6.6")] {
            h.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_static(value));
        }
        h.append(header::FORWARDED, HeaderValue::from_static("for=7.7.7.7"));
        trusted(&[]).rewrite(&mut h, "127.0.0.1".parse().unwrap(), "http");
        assert!(h.get_all(header::FORWARDED).iter().next().is_none(), "{h:?}");
        assert!(h.get_all(&X_REAL_IP).iter().next().is_none(), "{h:?}");
        assert_eq!(h.get_all(&X_FORWARDED_FOR).iter().collect::<Vec<_>>(), ["127.0.0.1"]);
    }

    #[test]
    fn a_trusted_peer_keeps_its_headers_and_is_appended() {
        let mut h = headers(&[
            ("host", "app.example"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "5.6.7.8"),
            ("x-forwarded-proto", "https"),
            ("x-real-ip", "1.2.3.4"),
        ]);
        trusted(&["127.0.0.0/8"]).rewrite(&mut h, "127.0.0.1".parse().unwrap(), "http");
        assert_eq!(h[&X_FORWARDED_FOR], "1.2.3.4, 5.6.7.8, 127.0.0.1");
        assert_eq!(h.get_all(&X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert_eq!(h[&X_FORWARDED_HOST], "app.example");
        assert_eq!(h[&X_REAL_IP], "1.2.3.4");
    }

    #[test]
    fn forwarded_host_only_from_a_valid_authority() {
        for bad in ["user@evil.example", "a b", "evil.example/path", "x:y:z", ""] {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_str(bad).unwrap());
            h.insert(X_FORWARDED_HOST.clone(), HeaderValue::from_static("spoofed"));
            trusted(&[]).rewrite(&mut h, "127.0.0.1".parse().unwrap(), "http");
            assert!(h.get(&X_FORWARDED_HOST).is_none(), "{bad:?}");
        }
        let mut h = headers(&[("host", "[::1]:8080")]);
        trusted(&[]).rewrite(&mut h, "127.0.0.1".parse().unwrap(), "http");
        assert_eq!(h[&X_FORWARDED_HOST], "[::1]:8080");
    }

    #[test]
    fn the_per_thread_memo_never_changes_an_answer() {
        // Alternating valid and invalid hosts, and peers, on one thread: each request gets what
        // it would get alone.
        for (host, peer, want_host) in [
            ("app.example", "10.0.0.1", Some("app.example")),
            ("user@evil.example", "10.0.0.1", None),
            ("app.example", "10.0.0.2", Some("app.example")),
            ("other.example:8443", "10.0.0.1", Some("other.example:8443")),
            ("app.example/x", "10.0.0.2", None),
        ] {
            let mut h = headers(&[("host", host), ("x-forwarded-for", "6.6.6.6")]);
            trusted(&[]).rewrite(&mut h, peer.parse().unwrap(), "http");
            assert_eq!(h[&X_FORWARDED_FOR], peer);
            assert_eq!(h.get(&X_FORWARDED_HOST).map(|v| v.to_str().unwrap()), want_host, "{host}");
        }
    }
}
