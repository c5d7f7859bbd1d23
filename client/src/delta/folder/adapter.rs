//! Applying a LoRA adapter (docs/spec/lora.md): the base's folder written out with every tensor
//! the adapter targets merged (W + s·B·A, the protocol's one definition of the arithmetic) and
//! every other byte — headers, untouched tensors, side files — copied from the base. The adapter
//! is a folder on disk or an adapter object in the store; the base a folder or file on disk or a
//! base object in the store. Memory: one merged tensor (plus one base tensor read from the store)
//! and the adapter's weights, memory-mapped.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use zdn_node::store::ObjectStore;
use zdn_protocol::bitdelta::TensorData;
use zdn_protocol::folder::adapter::{adapter_plan, CONFIG_MEMBER, WEIGHTS_MEMBER};
use zdn_protocol::folder::layout::is_safetensors;
use zdn_protocol::folder::FileEntry;
use zdn_protocol::lora::{merge_tensor, AdapterPlan, LoraFactors, TensorMeta, MAX_CONFIG_BYTES};
use zdn_protocol::safetensors::{self, SafetensorsHeader};
use zdn_protocol::Hash;

use super::apply::{member_to_temp, FolderApplyError, FolderApplyReport};
use super::base::BaseModel;
use crate::fs::mapped_file::MappedFile;
use crate::fs::object_output::FolderOutput;
use crate::fs::partial::Partial;
use crate::fs::progress::Progress;
use crate::model::folder::ModelFolder;

/// Most bytes copied from the base in one piece.
const COPY_STEP: u64 = 64 << 20;

/// An adapter: its config's bytes and its weights, mapped.
#[derive(Debug)]
pub struct AdapterSource {
    config: Vec<u8>,
    weights: MappedFile,
    /// The store's copy of the weights, removed on drop.
    _tmp: Option<Partial<tempfile::NamedTempFile>>,
}

impl AdapterSource {
    /// An adapter folder on disk.
    pub fn loose(dir: &Path) -> Result<Self, FolderApplyError> {
        let folder = ModelFolder::open(dir)?;
        let mut files = folder.into_files().into_iter();
        let mut config = None;
        let mut weights = None;
        for (p, m) in files.by_ref() {
            match p.as_str() {
                CONFIG_MEMBER => config = Some(m),
                WEIGHTS_MEMBER => weights = Some(m),
                _ => {}
            }
        }
        let missing = |what: &'static str| {
            FolderApplyError::Adapter(zdn_protocol::folder::adapter::AdapterError::Missing(what))
        };
        let config = config.ok_or_else(|| missing(CONFIG_MEMBER))?;
        if config.len() > MAX_CONFIG_BYTES {
            return Err(FolderApplyError::Adapter(
                zdn_protocol::lora::ConfigError::TooLarge { len: config.len() }.into(),
            ));
        }
        Ok(AdapterSource {
            config: config.bytes().to_vec(),
            weights: weights.ok_or_else(|| missing(WEIGHTS_MEMBER))?,
            _tmp: None,
        })
    }

    /// The adapter object `hash` of the store, for an output at `output`.
    pub fn store(
        store: &ObjectStore,
        hash: &Hash,
        output: &Path,
    ) -> Result<Self, FolderApplyError> {
        let m = store.require_manifest(hash)?;
        let len = m.manifest.file(CONFIG_MEMBER).map_or(0, |f| f.len);
        if len > MAX_CONFIG_BYTES as u64 {
            return Err(FolderApplyError::Adapter(
                zdn_protocol::lora::ConfigError::TooLarge { len: len as usize }.into(),
            ));
        }
        let mut config = Vec::new();
        store.read_member(&m, CONFIG_MEMBER, &mut config)?;
        let (tmp, weights) = member_to_temp(store, &m, WEIGHTS_MEMBER, output)?;
        Ok(AdapterSource {
            config,
            weights,
            _tmp: Some(tmp),
        })
    }
}

/// Writes the base merged with the adapter at `output` (a new or empty folder).
pub fn apply_adapter(
    adapter: &AdapterSource,
    base: &dyn BaseModel,
    output: &Path,
    progress: bool,
) -> Result<FolderApplyReport, FolderApplyError> {
    let plan = adapter.plan(&base_metas(base))?;
    let weights = adapter.weights()?;
    let factors = Factors {
        plan: &plan,
        weights: &weights,
        bytes: adapter.weights.bytes(),
    };
    write_base_with(base, output, &factors, plan.modules.len(), progress)
}

impl AdapterSource {
    /// The adapter's merge plan against a base of these tensors (its config and weights checked).
    pub(crate) fn plan(
        &self,
        metas: &BTreeMap<String, TensorMeta>,
    ) -> Result<AdapterPlan, FolderApplyError> {
        Ok(adapter_plan(&self.config, self.weights.bytes(), metas)?)
    }

    /// The header of `adapter_model.safetensors`.
    pub(crate) fn weights(&self) -> Result<SafetensorsHeader, FolderApplyError> {
        safetensors::parse(self.weights.bytes()).map_err(|e| FolderApplyError::Adapter(e.into()))
    }

    /// The bytes of `adapter_model.safetensors`.
    pub(crate) fn weight_bytes(&self) -> &[u8] {
        self.weights.bytes()
    }
}

/// The base's tensors: dtype and shape by name.
pub(crate) fn base_metas(base: &dyn BaseModel) -> BTreeMap<String, TensorMeta> {
    base.tensor_names()
        .into_iter()
        .filter_map(|n| {
            base.layout(n).map(|(dtype, shape)| {
                (
                    n.to_owned(),
                    TensorMeta {
                        dtype,
                        shape: shape.to_vec(),
                    },
                )
            })
        })
        .collect()
}

/// How the base's tensors change when its folder is written out again.
pub(crate) trait TensorMerge {
    /// Whether the base's tensor `name` changes.
    fn changes(&self, name: &str) -> bool;
    /// The changed tensor `name` (the base's bytes `base`, in its dtype) into `out`, in the base's
    /// dtype and length.
    fn merge(
        &self,
        name: &str,
        base: &TensorData<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), FolderApplyError>;
}

/// Writes the base's folder at `output` (a new or empty folder) with the tensors `merge` changes
/// replaced and every other byte copied; `want` tensors must have changed.
pub(crate) fn write_base_with(
    base: &dyn BaseModel,
    output: &Path,
    merge: &dyn TensorMerge,
    want: usize,
    progress: bool,
) -> Result<FolderApplyReport, FolderApplyError> {
    let files = base.files();
    let mut entries = Vec::with_capacity(files.len());
    let mut offset = 0u64;
    for (path, len) in &files {
        entries.push(FileEntry {
            path: (*path).to_owned(),
            offset,
            len: *len,
        });
        offset = offset.checked_add(*len).ok_or(FolderApplyError::Overflow)?;
    }
    let mut out = FolderOutput::create(output, &entries, false)?;
    let bar = Progress::new(offset, "apply", progress);
    let mut merged = 0;
    for (path, len) in &files {
        if is_safetensors(path) {
            merged += write_merged(&mut out, base, path, *len, merge)?;
        } else {
            base.write_file(path, &mut out)?;
        }
        bar.inc(*len);
    }
    if merged != want {
        return Err(FolderApplyError::Unmerged { want, got: merged });
    }
    out.commit()?;
    bar.finish();
    Ok(FolderApplyReport {
        output: output.to_owned(),
        files: files.len(),
        tensors: merged,
        bytes_written: offset,
        base_hash: base.object_hash(),
        base_verified: true,
    })
}

/// The adapter's A and B matrices, by name.
pub(crate) struct Factors<'a> {
    pub(crate) plan: &'a AdapterPlan,
    pub(crate) weights: &'a SafetensorsHeader,
    pub(crate) bytes: &'a [u8],
}

impl Factors<'_> {
    /// The widened A and B of the module that changes the base's tensor `name`, if any.
    pub(crate) fn factors(&self, name: &str) -> Result<Option<LoraFactors>, FolderApplyError> {
        let Some(m) = self.plan.for_base_tensor(name) else {
            return Ok(None);
        };
        Ok(Some(LoraFactors::new(
            m.shape,
            self.tensor(&m.lora_a)?,
            self.tensor(&m.lora_b)?,
        )?))
    }

    fn tensor(&self, name: &str) -> Result<&[u8], FolderApplyError> {
        self.weights
            .get(name)
            .and_then(|t| self.bytes.get(t.range.clone()))
            .ok_or_else(|| FolderApplyError::AdapterTensor(name.to_owned()))
    }
}

impl TensorMerge for Factors<'_> {
    fn changes(&self, name: &str) -> bool {
        self.plan.for_base_tensor(name).is_some()
    }

    fn merge(
        &self,
        name: &str,
        base: &TensorData<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), FolderApplyError> {
        let m = self
            .plan
            .for_base_tensor(name)
            .ok_or_else(|| FolderApplyError::AdapterTensor(name.to_owned()))?;
        out.clear();
        out.resize(base.bytes.len(), 0);
        merge_tensor(
            &m.shape,
            base.bytes,
            self.tensor(&m.lora_a)?,
            self.tensor(&m.lora_b)?,
            out,
        )?;
        Ok(())
    }
}

/// Writes one base shard with the tensors `merge` changes replaced; returns how many were.
fn write_merged(
    out: &mut FolderOutput,
    base: &dyn BaseModel,
    path: &str,
    len: u64,
    merge: &dyn TensorMerge,
) -> Result<usize, FolderApplyError> {
    let mut head = Vec::new();
    base.read_file_range(path, 0, 8.min(len), &mut head)?;
    let n = head
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .filter(|n| *n <= safetensors::MAX_HEADER_LEN && n + 8 <= len)
        .ok_or_else(|| shard_error(path, "its header length is not valid"))?;
    base.read_file_range(path, 8, n, &mut head)?;
    let data_len = usize::try_from(len - 8 - n).map_err(|_| FolderApplyError::Overflow)?;
    let h = safetensors::parse_with_data_len(&head, data_len)
        .map_err(|e| shard_error(path, &e.to_string()))?;
    let mut cursor = 0u64;
    let mut buf = Vec::new();
    let mut base_buf = Vec::new();
    let mut merged = 0;
    for t in &h.tensors {
        if !merge.changes(&t.name) {
            continue;
        }
        let (start, end) = (t.range.start as u64, t.range.end as u64);
        copy_range(out, base, path, cursor, start, &mut buf)?;
        let b = base
            .tensor(&t.name, &mut base_buf)?
            .ok_or_else(|| shard_error(path, &format!("tensor {:?} is not readable", t.name)))?;
        merge.merge(&t.name, &b, &mut buf)?;
        base.release(&t.name);
        write(out, &buf)?;
        merged += 1;
        cursor = end;
    }
    copy_range(out, base, path, cursor, len, &mut buf)?;
    Ok(merged)
}

/// Copies bytes `from .. to` of the base's file `path` in bounded pieces.
fn copy_range(
    out: &mut FolderOutput,
    base: &dyn BaseModel,
    path: &str,
    mut from: u64,
    to: u64,
    buf: &mut Vec<u8>,
) -> Result<(), FolderApplyError> {
    while from < to {
        let n = (to - from).min(COPY_STEP);
        buf.clear();
        base.read_file_range(path, from, n, buf)?;
        write(out, buf)?;
        from += n;
    }
    Ok(())
}

fn write(out: &mut FolderOutput, bytes: &[u8]) -> Result<(), FolderApplyError> {
    out.write_all(bytes).map_err(|cause| FolderApplyError::Io {
        path: "output".into(),
        cause,
    })
}

fn shard_error(path: &str, problem: &str) -> FolderApplyError {
    FolderApplyError::BaseShard {
        path: path.to_owned(),
        problem: problem.to_owned(),
    }
}
