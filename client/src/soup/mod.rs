//! DeltaSoup on the client: a recipe in the store built into one `.bitdelta`, and several deltas
//! of one base combined tensor by tensor (a weighted mix or a robust aggregation).

pub mod build;
pub mod combine;
pub mod method;
pub mod tensor;
