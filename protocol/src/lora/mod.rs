//! LoRA adapters (PEFT) as a second kind of delta: an adapter folder (`adapter_config.json` +
//! `adapter_model.safetensors`) merged into its base model deterministically (docs/spec/lora.md).
//!
//! Sans-IO, in three steps a caller runs over the files it has read:
//! 1. [`AdapterConfig::parse`] reads `adapter_config.json` and refuses what is not a plain merge;
//! 2. [`pair`] pairs the adapter's tensors (its safetensors header) with the base model's tensors and
//!    gives an [`AdapterPlan`]: one [`ModuleMerge`] per base tensor the adapter changes;
//! 3. [`merge_tensor`], or [`LoraFactors::merge_rows_in_place`] for chunks of rows, computes each
//!    changed tensor's bytes; every other base tensor is copied unchanged.

mod config;
mod merge;
mod pairing;
mod pattern;

#[cfg(test)]
mod golden_tests;

pub use config::{
    scale, AdapterConfig, ConfigError, MAX_CONFIG_BYTES, MAX_NAME_LEN, MAX_PATTERNS, MAX_RANK,
};
pub use merge::{merge_tensor, LoraFactors, MergeError};
pub use pairing::{
    pair, AdapterPlan, LayerKind, MergeShape, ModuleMerge, PairError, TensorMeta,
    MAX_ADAPTER_TENSORS, PEFT_PREFIX,
};
pub use pattern::{ModulePattern, ModuleSelector, PatternError};
