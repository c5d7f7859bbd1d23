//! A LoRA adapter folder (PEFT: `adapter_config.json` + `adapter_model.safetensors`, and whatever
//! else PEFT saves beside them, e.g. `README.md`) as a folder object of kind `delta` whose base
//! is the model it adapts (docs/spec/lora.md "As an object"). Before it is stored it must be a
//! valid folder ([`super::layout()`]), its config accepted ([`AdapterConfig::parse`]) and its
//! tensors paired with the base's ([`pair`]): a mis-shaped or untargeted adapter never enters
//! the store.

use std::collections::BTreeMap;

use super::layout::{layout, FolderLayout, Member};
use super::FolderError;
use crate::lora::{pair, AdapterConfig, AdapterPlan, ConfigError, PairError, TensorMeta};
use crate::safetensors::{self, SafetensorsError};

/// The adapter's configuration member.
pub const CONFIG_MEMBER: &str = "adapter_config.json";
/// The adapter's weights member.
pub const WEIGHTS_MEMBER: &str = "adapter_model.safetensors";

/// Why an adapter folder is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdapterError {
    #[error(transparent)]
    Folder(#[from] FolderError),
    #[error("the adapter folder lacks {0} (PEFT's safetensors weights; a pickled adapter_model.bin is not read)")]
    Missing(&'static str),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{WEIGHTS_MEMBER}: {0}")]
    Weights(#[from] SafetensorsError),
    #[error("the adapter does not fit its base: {0}")]
    Pair(#[from] PairError),
}

/// Whether a folder's member paths are those of a LoRA adapter (its config at the root).
pub fn is_adapter<'a>(mut paths: impl Iterator<Item = &'a str>) -> bool {
    paths.any(|p| p == CONFIG_MEMBER)
}

/// Pairs an adapter (its config's and weights' bytes) with its base's tensors.
pub fn adapter_plan(
    config: &[u8],
    weights: &[u8],
    base: &BTreeMap<String, TensorMeta>,
) -> Result<AdapterPlan, AdapterError> {
    let config = AdapterConfig::parse(config)?;
    let header = safetensors::parse(weights)?;
    Ok(pair(&config, &header.tensors, base)?)
}

/// Checks an adapter folder against its base's tensors and lays it out as one object.
pub fn adapter_layout(
    members: &[Member<'_>],
    base: &BTreeMap<String, TensorMeta>,
) -> Result<(FolderLayout, AdapterPlan), AdapterError> {
    let l = layout(members)?;
    let member = |path: &'static str| {
        members
            .iter()
            .find(|m| m.path == path)
            .map(|m| m.bytes)
            .ok_or(AdapterError::Missing(path))
    };
    let plan = adapter_plan(member(CONFIG_MEMBER)?, member(WEIGHTS_MEMBER)?, base)?;
    Ok((l, plan))
}
