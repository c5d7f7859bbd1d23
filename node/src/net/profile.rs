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
    pub dht: DhtTuning,
    /// Re-dial of a peer lost during a transfer: first wait, doubling up to `redial_max_wait`,
    /// tried until the peer has been gone `outage_patience`, then the transfer goes on without it.
    pub redial_first_wait: Duration,
    pub redial_max_wait: Duration,
    /// How long a transfer waits for a peer that went silent (a link outage, a seeder restart)
    /// before it gives up on it. What arrived is in the store either way; this decides whether
    /// one `zdn fetch` rides the outage out or stops (exit status 4) for a later run to resume.
    pub outage_patience: Duration,
    /// How long a fetch whose given peers all fail to dial (and no other peer is connected) keeps
    /// dialing them, with the re-dial's back-off, before it fails: a station's link may be down
    /// when its fetch starts. Zero: it fails at once (a wrong address says so at once).
    pub dial_patience: Duration,
}

/// Kademlia settings (see `dht.rs` and docs/network.md). Every periodic timer is here, so the
/// test below can check that a field node has none that fires more than once a day.
#[derive(Clone, Debug, PartialEq)]
pub struct DhtTuning {
    /// Answer others' DHT queries and store their provider records (a node that is reachable
    /// and on a cheap link). A client only asks, and publishes its own records.
    pub server: bool,
    /// Re-run the bootstrap query this often; `None` = only when a new peer enters the table.
    pub periodic_bootstrap: Option<Duration>,
    /// Re-publish this node's provider records this often.
    pub provider_republish: Duration,
    /// How long this node keeps provider records others publish to it.
    pub provider_ttl: Duration,
    /// A whole query (several round trips to several peers).
    pub query_timeout: Duration,
    /// One request-response on a DHT stream.
    pub substream_timeout: Duration,
    /// Requests in flight per query (Kademlia's α).
    pub parallelism: usize,
    /// Provider publications in flight at once (start-up publishes every object held).
    pub max_publishing: usize,
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
                dht: DhtTuning {
                    server: true,
                    periodic_bootstrap: Some(Duration::from_secs(5 * 60)),
                    provider_republish: Duration::from_secs(12 * 3600),
                    provider_ttl: Duration::from_secs(48 * 3600),
                    query_timeout: Duration::from_secs(60),
                    substream_timeout: Duration::from_secs(10),
                    parallelism: 3,
                    max_publishing: 8,
                },
                redial_first_wait: Duration::from_secs(1),
                redial_max_wait: Duration::from_secs(15),
                outage_patience: Duration::from_secs(60),
                dial_patience: Duration::ZERO,
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
                // A client: no inbound DHT traffic at all (nobody's queries, nobody's records),
                // and no periodic bootstrap. What remains is a bootstrap when a new peer enters
                // the routing table, one provider publication per object a day, and the lookups
                // of its own fetches. Timeouts survive 800 ms round trips and queueing behind
                // a transfer.
                dht: DhtTuning {
                    server: false,
                    periodic_bootstrap: None,
                    provider_republish: Duration::from_secs(24 * 3600),
                    provider_ttl: Duration::from_secs(72 * 3600),
                    query_timeout: Duration::from_secs(120),
                    substream_timeout: Duration::from_secs(30),
                    parallelism: 2,
                    max_publishing: 2,
                },
                // Satellite outages last seconds to half an hour (a pass, a storm): a field
                // transfer waits 45 minutes, trying once a minute at most (a failed dial is a
                // few SYNs). A site-LAN device's peer is near: 10 minutes.
                redial_first_wait: Duration::from_secs(2),
                redial_max_wait: Duration::from_secs(60),
                outage_patience: if self == Profile::Field {
                    Duration::from_secs(45 * 60)
                } else {
                    Duration::from_secs(10 * 60)
                },
                // The link may be down when a station's fetch starts, as well as during it.
                dial_patience: if self == Profile::Field {
                    Duration::from_secs(45 * 60)
                } else {
                    Duration::ZERO
                },
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
    fn field_dht_has_no_short_periodic_timers() {
        for p in [Profile::Field, Profile::Edge] {
            let d = p.tuning().dht;
            assert!(
                !d.server,
                "{p:?}: a client, so others' queries cost it nothing"
            );
            assert_eq!(d.periodic_bootstrap, None, "{p:?}");
            assert!(
                d.provider_republish >= Duration::from_secs(24 * 3600),
                "{p:?}"
            );
            // Records published to datacenter servers outlive one missed republication.
            assert!(Profile::Datacenter.tuning().dht.provider_ttl > d.provider_republish);
            // A query and each of its requests outlast several 800 ms round trips.
            assert!(d.substream_timeout >= Duration::from_secs(20));
            assert!(d.query_timeout >= Duration::from_secs(100));
        }
        // A field transfer outlasts a 30-minute outage, and after it re-dials within a minute.
        let t = Profile::Field.tuning();
        assert!(t.outage_patience > Duration::from_secs(30 * 60));
        assert!(t.redial_max_wait <= Duration::from_secs(60));
        for p in [Profile::Edge, Profile::Datacenter] {
            assert!(p.tuning().outage_patience < t.outage_patience, "{p:?}");
            assert_eq!(
                p.tuning().dial_patience,
                Duration::ZERO,
                "{p:?}: fails at once"
            );
        }
        // One that starts during an outage waits for it as long.
        assert_eq!(t.dial_patience, t.outage_patience);
    }

    #[test]
    fn parse() {
        assert_eq!("field".parse::<Profile>(), Ok(Profile::Field));
        assert!("lan".parse::<Profile>().is_err());
    }
}
