//! DeltaSoup on the client: a recipe in the store built into one `.bitdelta` (single-file
//! components) or into the mixed model folder (folder deltas or LoRA adapters of a folder base),
//! and several deltas of one base combined tensor by tensor (a weighted mix or a robust
//! aggregation).

pub mod build;
pub mod combine;
pub mod folder;
pub mod method;
pub mod tensor;
