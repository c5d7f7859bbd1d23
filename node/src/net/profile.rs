//! Network profiles: the timer and gossip settings for where a node runs. The numbers for `field`
//! follow `../shared/research/libp2p-satellite.md`: keep-alives and idle timeouts that survive an
//! 800 ms round trip and short outages, and periodic traffic (ping, identify, gossip heartbeats)
//! cut to almost nothing, because every byte on a satellite link is paid for.

use std::time::Duration;

/// Where a node runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// A seeder on a good network: frequent liveness checks, full gossip mesh.
    Datacenter,
    /// A station behind a satellite link (≈1 Mbps, 600+ ms RTT, loss, outages).
    Field,
    /// A device on a site LAN: like `field` for idle traffic, shorter progress timeout.
    Edge,
}

impl std::str::FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "datacenter" => Ok(Profile::Datacenter),
            "field" => Ok(Profile::Field),
            "edge" => Ok(Profile::Edge),
            _ => Err(format!(
                "unknown profile {s:?}: expected datacenter, field or edge"
            )),
        }
    }
}

/// The settings a profile stands for.
#[derive(Clone, Debug, PartialEq)]
pub struct Tuning {
    /// Close a connection with no streams and no keep-alive reason after this long.
    pub idle_connection_timeout: Duration,
    /// QUIC: the connection dies after this long without a packet (must outlast an RTT spike).
    pub quic_max_idle: Duration,
    /// QUIC keep-alive packets (below `quic_max_idle`).
    pub quic_keep_alive: Duration,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub identify_interval: Duration,
    pub gossip_heartbeat: Duration,
    pub mesh_n: usize,
    pub mesh_n_low: usize,
    pub mesh_n_high: usize,
    pub mesh_outbound_min: usize,
    pub gossip_lazy: usize,
    /// A transfer step with no bytes for this long fails (the scheduler retries elsewhere).
    pub progress_timeout: Duration,
    /// mDNS on by default (a field site's LAN).
    pub mdns: bool,
}

impl Profile {
    pub fn tuning(self) -> Tuning {
        match self {
            Profile::Datacenter => Tuning {
                idle_connection_timeout: Duration::from_secs(60),
                quic_max_idle: Duration::from_secs(30),
                quic_keep_alive: Duration::from_secs(10),
                // Pings cost the remote side too, and a field node pays for every byte: 15 s
                // pings from a datacenter node alone cost a field peer ~4 MB/day (measured,
                // docs/field.md). Dead TCP/QUIC connections are found by the transports anyway.
                ping_interval: Duration::from_secs(120),
                ping_timeout: Duration::from_secs(30),
                identify_interval: Duration::from_secs(5 * 60),
                gossip_heartbeat: Duration::from_secs(1),
                mesh_n: 6,
                mesh_n_low: 4,
                mesh_n_high: 12,
                mesh_outbound_min: 2,
                gossip_lazy: 6,
                progress_timeout: Duration::from_secs(30),
                mdns: false,
            },
            Profile::Field | Profile::Edge => Tuning {
                idle_connection_timeout: Duration::from_secs(300),
                quic_max_idle: Duration::from_secs(60),
                quic_keep_alive: Duration::from_secs(25),
                ping_interval: Duration::from_secs(10 * 60),
                ping_timeout: Duration::from_secs(60),
                identify_interval: Duration::from_secs(12 * 3600),
                gossip_heartbeat: Duration::from_secs(10),
                mesh_n: 2,
                mesh_n_low: 1,
                mesh_n_high: 3,
                mesh_outbound_min: 1,
                gossip_lazy: 0,
                progress_timeout: if self == Profile::Field {
                    Duration::from_secs(90)
                } else {
                    Duration::from_secs(30)
                },
                mdns: true,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_timers_survive_a_satellite_link() {
        let t = Profile::Field.tuning();
        // Keep-alive well inside the idle timeout, both far above an 800 ms RTT.
        assert!(t.quic_keep_alive * 2 <= t.quic_max_idle);
        assert!(t.ping_timeout >= Duration::from_secs(10));
        // Less chatter than a datacenter node.
        let d = Profile::Datacenter.tuning();
        assert!(t.ping_interval > d.ping_interval);
        assert!(t.gossip_heartbeat > d.gossip_heartbeat);
        assert!(t.mesh_n_low <= t.mesh_n && t.mesh_n <= t.mesh_n_high);
        assert!(t.mesh_outbound_min <= t.mesh_n / 2);
    }

    #[test]
    fn parse() {
        assert_eq!("field".parse::<Profile>(), Ok(Profile::Field));
        assert!("lan".parse::<Profile>().is_err());
    }
}
