//! Folder soups (docs/spec/recipe.md "Folder soups"): a recipe whose base is a model folder and
//! whose components are folder deltas or LoRA adapters of it, written out as the mixed model
//! folder. Every changed tensor is W = W_base + Σ wᵢ·Δᵢ, mixed exactly (no re-quantization):
//! a folder delta's Δᵢ is its reconstruction minus the base, an adapter's its update s·B·A, both
//! in f32; the sum is [`weighted_sum`] and W is rounded once to the tensor's dtype. The
//! arithmetic goes 2^20 elements (whole rows) at a time and each block is written as it is made.
//! Memory, for the tensor being written: the base's; of a folder delta's quantized entry (rows
//! starting on whole bytes of codes: a decoder's projections and vocabulary matrices) one block,
//! rebuilt as the mix reaches it; of any other entry (lossless) the whole rebuilt tensor.

mod deltas;

use deltas::mix_deltas;

use std::ops::Range;
use std::path::Path;

use zdn_node::store::{ObjectStore, StoreError};
use zdn_protocol::bitdelta::TensorData;
use zdn_protocol::folder::adapter::CONFIG_MEMBER;
use zdn_protocol::folder::delta::FolderDeltaError;
use zdn_protocol::lora::AdapterPlan;
use zdn_protocol::manifest::Kind;
use zdn_protocol::safetensors::SafetensorsHeader;
use zdn_protocol::soup::{weighted_sum, Recipe, SoupError};
use zdn_protocol::{DType, Hash};

use crate::delta::folder::adapter::{
    base_metas, write_base_with, AdapterSource, Factors, TensorMerge,
};
use crate::delta::folder::apply::{FolderApplyError, FolderApplyReport};
use crate::delta::folder::base::StoreBase;
use crate::soup::tensor::{from_f32, to_f32};

#[derive(Debug, thiserror::Error)]
pub enum FolderSoupError {
    #[error(transparent)]
    Apply(Box<FolderApplyError>),
    #[error("the soup's base {0}: {1}")]
    Base(Hash, String),
    #[error("component {0} is a {1}; a soup of a model folder mixes folder deltas or LoRA adapters of it")]
    NotAComponent(Hash, &'static str),
    #[error("component {component} was made for base {found}, the recipe's base is {want}")]
    WrongBase {
        component: Hash,
        found: Hash,
        want: Hash,
    },
    #[error("the components mix a LoRA adapter ({adapter}) and a folder delta ({delta}): a soup mixes one kind")]
    MixedKinds { adapter: Hash, delta: Hash },
    #[error("component {component} does not rebuild the same folder as {first}: {problem}")]
    Mismatch {
        component: Hash,
        first: Hash,
        problem: String,
    },
    #[error("tensor {name:?}: {problem}")]
    Tensor { name: String, problem: String },
    #[error("tensor {name:?}: {cause}")]
    Mix { name: String, cause: SoupError },
}

impl From<FolderApplyError> for FolderSoupError {
    fn from(e: FolderApplyError) -> Self {
        FolderSoupError::Apply(Box::new(e))
    }
}

impl From<StoreError> for FolderSoupError {
    fn from(e: StoreError) -> Self {
        FolderApplyError::from(e).into()
    }
}

impl From<FolderDeltaError> for FolderSoupError {
    fn from(e: FolderDeltaError) -> Self {
        FolderApplyError::from(e).into()
    }
}

/// Writes the soup of `recipe` (its base a model folder in the store, its components folder
/// deltas or adapters of it in the store) as a model folder at `output` (new or empty; written
/// beside it and renamed when complete, so a failure leaves nothing).
pub fn build_folder_soup(
    store: &ObjectStore,
    recipe: &Recipe,
    output: &Path,
    progress: bool,
) -> Result<FolderApplyReport, FolderSoupError> {
    let base_hash = recipe.base();
    let base = StoreBase::open(store, &base_hash)
        .map_err(|e| FolderSoupError::Base(base_hash, e.to_string()))?;
    let weights: Vec<f64> = recipe
        .components()
        .iter()
        .map(|c| f64::from(c.weight))
        .collect();
    let (mut adapters, mut deltas) = (Vec::new(), Vec::new());
    for c in recipe.components() {
        let m = store.require_manifest(&c.delta)?.manifest;
        if m.kind != Kind::Delta || !m.is_folder() {
            let what = if m.kind == Kind::Delta {
                "single-file delta"
            } else {
                m.kind.as_str()
            };
            return Err(FolderSoupError::NotAComponent(c.delta, what));
        }
        let found = m.base.unwrap_or(Hash::ZERO);
        if found != base_hash {
            return Err(FolderSoupError::WrongBase {
                component: c.delta,
                found,
                want: base_hash,
            });
        }
        if m.file(CONFIG_MEMBER).is_some() {
            adapters.push(c.delta);
        } else {
            deltas.push(c.delta);
        }
    }
    let job = Job {
        store,
        base: &base,
        weights: &weights,
        output,
        progress,
    };
    match (adapters.first(), deltas.first()) {
        (Some(&adapter), Some(&delta)) => Err(FolderSoupError::MixedKinds { adapter, delta }),
        (Some(_), None) => mix_adapters(&job, &adapters),
        _ => mix_deltas(&job, &deltas),
    }
}

/// Component i's f32 delta over an element range, given the base's values there.
type ComponentDelta<'a> =
    dyn FnMut(usize, Range<usize>, &[f32]) -> Result<Vec<f32>, FolderSoupError> + 'a;
/// Where a mixed tensor's bytes go, block by block.
type BlockSink<'a> = dyn FnMut(&[u8]) -> Result<(), FolderSoupError> + 'a;

/// Elements in a row of a tensor of `shape` (its trailing dimensions), at least 1.
fn row_elements(shape: &[u64]) -> usize {
    shape
        .iter()
        .skip(1)
        .try_fold(1usize, |a, &d| a.checked_mul(usize::try_from(d).ok()?))
        .filter(|&c| c > 0)
        .unwrap_or(1)
}

/// Elements mixed at a time (whole rows): what the f32 arrays of a mix hold, per component.
const MIX_BLOCK: usize = 1 << 20;

/// The mixed tensor W = base + Σ wᵢ·Δᵢ (one f32 addition per element, rounded to `dtype`),
/// handed to `sink` block by block (the whole tensor is never held),
/// computed `MIX_BLOCK` elements (whole rows of `cols`) at a time: `delta(i, range, base)` is
/// component i's f32 delta over that element range, whose base values (as f32) are `base`.
fn mixed(
    name: &str,
    dtype: DType,
    base: &TensorData<'_>,
    weights: &[f64],
    delta: &mut ComponentDelta<'_>,
    sink: &mut BlockSink<'_>,
) -> Result<(), FolderSoupError> {
    let size = base.dtype.size().max(1);
    let n = base.bytes.len() / size;
    let cols = row_elements(base.shape);
    let step = (MIX_BLOCK / cols).max(1).saturating_mul(cols);
    let bad = |problem: String| FolderSoupError::Tensor {
        name: name.to_owned(),
        problem,
    };
    let mut start = 0;
    while start < n {
        let range = start..n.min(start.saturating_add(step));
        let b = to_f32(
            base.dtype,
            &base.bytes[range.start * size..range.end * size],
        )
        .ok_or_else(|| bad(format!("the base's {:?} is not a float dtype", base.dtype)))?;
        let deltas = (0..weights.len())
            .map(|i| delta(i, range.clone(), &b))
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<&[f32]> = deltas.iter().map(Vec::as_slice).collect();
        let combined = weighted_sum(&refs, weights).map_err(|cause| FolderSoupError::Mix {
            name: name.to_owned(),
            cause,
        })?;
        let w: Vec<f32> = b.iter().zip(&combined).map(|(b, d)| b + d).collect();
        sink(&from_f32(dtype, &w).ok_or_else(|| bad(format!("{dtype:?} is not a float dtype")))?)?;
        start = range.end;
    }
    Ok(())
}

/// Adapters of the base: every tensor some adapter targets, mixed from the adapters' updates (an
/// adapter that does not target it adds nothing).
struct AdapterMix<'a> {
    factors: Vec<Factors<'a>>,
    weights: &'a [f64],
}

impl TensorMerge for AdapterMix<'_> {
    fn changes(&self, name: &str) -> bool {
        self.factors.iter().any(|f| f.changes(name))
    }

    fn merge(
        &self,
        name: &str,
        base: &TensorData<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), FolderApplyError> {
        let lora = self
            .factors
            .iter()
            .map(|f| f.factors(name))
            .collect::<Result<Vec<_>, _>>()?;
        let cols = row_elements(base.shape);
        let mut delta = |i: usize, range: Range<usize>, _: &[f32]| {
            Ok(match &lora[i] {
                Some(lf) => lf.update_rows(range.start / cols, range.len() / cols),
                None => vec![0f32; range.len()],
            })
        };
        out.clear();
        let mut sink = |block: &[u8]| {
            out.try_reserve(block.len())
                .map_err(|_| FolderSoupError::Tensor {
                    name: name.to_owned(),
                    problem: "more memory than this machine can give it".into(),
                })?;
            out.extend_from_slice(block);
            Ok(())
        };
        mixed(name, base.dtype, base, self.weights, &mut delta, &mut sink).map_err(|e| {
            FolderApplyError::Mix {
                name: name.to_owned(),
                problem: e.to_string(),
            }
        })
    }
}

/// What every soup build shares: the store, the base, the weights (in recipe order), the output.
struct Job<'a> {
    store: &'a ObjectStore,
    base: &'a StoreBase<'a>,
    weights: &'a [f64],
    output: &'a Path,
    progress: bool,
}

fn mix_adapters(job: &Job<'_>, hashes: &[Hash]) -> Result<FolderApplyReport, FolderSoupError> {
    let Job {
        store,
        base,
        weights,
        output,
        progress,
    } = *job;
    let metas = base_metas(base);
    let mut sources = Vec::with_capacity(hashes.len());
    for h in hashes {
        sources.push(AdapterSource::store(store, h, output)?);
    }
    let plans: Vec<AdapterPlan> = sources
        .iter()
        .map(|s| s.plan(&metas))
        .collect::<Result<_, _>>()?;
    let headers: Vec<SafetensorsHeader> = sources
        .iter()
        .map(AdapterSource::weights)
        .collect::<Result<_, _>>()?;
    let factors: Vec<Factors<'_>> = plans
        .iter()
        .zip(&headers)
        .zip(&sources)
        .map(|((plan, weights), s)| Factors {
            plan,
            weights,
            bytes: s.weight_bytes(),
        })
        .collect();
    let changed: std::collections::BTreeSet<&str> = plans
        .iter()
        .flat_map(AdapterPlan::changed_base_tensors)
        .collect();
    let mix = AdapterMix { factors, weights };
    Ok(write_base_with(
        base,
        output,
        &mix,
        changed.len(),
        progress,
    )?)
}
