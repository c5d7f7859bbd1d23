//! Deltas applied on a candle device, and the fine-tune set: one base held once, many fine-tunes
//! held as packed deltas, any of them materialised on request.

pub mod apply;
pub mod fine_tunes;
