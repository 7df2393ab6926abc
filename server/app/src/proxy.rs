//! Which address a request came from when the server sits behind reverse proxies (nginx in
//! front of cluster replicas, a TLS terminator in front of one node): `--trusted-proxies`.
//! Login and enrollment throttles key on the client's address; behind a proxy every request
//! arrives from the proxy, so without this one noisy client would throttle everyone.
//!
//! Rule (the one nginx's `real_ip_recursive on` and Go's `X-Forwarded-For` parsers follow): only
//! when the connecting peer is a trusted proxy is `X-Forwarded-For` read, from its right end,
//! skipping trusted addresses; the first untrusted address is the client. A client cannot forge
//! its way past that: whatever it wrote itself is to the left of what the proxy appended.
//! Pure, no I/O.

use axum::http::HeaderMap;
use std::net::{IpAddr, SocketAddr};

/// An address or network (`10.0.0.0/8`, `::1`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ip` or `ip/prefix`.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let bad = || format!("'{s}' is not an IP address or network (like 10.0.0.0/8 or ::1)");
        let (ip, prefix) = match s.trim().split_once('/') {
            Some((ip, p)) => (ip, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = ip.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(Cidr { addr, prefix })
    }

    /// Whether `ip` is in this network (an IPv4-mapped IPv6 address counts as its IPv4 one).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// At most this many `X-Forwarded-For` entries are looked at (a bound on work per request).
const MAX_HOPS: usize = 16;

/// The client's address: `peer` itself unless `peer` is trusted and `X-Forwarded-For` names an
/// untrusted address to the right of any trusted ones. The port of a forwarded address is 0
/// (unknown).
pub fn client_addr(trusted: &[Cidr], peer: SocketAddr, headers: &HeaderMap) -> SocketAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if trusted.is_empty() || !is_trusted(peer.ip()) {
        return peer;
    }
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.iter().rev().take(MAX_HOPS) {
        // An unreadable entry ends the walk: what is left of it cannot be trusted either.
        let Ok(ip) = hop.parse::<IpAddr>() else {
            return peer;
        };
        if !is_trusted(ip) {
            return SocketAddr::new(ip, 0);
        }
    }
    peer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn networks_parse_and_contain() {
        let n = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        for bad in ["10.0.0.0/33", "::/129", "proxy", "10.0.0.0/x", ""] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_hop_behind_a_trusted_peer() {
        let trusted = [
            Cidr::parse("127.0.0.1").unwrap(),
            Cidr::parse("10.0.0.0/8").unwrap(),
        ];
        let proxy: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let client = |xff: &[&str]| client_addr(&trusted, proxy, &headers(xff)).ip().to_string();
        assert_eq!(client(&["203.0.113.7"]), "203.0.113.7");
        // What the client wrote itself is left of what the proxies appended.
        assert_eq!(client(&["6.6.6.6, 203.0.113.7, 10.0.0.2"]), "203.0.113.7");
        assert_eq!(client(&["6.6.6.6", "203.0.113.7"]), "203.0.113.7");
        // Nothing forwarded, or only proxies: the peer.
        assert_eq!(client(&[]), "127.0.0.1");
        assert_eq!(client(&["10.0.0.3"]), "127.0.0.1");
        assert_eq!(client(&["203.0.113.7, junk"]), "127.0.0.1");
    }

    #[test]
    fn an_untrusted_peer_cannot_claim_another_address() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let peer: SocketAddr = "198.51.100.9:4000".parse().unwrap();
        assert_eq!(client_addr(&trusted, peer, &headers(&["1.2.3.4"])), peer);
        assert_eq!(client_addr(&[], peer, &headers(&["1.2.3.4"])), peer);
    }
}
