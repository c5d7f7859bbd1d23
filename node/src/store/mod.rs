//! The content-addressed store: chunks, signed manifests, refs (names and pins), partial-download
//! state and when each peer was last caught up from, on rocksdb ([`RocksBackend`]) or in memory
//! for tests ([`MemoryBackend`]).
//!
//! Crash safety rests on one ordering rule: an object's chunks are written first, then its manifest in
//! a single synced batch. A manifest is what makes an object visible, so a crash at any point leaves
//! either the object fully there or only unreferenced chunks, which `gc` reclaims and `verify` reports
//! as such (not as corruption).

mod actor;
mod announcements;
mod backend;
mod batched;
mod catch_up;
mod compress;
mod dependencies;
mod error;
mod ingest;
mod maintenance;
mod members;
mod memory;
mod names;
mod objects;
mod rocks;
mod trust;

pub use actor::StoreHandle;
pub use backend::{Backend, Column, Write};
pub use batched::{BATCH_BYTES, BATCH_IDS};
pub use error::StoreError;
pub use ingest::{AddOptions, AddReport, Release};
pub use maintenance::{GcReport, Problem, VerifyReport};
pub use memory::MemoryBackend;
pub use objects::{Holding, ObjectInfo, ObjectStore, StoreLimits};
pub use rocks::RocksBackend;
pub use trust::TrustPolicy;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_large;
