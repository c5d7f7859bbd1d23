//! Network namespaces joined by TUN devices whose file descriptors stay with this process: every
//! packet from one namespace to the other passes through our forwarder. [`NetnsPair`] is
//! `zdn-linkem`'s two namespaces; [`Netns`] and [`tun_link`] build any star of them (a scenario's
//! datacenter, stations and site devices).
//!
//! ```text
//!  netns <name>-a            this process (root namespace)            netns <name>-b
//!  <name>a 10.201.K.1  ──fd──►  Shaper a→b  ──fd──►  <name>b 10.201.K.2
//!                      ◄──fd──  Shaper b→a  ◄──fd──
//! ```

use std::io;
use std::process::Command;

use crate::tun::Tun;

/// Why the namespaces could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("`ip {args}` failed: {stderr}")]
    Ip { args: String, stderr: String },
    #[error("running `ip`: {0}")]
    Spawn(io::Error),
    #[error("TUN device {name}: {source}")]
    Tun {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("bad link name {0:?}: 1..8 of [a-z0-9]")]
    Name(String),
}

fn ip(args: &[&str]) -> Result<(), NetnsError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(NetnsError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetnsError::Ip {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// One network namespace with its loopback up; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates the namespace `name` (removing a leftover of a killed run first).
    pub fn create(name: &str) -> Result<Netns, NetnsError> {
        let _ = ip(&["netns", "del", name]);
        ip(&["netns", "add", name])?;
        // From here on, drop removes it again if a later step fails.
        let ns = Netns {
            name: name.to_owned(),
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// One end of a point-to-point link: the namespace, the TUN device's name and its address.
#[derive(Debug, Clone, Copy)]
pub struct LinkEnd<'a> {
    pub ns: &'a Netns,
    pub dev: &'a str,
    pub addr: &'a str,
}

/// Joins two namespaces by a TUN device in each (`a.addr` peer `b.addr` and back); returns the
/// devices (a's end, b's end) for the forwarder. Device names must be unique on the machine while
/// this runs (they are made in the root namespace, then moved).
pub fn tun_link(a: LinkEnd<'_>, b: LinkEnd<'_>) -> Result<(Tun, Tun), NetnsError> {
    let tun = |me: LinkEnd<'_>, peer: LinkEnd<'_>| -> Result<Tun, NetnsError> {
        let t = Tun::create(me.dev).map_err(|source| NetnsError::Tun {
            name: me.dev.to_owned(),
            source,
        })?;
        ip(&["link", "set", me.dev, "netns", &me.ns.name])?;
        ip(&[
            "-n",
            &me.ns.name,
            "addr",
            "add",
            me.addr,
            "peer",
            peer.addr,
            "dev",
            me.dev,
        ])?;
        ip(&["-n", &me.ns.name, "link", "set", me.dev, "up"])?;
        Ok(t)
    };
    Ok((tun(a, b)?, tun(b, a)?))
}

fn check_name(name: &str) -> Result<(), NetnsError> {
    if name.is_empty()
        || name.len() > 8
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(NetnsError::Name(name.to_owned()));
    }
    Ok(())
}

/// The two namespaces of `zdn-linkem up`; deleted on drop.
#[derive(Debug)]
pub struct NetnsPair {
    pub ns_a: String,
    pub ns_b: String,
    pub addr_a: String,
    pub addr_b: String,
    // Declared after the names: dropping these deletes the namespaces.
    _a: Netns,
    _b: Netns,
}

impl NetnsPair {
    /// Creates `<name>-a` and `<name>-b` with addresses 10.201.`subnet`.1 and .2, and returns
    /// the TUN devices (a's end, b's end) for the forwarder.
    pub fn create(name: &str, subnet: u8) -> Result<(NetnsPair, Tun, Tun), NetnsError> {
        check_name(name)?;
        let a = Netns::create(&format!("{name}-a"))?;
        let b = Netns::create(&format!("{name}-b"))?;
        let (addr_a, addr_b) = (format!("10.201.{subnet}.1"), format!("10.201.{subnet}.2"));
        let (dev_a, dev_b) = (format!("zl{name}a"), format!("zl{name}b"));
        let (tun_a, tun_b) = tun_link(
            LinkEnd {
                ns: &a,
                dev: &dev_a,
                addr: &addr_a,
            },
            LinkEnd {
                ns: &b,
                dev: &dev_b,
                addr: &addr_b,
            },
        )?;
        let pair = NetnsPair {
            ns_a: a.name.clone(),
            ns_b: b.name.clone(),
            addr_a,
            addr_b,
            _a: a,
            _b: b,
        };
        Ok((pair, tun_a, tun_b))
    }
}
