//! Deltas applied on a device, and the fine-tune set: one base held once, many fine-tunes held as
//! packed deltas, any of them materialised on request. The CPU path runs on candle tensors; with
//! the `cuda` feature, `cuda:N` reconstructs on an NVIDIA GPU through zdn-cuda, byte for byte the
//! same.

pub mod apply;
pub mod compute;
#[cfg(feature = "cuda")]
pub mod cuda_fine_tunes;
pub mod fine_tunes;
pub mod on_device;
