//! zdn-linkem: a packet-level link emulator in user space — the kernel here has no netem — built
//! from network namespaces joined by TUN devices whose packets pass through a [`Shaper`] (rate with
//! a drop-tail queue, delay, jitter, loss, outages), so TCP and QUIC run their real congestion
//! control over real loss and delay. The demo runs its two nodes behind one; the scenario runner
//! (zdn-simulations) builds whole sites of them.

pub mod bulk;
pub mod forwarder;
pub mod netns;
pub mod shaper;
pub mod tun;
pub mod units;

pub use forwarder::{spawn_direction, DirectionStats};
pub use netns::{tun_link, LinkEnd, Netns, NetnsError, NetnsPair};
pub use shaper::{LinkSpec, Outage, RateChange, Shaper, Verdict};
pub use tun::Tun;
