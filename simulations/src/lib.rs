//! zdn-simulations: the test bench for satellite links (issue 6). A packet-level link emulator in
//! user space — the kernel here has no netem — built from two network namespaces joined by TUN
//! devices whose packets pass through a [`Shaper`] (rate with a drop-tail queue, delay, jitter,
//! loss, outages), so TCP and QUIC run their real congestion control over real loss and delay.

pub mod forwarder;
pub mod netns;
pub mod shaper;
pub mod tun;

pub use forwarder::{spawn_direction, DirectionStats};
pub use netns::{NetnsError, NetnsPair};
pub use shaper::{LinkSpec, Outage, Shaper, Verdict};
pub use tun::Tun;
