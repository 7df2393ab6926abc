//! Which IP addresses count as "out on the internet". Webhook targets must be, so that a
//! webhook cannot be turned into a probe of the server's own network (SSRF); the rule is
//! checked when a webhook is created and again on the address actually connected to.
//!
//! Architecture Invariant: this is the one place that decides it; pure, no I/O.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// True when `ip` is globally routable: not loopback, private, link-local, shared (CGNAT),
/// reserved, documentation, benchmarking, multicast or otherwise special-purpose (IANA
/// special-purpose registries). IPv6 addresses that carry an IPv4 address (mapped, compatible,
/// NAT64, 6to4) are judged by that IPv4 address, because that is where packets end up.
pub fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => is_global_v4(v),
        IpAddr::V6(v) => is_global_v6(v),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], len: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn is_global_v4(ip: Ipv4Addr) -> bool {
    const NOT_GLOBAL: &[([u8; 4], u32)] = &[
        ([0, 0, 0, 0], 8),       // "this network", unspecified
        ([10, 0, 0, 0], 8),      // private
        ([100, 64, 0, 0], 10),   // shared address space (CGNAT)
        ([127, 0, 0, 0], 8),     // loopback
        ([169, 254, 0, 0], 16),  // link-local (cloud metadata lives here)
        ([172, 16, 0, 0], 12),   // private
        ([192, 0, 0, 0], 24),    // IETF protocol assignments
        ([192, 0, 2, 0], 24),    // documentation (TEST-NET-1)
        ([192, 88, 99, 0], 24),  // 6to4 relay anycast
        ([192, 168, 0, 0], 16),  // private
        ([198, 18, 0, 0], 15),   // benchmarking
        ([198, 51, 100, 0], 24), // documentation (TEST-NET-2)
        ([203, 0, 113, 0], 24),  // documentation (TEST-NET-3)
        ([224, 0, 0, 0], 4),     // multicast
        ([240, 0, 0, 0], 4),     // reserved, and the broadcast address
    ];
    !NOT_GLOBAL.iter().any(|&(net, len)| in_v4(ip, net, len))
}

fn in_v6(ip: Ipv6Addr, net: [u16; 8], len: u32) -> bool {
    let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
    u128::from(ip) & mask == u128::from(Ipv6Addr::from(net)) & mask
}

/// The IPv4 address in the low 32 bits.
fn low_v4(ip: Ipv6Addr) -> Ipv4Addr {
    Ipv4Addr::from(u128::from(ip) as u32)
}

fn is_global_v6(ip: Ipv6Addr) -> bool {
    // Addresses that lead to an IPv4 address in their low 32 bits: judged by it.
    const CARRY_V4: &[([u16; 8], u32)] = &[
        ([0, 0, 0, 0, 0, 0xffff, 0, 0], 96),    // IPv4-mapped
        ([0, 0, 0, 0, 0, 0, 0, 0], 96),         // IPv4-compatible (:: and ::1 included)
        ([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96), // NAT64, well-known prefix
    ];
    if CARRY_V4.iter().any(|&(net, len)| in_v6(ip, net, len)) {
        return is_global_v4(low_v4(ip));
    }
    if in_v6(ip, [0x2002, 0, 0, 0, 0, 0, 0, 0], 16) {
        // 6to4: the IPv4 address is bits 16..48.
        return is_global_v4(Ipv4Addr::from((u128::from(ip) >> 80) as u32));
    }
    const NOT_GLOBAL: &[([u16; 8], u32)] = &[
        // Local-use NAT64 (RFC 8215): where the IPv4 address sits depends on a local prefix
        // length we cannot know, and the range is not globally reachable anyway.
        ([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),
        ([0x100, 0, 0, 0, 0, 0, 0, 0], 64),      // discard-only
        ([0x2001, 0, 0, 0, 0, 0, 0, 0], 32),     // Teredo (tunnels to anywhere, IPv4 included)
        ([0x2001, 2, 0, 0, 0, 0, 0, 0], 48),     // benchmarking
        ([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), // documentation
        ([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),      // unique local
        ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),     // link-local
        ([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),     // site-local (deprecated)
        ([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),      // multicast
    ];
    !NOT_GLOBAL.iter().any(|&(net, len)| in_v6(ip, net, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table() {
        let cases: &[(&str, bool)] = &[
            // IPv4
            ("0.0.0.0", false),
            ("0.1.2.3", false),
            ("10.0.0.1", false),
            ("10.255.255.255", false),
            ("100.63.255.255", true),
            ("100.64.0.1", false),
            ("100.127.255.255", false),
            ("100.128.0.0", true),
            ("127.0.0.1", false),
            ("127.255.255.254", false),
            ("169.254.169.254", false),
            ("172.15.255.255", true),
            ("172.16.0.1", false),
            ("172.31.255.255", false),
            ("172.32.0.0", true),
            ("192.0.0.8", false),
            ("192.0.1.1", true),
            ("192.0.2.1", false),
            ("192.88.99.1", false),
            ("192.168.1.1", false),
            ("198.17.255.255", true),
            ("198.18.0.1", false),
            ("198.19.255.255", false),
            ("198.20.0.0", true),
            ("198.51.100.7", false),
            ("203.0.113.9", false),
            ("224.0.0.1", false),
            ("239.255.255.250", false),
            ("240.0.0.1", false),
            ("255.255.255.255", false),
            ("1.1.1.1", true),
            ("8.8.8.8", true),
            ("93.184.216.34", true),
            ("223.255.255.255", true),
            // IPv6
            ("::", false),
            ("::1", false),
            ("::127.0.0.1", false),
            ("::8.8.8.8", true),
            ("::ffff:0.0.0.0", false),
            ("::ffff:127.0.0.1", false),
            ("::ffff:169.254.169.254", false),
            ("::ffff:10.1.2.3", false),
            ("::ffff:8.8.8.8", true),
            ("64:ff9b::7f00:1", false),
            ("64:ff9b::a9fe:a9fe", false),
            ("64:ff9b::808:808", true),
            ("64:ff9b:1::808:808", false),
            ("64:ff9b:1:ffff::1", false),
            ("2002:7f00:1::", false),
            ("2002:a9fe:a9fe::1", false),
            ("2002:808:808::1", true),
            ("2001::1", false),
            ("2001:0:ffff::1", false),
            ("2001:2::1", false),
            ("2001:2:0:ffff::1", false),
            ("2001:db8::1", false),
            ("2001:db8:ffff::1", false),
            ("100::1", false),
            ("100::ffff:ffff:ffff:ffff", false),
            ("100:0:0:1::1", true),
            ("fc00::1", false),
            ("fd12:3456::1", false),
            ("fe80::1", false),
            ("febf::1", false),
            ("fec0::1", false),
            ("feff::1", false),
            ("ff02::1", false),
            ("ff0e::1", false),
            ("2001:4860:4860::8888", true),
            ("2606:4700:4700::1111", true),
            ("2a00:1450:4001::1", true),
            ("2001:1::1", true),
            ("2001:3::1", true),
        ];
        for (ip, global) in cases {
            let parsed: IpAddr = ip.parse().expect("valid address in the table");
            assert_eq!(is_global(parsed), *global, "{ip}");
        }
    }

    #[test]
    fn mapped_and_compatible_agree_with_ipv4_everywhere() {
        // Every /8 and a few addresses inside it: the IPv6 forms carrying an IPv4 address are
        // judged exactly like the address itself.
        for a in 0..=255u8 {
            for rest in [
                [0, 0, 1],
                [64, 0, 1],
                [99, 1, 1],
                [168, 1, 1],
                [254, 169, 254],
            ] {
                let v4 = Ipv4Addr::new(a, rest[0], rest[1], rest[2]);
                let want = is_global(IpAddr::V4(v4));
                let mapped = v4.to_ipv6_mapped();
                let nat64 = Ipv6Addr::from(
                    u128::from(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0))
                        | u128::from(u32::from(v4)),
                );
                let sixtofour =
                    Ipv6Addr::from((0x2002u128 << 112) | (u128::from(u32::from(v4)) << 80));
                assert_eq!(is_global(IpAddr::V6(mapped)), want, "{mapped}");
                assert_eq!(is_global(IpAddr::V6(nat64)), want, "{nat64}");
                assert_eq!(is_global(IpAddr::V6(sixtofour)), want, "{sixtofour}");
                let compat = v4.to_ipv6_compatible();
                assert_eq!(is_global(IpAddr::V6(compat)), want, "{compat}");
            }
        }
    }
}
