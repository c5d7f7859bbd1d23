//! Folder soups (docs/spec/recipe.md "Folder soups"): a recipe whose base is a model folder and
//! whose components are folder deltas or LoRA adapters of it, written out as the mixed model
//! folder. Every changed tensor is W = W_base + Σ wᵢ·Δᵢ, mixed exactly (no re-quantization):
//! a folder delta's Δᵢ is its reconstruction minus the base, an adapter's its update s·B·A, both
//! in f32; the sum is [`weighted_sum`] and W is rounded once to the tensor's dtype. Memory: for
//! the tensor being written, each component's rebuilt tensor, the base's and the output; the f32
//! arithmetic goes 2^20 elements at a time.

use std::io::Write;
use std::ops::Range;
use std::path::Path;

use zdn_node::store::{ObjectStore, StoreError};
use zdn_protocol::bitdelta::{BitDeltaFile, TensorData};
use zdn_protocol::folder::adapter::CONFIG_MEMBER;
use zdn_protocol::folder::delta::{base_rows, FolderDelta, FolderDeltaError, Source};
use zdn_protocol::folder::FilePlan;
use zdn_protocol::lora::AdapterPlan;
use zdn_protocol::manifest::Kind;
use zdn_protocol::safetensors::SafetensorsHeader;
use zdn_protocol::soup::{weighted_sum, Recipe, SoupError};
use zdn_protocol::{DType, Hash};

use crate::delta::folder::adapter::{
    base_metas, write_base_with, AdapterSource, Factors, TensorMerge,
};
use crate::delta::folder::apply::{DeltaSource, FolderApplyError, FolderApplyReport};
use crate::delta::folder::base::{BaseModel, StoreBase};
use crate::delta::folder::rebuild::{
    checked_layout, output_entries, part_entry, rebuild_with_base, write_side_file, MappedDelta,
    Part,
};
use crate::fs::object_output::FolderOutput;
use crate::fs::progress::Progress;
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
    let cols = base
        .shape
        .iter()
        .skip(1)
        .try_fold(1usize, |a, &d| a.checked_mul(usize::try_from(d).ok()?))
        .filter(|&c| c > 0)
        .unwrap_or(1);
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
        let cols = base.shape.get(1).map_or(1, |&c| c.max(1) as usize);
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

/// One folder delta of the soup, opened.
struct OpenDelta<'m> {
    hash: Hash,
    mapped: MappedDelta<'m>,
    layout: FolderDelta,
    plans: Vec<FilePlan>,
}

fn mix_deltas(job: &Job<'_>, hashes: &[Hash]) -> Result<FolderApplyReport, FolderSoupError> {
    let Job {
        store,
        base,
        weights,
        output,
        progress,
    } = *job;
    let mut sources = Vec::with_capacity(hashes.len());
    for h in hashes {
        sources.push(DeltaSource::store(store, h, output)?);
    }
    let maps = sources
        .iter()
        .map(DeltaSource::bitdelta_map)
        .collect::<Result<Vec<_>, _>>()?;
    let files = maps
        .iter()
        .map(|m| BitDeltaFile::parse(m.bytes()).map_err(FolderApplyError::from))
        .collect::<Result<Vec<_>, _>>()?;
    let mut open = Vec::with_capacity(hashes.len());
    for ((h, source), (file, map)) in hashes.iter().zip(&sources).zip(files.iter().zip(&maps)) {
        let (found, want) = (file.meta.base_hash, base.object_hash());
        if found != want {
            return Err(FolderApplyError::WrongBase {
                expected: found,
                actual: want,
            }
            .into());
        }
        let (layout, plans) = checked_layout(source, file)?;
        open.push(OpenDelta {
            hash: *h,
            mapped: MappedDelta::new(file, map),
            layout,
            plans,
        });
    }
    let Some(first) = open.first() else {
        return Err(FolderSoupError::Tensor {
            name: String::new(),
            problem: "a soup needs at least one component".into(),
        });
    };
    for d in &open[1..] {
        same_folder(first, d)?;
    }
    let (entries, total) = output_entries(&first.layout)?;
    let mut out = FolderOutput::create(output, &entries, false).map_err(FolderApplyError::from)?;
    let bar = Progress::new(total, "soup", progress);
    let mut plan_at = 0;
    let mut tensors = 0;
    for f in &first.layout.files {
        if f.from == Source::Tensors {
            tensors += write_mixed_file(&mut out, &open, plan_at, base, weights)?;
            plan_at += 1;
        } else {
            write_side_file(&mut out, f, base, &sources[0])?;
        }
        bar.inc(f.len);
    }
    out.commit().map_err(FolderApplyError::from)?;
    bar.finish();
    Ok(FolderApplyReport {
        output: output.to_owned(),
        files: first.layout.files.len(),
        tensors,
        bytes_written: total,
        base_hash: base.object_hash(),
        base_verified: true,
    })
}

/// Two deltas rebuild the same folder apart from tensor values: the same files (side files the
/// same bytes), the same grown tensors, the same shard headers and tensors in each. Which rows
/// each keeps exactly may differ (a rebuilt tensor has them in place).
fn same_folder(first: &OpenDelta<'_>, d: &OpenDelta<'_>) -> Result<(), FolderSoupError> {
    let mismatch = |problem: String| FolderSoupError::Mismatch {
        component: d.hash,
        first: first.hash,
        problem,
    };
    if d.layout.files != first.layout.files {
        let path = d
            .layout
            .files
            .iter()
            .zip(&first.layout.files)
            .find(|(a, b)| a != b)
            .map_or("the file list".to_string(), |(a, _)| a.path.clone());
        return Err(mismatch(format!("{path} differs")));
    }
    if d.layout.grown != first.layout.grown {
        return Err(mismatch("the grown tensors differ".into()));
    }
    for (p, q) in first.plans.iter().zip(&d.plans) {
        let path = &first.layout.files[p.file].path;
        if p.header_bytes != q.header_bytes {
            return Err(mismatch(format!("{path}: the shard header differs")));
        }
        let names = |o: &OpenDelta<'_>, plan: &FilePlan| -> Vec<(String, bool)> {
            plan.tensors
                .iter()
                .map(|t| {
                    (
                        o.mapped.file.entries[t.entry].name.clone(),
                        t.rows.is_some(),
                    )
                })
                .collect()
        };
        if names(first, p) != names(d, q) {
            return Err(mismatch(format!("{path}: the tensors differ")));
        }
    }
    Ok(())
}

/// Writes the `plan_at`-th tensors file: its header, then each tensor mixed from every
/// component's rebuild. Returns the number of tensors.
fn write_mixed_file(
    out: &mut FolderOutput,
    open: &[OpenDelta<'_>],
    plan_at: usize,
    base: &dyn BaseModel,
    weights: &[f64],
) -> Result<usize, FolderSoupError> {
    let first = &open[0];
    let plan = &first.plans[plan_at];
    let io = |cause| FolderApplyError::Io {
        path: first.layout.files[plan.file].path.clone().into(),
        cause,
    };
    out.write_all(&plan.header_bytes).map_err(io)?;
    let mut bufs = vec![Vec::new(); open.len()];
    let (mut base_buf, mut rows) = (Vec::new(), Vec::new());
    for (k, t) in plan.tensors.iter().enumerate() {
        for part in [Part::Main, Part::NewRows] {
            let Some(i) = part_entry(t, part) else {
                continue;
            };
            let e = &first.mapped.file.entries[i];
            // The base's rows of the tensor, read once for every component.
            let b = match part {
                Part::Main => base
                    .tensor(&e.name, &mut base_buf)
                    .map_err(FolderApplyError::from)?
                    .and_then(|b| base_rows(e, b)),
                Part::NewRows => None,
            };
            for (d, buf) in open.iter().zip(bufs.iter_mut()) {
                let tp = &d.plans[plan_at].tensors[k];
                if !rebuild_with_base(&d.mapped, &d.layout, tp, part, b.as_ref(), buf, &mut rows)? {
                    return Err(FolderSoupError::Mismatch {
                        component: d.hash,
                        first: first.hash,
                        problem: format!("{} has no new rows", e.name),
                    });
                }
            }
            let b = b.filter(|b| b.shape == e.shape.as_slice());
            let mut sink = |block: &[u8]| Ok(out.write_all(block).map_err(io)?);
            mix_rebuilt(&e.name, e.dtype, b.as_ref(), &bufs, weights, &mut sink)?;
            base.release(&e.name);
        }
    }
    Ok(plan.tensors.len())
}

/// A tensor rebuilt by every component, mixed, handed to `sink`: a float tensor with a base tensor of its shape
/// from the components' deltas against it; any other (no base, or not a float) must be the same
/// bytes in every component, and is copied.
fn mix_rebuilt(
    name: &str,
    dtype: DType,
    base: Option<&TensorData<'_>>,
    rebuilt: &[Vec<u8>],
    weights: &[f64],
    sink: &mut BlockSink<'_>,
) -> Result<(), FolderSoupError> {
    if let Some(b) = base.filter(|b| dtype.is_quantizable() && b.dtype.is_quantizable()) {
        let (size, base_size) = (dtype.size(), b.dtype.size());
        let want = b.bytes.len() / base_size * size;
        if rebuilt.iter().any(|r| r.len() != want) {
            return Err(FolderSoupError::Tensor {
                name: name.to_owned(),
                problem: "a component rebuilds it with another length than the base's".into(),
            });
        }
        let mut delta = |i: usize, range: Range<usize>, base: &[f32]| {
            let part = &rebuilt[i];
            let bytes = part
                .get(range.start * size..range.end * size)
                .ok_or_else(|| FolderSoupError::Tensor {
                    name: name.to_owned(),
                    problem: "a component rebuilds it with another length".into(),
                })?;
            let w = to_f32(dtype, bytes).unwrap_or_default();
            Ok(w.iter().zip(base).map(|(w, b)| w - b).collect())
        };
        return mixed(name, dtype, b, weights, &mut delta, sink);
    }
    match rebuilt.split_first() {
        Some((first, rest)) if rest.iter().all(|r| r == first) => sink(first),
        _ => Err(FolderSoupError::Tensor {
            name: name.to_owned(),
            problem: if base.is_none() {
                "has no base tensor to mix against (new rows, or a tensor the base lacks), and the components rebuild it differently".into()
            } else {
                "is not a float tensor, and the components rebuild it differently".into()
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::soup::tensor::target_bytes;

    /// [`super::mix_rebuilt`]'s blocks, gathered.
    fn mix_rebuilt(
        name: &str,
        dtype: DType,
        base: Option<&TensorData<'_>>,
        rebuilt: &[Vec<u8>],
        weights: &[f64],
    ) -> Result<Vec<u8>, FolderSoupError> {
        let mut out = Vec::new();
        let mut sink = |b: &[u8]| {
            out.extend_from_slice(b);
            Ok(())
        };
        super::mix_rebuilt(name, dtype, base, rebuilt, weights, &mut sink)?;
        Ok(out)
    }

    /// A tensor of several blocks is mixed as one: the same bytes as the whole-tensor arithmetic.
    #[test]
    fn blocks_mix_as_the_whole_tensor() {
        let (rows, cols) = (3usize, MIX_BLOCK / 2 + 3);
        let n = rows * cols;
        let gen = |seed: u32| -> Vec<f32> {
            (0..n as u32)
                .map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 2001) as f32 / 1000.0 - 1.0)
                .collect()
        };
        let base_vals = gen(1);
        let base_bytes = from_f32(DType::BF16, &base_vals).unwrap();
        let shape = [rows as u64, cols as u64];
        let base = TensorData::new(DType::BF16, &shape, &base_bytes).unwrap();
        let parts: Vec<Vec<u8>> = [2, 3]
            .iter()
            .map(|&s| {
                let v: Vec<f32> = gen(s).iter().map(|x| x * 0.01).collect();
                let w: Vec<f32> = to_f32(DType::BF16, &base_bytes)
                    .unwrap()
                    .iter()
                    .zip(&v)
                    .map(|(b, d)| b + d)
                    .collect();
                from_f32(DType::BF16, &w).unwrap()
            })
            .collect();
        let weights = [0.7, -0.2];
        let got = mix_rebuilt("t", DType::F32, Some(&base), &parts, &weights);
        // A part rebuilt in another length than the base's is refused.
        assert!(got.is_err());
        let got = mix_rebuilt("t", DType::BF16, Some(&base), &parts, &weights).unwrap();
        let b = to_f32(DType::BF16, &base_bytes).unwrap();
        let deltas: Vec<Vec<f32>> = parts
            .iter()
            .map(|p| {
                to_f32(DType::BF16, p)
                    .unwrap()
                    .iter()
                    .zip(&b)
                    .map(|(w, b)| w - b)
                    .collect()
            })
            .collect();
        let refs: Vec<&[f32]> = deltas.iter().map(Vec::as_slice).collect();
        let whole = weighted_sum(&refs, &weights).unwrap();
        assert_eq!(got, target_bytes(DType::BF16, &base, &whole).unwrap());
        assert!(n > 2 * MIX_BLOCK / 2 && cols < MIX_BLOCK);
    }

    #[test]
    fn without_a_base_the_components_must_agree() {
        let a = vec![1u8, 2, 3, 4];
        assert_eq!(
            mix_rebuilt("t", DType::BF16, None, &[a.clone(), a.clone()], &[0.5, 0.5]).unwrap(),
            a
        );
        let e = mix_rebuilt(
            "t",
            DType::BF16,
            None,
            &[a.clone(), vec![1, 2, 3, 5]],
            &[0.5, 0.5],
        );
        assert!(e.unwrap_err().to_string().contains("no base tensor"));
        let e = mix_rebuilt(
            "t",
            DType::I64,
            None,
            &[vec![0; 8], vec![1; 8]],
            &[0.5, 0.5],
        );
        assert!(e.is_err());
    }
}
