//! Pairing an adapter's tensors with the base tensors they change (docs/spec/lora.md § 3).
//!
//! PEFT saves `base_model.model.<module>.lora_A.weight` and `….lora_B.weight` for a linear layer
//! (`lora_embedding_A` / `lora_embedding_B`, without `.weight`, for an embedding), optionally with
//! the adapter's name as one more segment before `.weight` (`….lora_A.default.weight`). The module's
//! base tensor is `<module>.weight`. Every A has its B, every pair has its base tensor, shapes and
//! ranks agree with the config, every pair is a targeted module, and every targeted base module has
//! its pair; anything else is a [`PairError`].

use std::collections::BTreeMap;

use super::config::{AdapterConfig, ConfigError, MAX_NAME_LEN};
use crate::dtype::DType;
use crate::safetensors::TensorInfo;

/// Most tensors accepted in an adapter file.
pub const MAX_ADAPTER_TENSORS: usize = 1 << 20;

/// The prefix PEFT puts before every module name it saves.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// A tensor's element type and shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorMeta {
    pub dtype: DType,
    pub shape: Vec<u64>,
}

/// The layer type a LoRA pair belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// `lora_A` / `lora_B`: a linear (or GPT-2 `Conv1D`) layer.
    Linear,
    /// `lora_embedding_A` / `lora_embedding_B`: an embedding, whose update is always transposed.
    Embedding,
}

/// Everything the merge arithmetic needs about one base tensor.
///
/// The base tensor is `[rows, cols]`. Not transposed: A is `[rank, cols]`, B is `[rows, rank]` and
/// element (i, j) gains `s·Σₖ B[i,k]·A[k,j]`. Transposed (`fan_in_fan_out`, embeddings): A is
/// `[rank, rows]`, B is `[cols, rank]` and element (i, j) gains `s·Σₖ B[j,k]·A[k,i]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MergeShape {
    pub rows: u64,
    pub cols: u64,
    pub rank: u32,
    pub transposed: bool,
    /// s, as [`AdapterConfig::scale_for`] gives it.
    pub scale: f32,
    pub base_dtype: DType,
    pub a_dtype: DType,
    pub b_dtype: DType,
}

impl MergeShape {
    /// A's shape `[rank, ·]`.
    pub fn a_shape(&self) -> [u64; 2] {
        [
            u64::from(self.rank),
            if self.transposed {
                self.rows
            } else {
                self.cols
            },
        ]
    }

    /// B's shape `[·, rank]`.
    pub fn b_shape(&self) -> [u64; 2] {
        [
            if self.transposed {
                self.cols
            } else {
                self.rows
            },
            u64::from(self.rank),
        ]
    }
}

/// One base tensor the adapter changes, with the adapter tensors that change it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleMerge {
    /// The module, e.g. `model.layers.0.self_attn.q_proj`.
    pub module: String,
    /// The base tensor, `<module>.weight`.
    pub base_tensor: String,
    /// The adapter tensor holding A.
    pub lora_a: String,
    /// The adapter tensor holding B.
    pub lora_b: String,
    pub kind: LayerKind,
    pub shape: MergeShape,
}

/// The adapter, paired: one entry per changed base tensor, sorted by base tensor name.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterPlan {
    /// The adapter-name segment of the tensor names (`default`), if they carry one.
    pub adapter_name: Option<String>,
    pub modules: Vec<ModuleMerge>,
}

impl AdapterPlan {
    /// The names of the base tensors the adapter changes, sorted.
    pub fn changed_base_tensors(&self) -> impl Iterator<Item = &str> {
        self.modules.iter().map(|m| m.base_tensor.as_str())
    }

    /// The merge of a base tensor, if the adapter changes it.
    pub fn for_base_tensor(&self, name: &str) -> Option<&ModuleMerge> {
        self.modules
            .binary_search_by(|m| m.base_tensor.as_str().cmp(name))
            .ok()
            .and_then(|i| self.modules.get(i))
    }
}

/// Why an adapter's tensors do not pair with the base.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairError {
    #[error("the adapter has {0} tensors; the limit is {MAX_ADAPTER_TENSORS}")]
    TooManyTensors(usize),
    #[error("adapter tensor name is {0} bytes; the limit is {MAX_NAME_LEN}")]
    NameTooLong(usize),
    #[error("adapter tensor {0:?} does not start with {PEFT_PREFIX:?}, as PEFT names its tensors")]
    NotPeftName(String),
    #[error("adapter tensor {name:?} is not a LoRA A or B matrix{hint}")]
    NotLoraTensor { name: String, hint: &'static str },
    #[error("adapter tensors name two adapters, {a:?} and {b:?}; one adapter is merged at a time")]
    AdapterNames { a: String, b: String },
    #[error("module {module:?} has two {side} tensors, {first:?} and {second:?}")]
    Duplicate {
        module: String,
        side: &'static str,
        first: String,
        second: String,
    },
    #[error(
        "module {module:?} mixes linear (lora_A/lora_B) and embedding (lora_embedding_*) tensors"
    )]
    KindMismatch { module: String },
    #[error("module {module:?} has {has:?} but no {lacks} to pair it with")]
    Unpaired {
        module: String,
        has: String,
        lacks: &'static str,
    },
    #[error("module {module:?} has a LoRA pair but is not a target of adapter_config.json")]
    NotTargeted { module: String },
    #[error(
        "module {module:?}: the base has no tensor {base_tensor:?} (is this adapter for another base?)"
    )]
    BaseMissing { module: String, base_tensor: String },
    #[error(
        "base tensor {base_tensor:?} is a target of adapter_config.json but the adapter has no \
         LoRA pair for it (a truncated adapter, or one for another base)"
    )]
    MissingPair { base_tensor: String },
    #[error("tensor {tensor:?} is {dtype}; LoRA merges need F32, F16 or BF16")]
    Dtype { tensor: String, dtype: DType },
    #[error("tensor {tensor:?} has shape {shape:?}; LoRA merges need 2-D matrices")]
    NotMatrix { tensor: String, shape: Vec<u64> },
    #[error("tensor {tensor:?} has rank {got}; adapter_config.json says {want} for this module")]
    RankMismatch { tensor: String, got: u64, want: u32 },
    #[error("tensor {tensor:?} has shape {got:?}; the base tensor {base_tensor:?} needs {want:?}")]
    Shape {
        tensor: String,
        base_tensor: String,
        got: Vec<u64>,
        want: [u64; 2],
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    A,
    B,
}

struct ParsedName<'a> {
    module: &'a str,
    side: Side,
    kind: LayerKind,
    adapter: Option<&'a str>,
}

/// Splits a PEFT tensor name into its module, side, layer kind and adapter-name segment.
fn parse_name(name: &str) -> Result<ParsedName<'_>, PairError> {
    if name.len() > MAX_NAME_LEN {
        return Err(PairError::NameTooLong(name.len()));
    }
    let rest = name
        .strip_prefix(PEFT_PREFIX)
        .ok_or_else(|| PairError::NotPeftName(name.to_owned()))?;
    let not_lora = || PairError::NotLoraTensor {
        name: name.to_owned(),
        hint: hint(name),
    };
    let segments: Vec<&str> = rest.split('.').collect();
    let marker = |s: &str| match s {
        "lora_A" => Some((Side::A, LayerKind::Linear)),
        "lora_B" => Some((Side::B, LayerKind::Linear)),
        "lora_embedding_A" => Some((Side::A, LayerKind::Embedding)),
        "lora_embedding_B" => Some((Side::B, LayerKind::Embedding)),
        _ => None,
    };
    // Candidate positions of the marker from the end, and what may follow it.
    let n = segments.len();
    let found = [
        (n.checked_sub(2), LayerKind::Linear, false), // <module>.lora_A.weight
        (n.checked_sub(3), LayerKind::Linear, true),  // <module>.lora_A.<adapter>.weight
        (n.checked_sub(1), LayerKind::Embedding, false), // <module>.lora_embedding_A
        (n.checked_sub(2), LayerKind::Embedding, true), // <module>.lora_embedding_A.<adapter>
    ]
    .into_iter()
    .find_map(|(at, want_kind, named)| {
        let at = at?;
        let (side, kind) = marker(segments.get(at)?)?;
        let weight_ok = kind == LayerKind::Embedding || segments.last() == Some(&"weight");
        (kind == want_kind && weight_ok).then(|| {
            let adapter = named.then(|| segments.get(at + 1).copied()).flatten();
            (at, side, kind, adapter)
        })
    });
    let (at, side, kind, adapter) = found.ok_or_else(not_lora)?;
    if at == 0 || segments.iter().any(|s| s.is_empty()) {
        return Err(not_lora());
    }
    // The module is the segments before the marker, as one slice of `rest`.
    let module_len = segments[..at].iter().map(|s| s.len() + 1).sum::<usize>() - 1;
    Ok(ParsedName {
        module: &rest[..module_len],
        side,
        kind,
        adapter,
    })
}

fn hint(name: &str) -> &'static str {
    if name.contains("lora_magnitude_vector") {
        " (a DoRA magnitude: DoRA is not a plain merge)"
    } else if name.contains("modules_to_save") || name.ends_with(".bias") {
        " (a replaced module or a bias: zdn merges only A/B pairs)"
    } else {
        ""
    }
}

#[derive(Default)]
struct Pair<'a> {
    a: Option<&'a TensorInfo>,
    b: Option<&'a TensorInfo>,
    kind: Option<LayerKind>,
}

/// Pairs the adapter's tensors (its safetensors header) with the base tensors (every tensor of the
/// base model, all shards, by name) under the config.
pub fn pair(
    config: &AdapterConfig,
    adapter: &[TensorInfo],
    base: &BTreeMap<String, TensorMeta>,
) -> Result<AdapterPlan, PairError> {
    if adapter.len() > MAX_ADAPTER_TENSORS {
        return Err(PairError::TooManyTensors(adapter.len()));
    }
    let mut adapter_name: Option<Option<&str>> = None;
    let mut pairs: BTreeMap<&str, Pair<'_>> = BTreeMap::new();
    for t in adapter {
        let p = parse_name(&t.name)?;
        match adapter_name {
            None => adapter_name = Some(p.adapter),
            Some(seen) if seen != p.adapter => {
                return Err(PairError::AdapterNames {
                    a: seen.unwrap_or("").to_owned(),
                    b: p.adapter.unwrap_or("").to_owned(),
                })
            }
            Some(_) => {}
        }
        let entry = pairs.entry(p.module).or_default();
        if entry.kind.is_some_and(|k| k != p.kind) {
            return Err(PairError::KindMismatch {
                module: p.module.to_owned(),
            });
        }
        entry.kind = Some(p.kind);
        let (slot, side) = match p.side {
            Side::A => (&mut entry.a, "A"),
            Side::B => (&mut entry.b, "B"),
        };
        if let Some(first) = slot {
            return Err(PairError::Duplicate {
                module: p.module.to_owned(),
                side,
                first: first.name.clone(),
                second: t.name.clone(),
            });
        }
        *slot = Some(t);
    }

    let mut modules = Vec::with_capacity(pairs.len());
    for (module, p) in &pairs {
        modules.push(plan_module(config, module, p, base)?);
    }
    modules.sort_by(|x, y| x.base_tensor.cmp(&y.base_tensor));

    // Every targeted base module has its pair.
    for (name, meta) in base {
        let Some(module) = name.strip_suffix(".weight") else {
            continue;
        };
        if config.targets(module) && !pairs.contains_key(module) && !meta.shape.is_empty() {
            return Err(PairError::MissingPair {
                base_tensor: name.clone(),
            });
        }
    }

    Ok(AdapterPlan {
        adapter_name: adapter_name.flatten().map(str::to_owned),
        modules,
    })
}

fn plan_module(
    config: &AdapterConfig,
    module: &str,
    p: &Pair<'_>,
    base: &BTreeMap<String, TensorMeta>,
) -> Result<ModuleMerge, PairError> {
    let (a, b) = match (p.a, p.b) {
        (Some(a), Some(b)) => (a, b),
        (Some(a), None) => {
            return Err(PairError::Unpaired {
                module: module.to_owned(),
                has: a.name.clone(),
                lacks: "B",
            })
        }
        (None, Some(b)) => {
            return Err(PairError::Unpaired {
                module: module.to_owned(),
                has: b.name.clone(),
                lacks: "A",
            })
        }
        (None, None) => {
            return Err(PairError::NotTargeted {
                module: module.to_owned(),
            })
        }
    };
    let kind = p.kind.unwrap_or(LayerKind::Linear);
    if !config.targets(module) {
        return Err(PairError::NotTargeted {
            module: module.to_owned(),
        });
    }
    let base_tensor = format!("{module}.weight");
    let meta = base
        .get(&base_tensor)
        .ok_or_else(|| PairError::BaseMissing {
            module: module.to_owned(),
            base_tensor: base_tensor.clone(),
        })?;
    for (tensor, dtype) in [
        (&a.name, a.dtype),
        (&b.name, b.dtype),
        (&base_tensor, meta.dtype),
    ] {
        if !dtype.is_quantizable() {
            return Err(PairError::Dtype {
                tensor: tensor.clone(),
                dtype,
            });
        }
    }
    let matrix = |tensor: &str, shape: &[u64]| -> Result<[u64; 2], PairError> {
        match shape {
            [r, c] => Ok([*r, *c]),
            _ => Err(PairError::NotMatrix {
                tensor: tensor.to_owned(),
                shape: shape.to_vec(),
            }),
        }
    };
    let [rows, cols] = matrix(&base_tensor, &meta.shape)?;
    let a_shape = matrix(&a.name, &a.shape)?;
    let b_shape = matrix(&b.name, &b.shape)?;
    let rank = config.rank_for(module)?;
    let shape = MergeShape {
        rows,
        cols,
        rank,
        transposed: kind == LayerKind::Embedding || config.fan_in_fan_out,
        scale: config.scale_for(module)?,
        base_dtype: meta.dtype,
        a_dtype: a.dtype,
        b_dtype: b.dtype,
    };
    if a_shape[0] != u64::from(rank) {
        return Err(PairError::RankMismatch {
            tensor: a.name.clone(),
            got: a_shape[0],
            want: rank,
        });
    }
    if b_shape[1] != u64::from(rank) {
        return Err(PairError::RankMismatch {
            tensor: b.name.clone(),
            got: b_shape[1],
            want: rank,
        });
    }
    for (t, got, want) in [(a, a_shape, shape.a_shape()), (b, b_shape, shape.b_shape())] {
        if got != want {
            return Err(PairError::Shape {
                tensor: t.name.clone(),
                base_tensor: base_tensor.clone(),
                got: got.to_vec(),
                want,
            });
        }
    }
    Ok(ModuleMerge {
        module: module.to_owned(),
        base_tensor,
        lora_a: a.name.clone(),
        lora_b: b.name.clone(),
        kind,
        shape,
    })
}

#[cfg(test)]
#[path = "pairing_tests.rs"]
mod tests;
