//! One emulated link of a scenario, running in this process: a TUN device in each of two
//! namespaces, a [`Shaper`] and forwarder threads per direction, and counters the runner samples.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use zdn_linkem::forwarder::{spawn_direction, DirectionStats};
use zdn_linkem::netns::{tun_link, LinkEnd};
use zdn_linkem::shaper::{LinkSpec, RateChange, Shaper};

use super::error::ScenarioError;

/// A running link between an upper end (nearer the datacenter) and a lower end.
#[derive(Debug)]
pub struct EmulatedLink {
    pub upper_addr: String,
    pub lower_addr: String,
    /// Upper → lower (towards the station or device).
    pub down: Arc<DirectionStats>,
    /// Lower → upper.
    pub up: Arc<DirectionStats>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl EmulatedLink {
    /// Joins `upper` and `lower` and starts forwarding through `spec` with its `rate_changes`
    /// (each direction; outages and rate changes count from `epoch`). `devs` are the TUN device
    /// names, unique on the machine.
    pub fn start(
        upper: LinkEnd<'_>,
        lower: LinkEnd<'_>,
        spec: &LinkSpec,
        rate_changes: &[RateChange],
        seed: u64,
        epoch: Instant,
    ) -> Result<EmulatedLink, ScenarioError> {
        let (tun_u, tun_l) = tun_link(upper, lower)?;
        let io = |source| ScenarioError::Spawn {
            what: "the link's forwarder".into(),
            source,
        };
        let shaper = |seed| {
            Shaper::with_rate_changes(spec.clone(), rate_changes.to_vec(), seed).map_err(|e| {
                ScenarioError::Invalid {
                    file: "the link".into(),
                    message: e,
                }
            })
        };
        let stop = Arc::new(AtomicBool::new(false));
        let down = Arc::new(DirectionStats::default());
        let up = Arc::new(DirectionStats::default());
        let mut link = EmulatedLink {
            upper_addr: upper.addr.to_owned(),
            lower_addr: lower.addr.to_owned(),
            down: down.clone(),
            up: up.clone(),
            stop: stop.clone(),
            threads: Vec::new(),
        };
        // From here on, dropping `link` stops whatever threads were started.
        let (r, w) = spawn_direction(
            tun_u.try_clone().map_err(io)?,
            tun_l.try_clone().map_err(io)?,
            shaper(seed)?,
            epoch,
            stop.clone(),
            down,
        )
        .map_err(io)?;
        link.threads.extend([r, w]);
        let (r, w) = spawn_direction(
            tun_l,
            tun_u,
            shaper(seed.wrapping_add(0x9e37_79b9))?,
            epoch,
            stop,
            up,
        )
        .map_err(io)?;
        link.threads.extend([r, w]);
        Ok(link)
    }

    /// IP bytes delivered (down, up) so far.
    pub fn delivered(&self) -> (u64, u64) {
        (
            self.down.bytes_delivered.load(Ordering::Relaxed),
            self.up.bytes_delivered.load(Ordering::Relaxed),
        )
    }

    /// Stops the forwarder threads (the namespaces' owner removes the devices).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for EmulatedLink {
    fn drop(&mut self) {
        self.stop();
    }
}
