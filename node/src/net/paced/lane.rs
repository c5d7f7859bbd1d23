//! [`PacedLane`]: the node's side of its link, shared by the lane sessions of its fetches: the
//! rate its operator stated (if any), how many sessions share it, and where partly received chunks
//! are kept ([`PartialChunks`]).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::net::paced::partial::PartialChunks;

/// The node's link, shared by its sessions.
#[derive(Debug)]
pub struct PacedLane {
    /// The link's rate as stated by the operator, IP bits per second: the most asked for. `None`:
    /// the senders find it.
    pub rate_bps: Option<u64>,
    active: AtomicUsize,
    pub(crate) partial: Option<PartialChunks>,
}

impl PacedLane {
    /// The lane, with the stated rate if any, keeping partly received chunks under `partial_dir`
    /// (none: in memory, for one session); an error when that directory cannot be made.
    pub fn new(rate_bps: Option<u64>, partial_dir: Option<&Path>) -> std::io::Result<Self> {
        Ok(PacedLane {
            rate_bps,
            active: AtomicUsize::new(0),
            partial: partial_dir.map(PartialChunks::open).transpose()?,
        })
    }

    /// This session's share of the stated rate now; 0 when no rate was stated.
    pub(crate) fn share(&self) -> u64 {
        self.rate_bps
            .map_or(0, |r| r / self.active.load(Ordering::Relaxed).max(1) as u64)
    }
}

/// Counts a session in the lane's share while it lives.
pub(crate) struct Active(Arc<PacedLane>);

impl Active {
    pub fn new(lane: &Arc<PacedLane>) -> Self {
        lane.active.fetch_add(1, Ordering::Relaxed);
        Active(lane.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}
