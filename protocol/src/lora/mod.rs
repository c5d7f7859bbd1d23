//! LoRA adapters (PEFT) as a second kind of delta: an adapter folder (`adapter_config.json` +
//! `adapter_model.safetensors`) merged into its base model deterministically (docs/spec/lora.md).

mod config;
mod pattern;

pub use config::{
    scale, AdapterConfig, ConfigError, MAX_CONFIG_BYTES, MAX_NAME_LEN, MAX_PATTERNS, MAX_RANK,
};
pub use pattern::{ModulePattern, ModuleSelector, PatternError};
