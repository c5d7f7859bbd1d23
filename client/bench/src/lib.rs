//! Shared by zdn's benchmark binaries: timing (best and median of interleaved runs) and units.
//! Every figure these binaries report is a ratio to a reference measured in the same run
//! (docs/benchmarks.md).

pub mod timing;
