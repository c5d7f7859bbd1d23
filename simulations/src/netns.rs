//! Two network namespaces joined by a pair of TUN devices whose file descriptors stay with this
//! process: every packet from one namespace to the other passes through our forwarder.
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

/// The two namespaces; deleted on drop.
#[derive(Debug)]
pub struct NetnsPair {
    pub ns_a: String,
    pub ns_b: String,
    pub addr_a: String,
    pub addr_b: String,
}

impl NetnsPair {
    /// Creates `<name>-a` and `<name>-b` with addresses 10.201.`subnet`.1 and .2, and returns
    /// the TUN devices (a's end, b's end) for the forwarder.
    pub fn create(name: &str, subnet: u8) -> Result<(NetnsPair, Tun, Tun), NetnsError> {
        if name.is_empty()
            || name.len() > 8
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(NetnsError::Name(name.to_owned()));
        }
        let pair = NetnsPair {
            ns_a: format!("{name}-a"),
            ns_b: format!("{name}-b"),
            addr_a: format!("10.201.{subnet}.1"),
            addr_b: format!("10.201.{subnet}.2"),
        };
        // Leftovers of a killed run.
        let _ = ip(&["netns", "del", &pair.ns_a]);
        let _ = ip(&["netns", "del", &pair.ns_b]);
        ip(&["netns", "add", &pair.ns_a])?;
        ip(&["netns", "add", &pair.ns_b])?;
        let mut tuns = Vec::new();
        for (ns, dev, me, peer) in [
            (&pair.ns_a, format!("zl{name}a"), &pair.addr_a, &pair.addr_b),
            (&pair.ns_b, format!("zl{name}b"), &pair.addr_b, &pair.addr_a),
        ] {
            let tun = Tun::create(&dev).map_err(|source| NetnsError::Tun {
                name: dev.clone(),
                source,
            })?;
            ip(&["link", "set", &dev, "netns", ns])?;
            ip(&["-n", ns, "addr", "add", me, "peer", peer, "dev", &dev])?;
            ip(&["-n", ns, "link", "set", &dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            tuns.push(tun);
        }
        let b = tuns.pop();
        let a = tuns.pop();
        match (a, b) {
            (Some(a), Some(b)) => Ok((pair, a, b)),
            _ => Err(NetnsError::Name(name.to_owned())),
        }
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.ns_a]);
        let _ = ip(&["netns", "del", &self.ns_b]);
    }
}
