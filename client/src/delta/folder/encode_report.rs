//! What a folder encode reports: per tensor, per class, the exact rows, the defaults that applied.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use zdn_protocol::bitdelta::{IndexEntry, Metadata};
use zdn_protocol::folder::architecture::TensorClass;
use zdn_protocol::folder::delta::{FolderDelta, OutputFile};
use zdn_protocol::Hash;

use super::encode::{Pairing, Target};
use super::selection::Defaults;
use crate::delta::encode::{ratio, EncodedTensorReport};

/// What a folder encode did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FolderEncodeReport {
    pub output: PathBuf,
    /// Bytes of the whole delta folder.
    pub delta_bytes: u64,
    /// BLAKE3 of the base object the delta records.
    pub base_hash: Hash,
    pub n_params: u64,
    pub n_quantized: u64,
    pub bits_per_param: f64,
    /// Fine-tune folder bytes ÷ delta folder bytes.
    pub ratio_vs_finetuned: f64,
    pub files: Vec<OutputFile>,
    /// The architecture read from the fine-tune's config.json, and which defaults applied.
    pub defaults: Defaults,
    /// Tensors, parameters and bytes of each class.
    pub classes: Vec<ClassReport>,
    /// Vocabulary rows kept exactly, per tensor.
    pub exact_rows: Vec<ExactRowsReport>,
    pub tensors: Vec<EncodedTensorReport>,
    /// Tensors whose leading dimension grew (vocabulary growth): new rows stored exactly.
    pub grown: Vec<String>,
    /// Tensors paired with the first rows of a bigger base tensor (vocabulary shrink).
    pub shrunk: Vec<String>,
    /// Base tensors the fine-tune lacks.
    pub skipped_base_only: Vec<String>,
    /// Fine-tune tensors the base lacks: stored exactly.
    pub finetune_only: Vec<String>,
}

/// A class of tensors in the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClassReport {
    pub class: TensorClass,
    pub tensors: usize,
    pub params: u64,
    /// Bytes of their blocks in `delta.bitdelta` (exact and new rows included).
    pub block_bytes: u64,
}

/// The rows of a tensor kept exactly.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExactRowsReport {
    pub name: String,
    pub rows: usize,
    /// Of them, special tokens the tokenizer declares.
    pub special: usize,
}

/// The report, from what was written.
pub(super) fn report(
    target: &Target<'_>,
    layout: FolderDelta,
    pairs: &[Pairing<'_>],
    meta: Metadata,
    entries: Vec<IndexEntry>,
    delta_bytes: u64,
) -> FolderEncodeReport {
    let base = target.base;
    let fine_bytes: u64 = target.files.iter().map(|(_, m)| m.len() as u64).sum();
    let names: HashSet<&str> = pairs.iter().map(|p| p.info.name.as_str()).collect();
    let by_rows = |grew: bool| -> Vec<String> {
        pairs
            .iter()
            .filter(|p| p.common_rows.is_some_and(|k| (k < p.info.shape[0]) == grew))
            .map(|p| p.info.name.clone())
            .collect()
    };
    // Entries are in pair order: each pair's own entry, then its exact and new rows.
    let mut classes: BTreeMap<TensorClass, ClassReport> = BTreeMap::new();
    let mut tensors = Vec::with_capacity(entries.len());
    let mut it = entries.into_iter();
    for p in pairs {
        let n = 1
            + usize::from(!p.exact.is_empty())
            + usize::from(p.common_rows.is_some_and(|k| k < p.info.shape[0]));
        let c = classes.entry(p.class).or_insert(ClassReport {
            class: p.class,
            tensors: 0,
            params: 0,
            block_bytes: 0,
        });
        c.tensors += 1;
        c.params += p.info.numel();
        for e in it.by_ref().take(n) {
            c.block_bytes += e.length;
            tensors.push(EncodedTensorReport {
                name: e.name,
                dtype: e.dtype,
                shape: e.shape,
                encoding: e.encoding,
                block_bytes: e.length,
                class: Some(p.class),
            });
        }
    }
    let special: HashSet<u64> = target.defaults.special.iter().copied().collect();
    FolderEncodeReport {
        output: target.job.output.clone(),
        delta_bytes,
        base_hash: meta.base_hash,
        n_params: meta.n_params,
        n_quantized: meta.n_quantized,
        bits_per_param: ratio(delta_bytes as f64 * 8.0, meta.n_params as f64),
        ratio_vs_finetuned: ratio(fine_bytes as f64, delta_bytes as f64),
        files: layout.files,
        defaults: target.defaults.clone(),
        classes: classes.into_values().collect(),
        exact_rows: pairs
            .iter()
            .filter(|p| !p.exact.is_empty())
            .map(|p| ExactRowsReport {
                name: p.info.name.clone(),
                rows: p.exact.len(),
                special: p.exact.iter().filter(|i| special.contains(i)).count(),
            })
            .collect(),
        grown: by_rows(true),
        shrunk: by_rows(false),
        skipped_base_only: base
            .tensor_names()
            .into_iter()
            .filter(|n| !names.contains(n))
            .map(str::to_owned)
            .collect(),
        finetune_only: pairs
            .iter()
            .filter(|p| base.layout(&p.info.name).is_none())
            .map(|p| p.info.name.clone())
            .collect(),
        tensors,
    }
}
