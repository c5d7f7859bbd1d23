//! Sans-IO pieces of synchronisation (issue 5): no clock, no sockets — callers pass the time in, so
//! the node and a discrete-event simulation drive the same code. For now the bandwidth limiter; the
//! chunk scheduler comes next.

mod token_bucket;

pub use token_bucket::{TokenBucket, TokenBucketError};
