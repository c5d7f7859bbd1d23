//! [`Subnet`]: where a connection comes from, coarsely. Identities are free to make and one machine
//! can hold many addresses, so caps and fair shares count by address block: an IPv4 /24 or an IPv6
//! /64 is usually one operator's (a site, a cloud tenant, one provider's customer).

use std::net::IpAddr;

use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;

/// An IPv4 /24 or an IPv6 /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Subnet {
    V4([u8; 3]),
    V6([u8; 8]),
}

impl Subnet {
    /// The block `ip` is in; an IPv4-mapped IPv6 address counts as the IPv4 address it maps.
    pub fn of(ip: IpAddr) -> Subnet {
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                Subnet::V4([o[0], o[1], o[2]])
            }
            IpAddr::V6(v6) => {
                let o = v6.octets();
                let mut p = [0u8; 8];
                p.copy_from_slice(&o[..8]);
                Subnet::V6(p)
            }
        }
    }
}

/// The IP address in a multiaddr (the first `/ip4` or `/ip6` part), canonical.
pub(crate) fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip).to_canonical()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks() {
        let a: IpAddr = "10.1.2.3".parse().unwrap();
        let b: IpAddr = "10.1.2.200".parse().unwrap();
        let c: IpAddr = "10.1.3.3".parse().unwrap();
        assert_eq!(Subnet::of(a), Subnet::of(b));
        assert_ne!(Subnet::of(a), Subnet::of(c));
        let mapped: IpAddr = "::ffff:10.1.2.9".parse().unwrap();
        assert_eq!(Subnet::of(mapped), Subnet::of(a));
        let x: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let y: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let z: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Subnet::of(x), Subnet::of(y));
        assert_ne!(Subnet::of(x), Subnet::of(z));
        let m: Multiaddr = "/ip4/127.0.0.5/tcp/1".parse().unwrap();
        assert_eq!(ip_of(&m), Some("127.0.0.5".parse().unwrap()));
    }
}
