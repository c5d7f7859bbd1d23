//! Sans-IO pieces of synchronisation: no clock, no sockets — callers pass the time in, so
//! the node and a discrete-event simulation drive the same code: the multi-source chunk scheduler and
//! the bandwidth limiter.

mod scheduler;
mod token_bucket;
mod window;

pub use scheduler::{
    Assignment, Failure, Holdings, PeerStats, Received, SchedulerConfig, SyncScheduler,
};
pub use token_bucket::{TokenBucket, TokenBucketError};
pub use window::{SyncWindow, SyncWindows, WindowError};
