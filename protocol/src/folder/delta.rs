//! A delta between two model folders (docs/spec/folder-delta.md): itself a folder, stored as one
//! folder object of kind `delta`, that rebuilds the fine-tune's folder from the base's — its file
//! set, its shard layout, every shard's header byte for byte, its side files exactly.
//!
//! Members of a folder delta:
//! - `delta.bitdelta`: every fine-tune tensor, paired with the base tensor of the same name
//!   wherever it lives in the base's shards; the base it records is the base *object*'s BLAKE3.
//! - `zdn-delta.json` ([`FolderDelta`]): the fine-tune's files in canonical order, each rebuilt
//!   `from` the base (the base's file of the same path, byte-identical), `carried` (its bytes are
//!   the member `files/<path>`) or `tensors` (a safetensors file: its header is the member
//!   `headers/<path>`, its data the tensors it lists, rebuilt from `delta.bitdelta` in data order).
//! - `files/…` and `headers/…`: as above; nothing else.
//!
//! A tensor whose leading dimension grew or shrank (vocabulary growth: `embed_tokens`,
//! `lm_head`) is paired with the base tensor's first rows: its entry in `delta.bitdelta` has the
//! common rows and is reconstructed against the base's first rows ([`base_rows`]); the new rows of
//! a grown tensor are a second entry, named in [`FolderDelta::grown`], stored exactly.
//!
//! Everything here is sans-IO and checks untrusted input: the layout's size, every path, every
//! member, and every shard header against the delta's tensor index ([`plan_file`]).

use std::collections::{HashMap, HashSet};

use super::patch::{MAX_PATCHED_LEN, MAX_PATCH_LEN};
use super::table::check_paths;
use super::FolderError;
use crate::bitdelta::{IndexEntry, TensorData};
use crate::hash::Hash;
use crate::safetensors::{self, SafetensorsError, SafetensorsHeader, MAX_HEADER_LEN};

pub use super::delta_plan::{plan_file, TensorPlan};

/// The tensors of the fine-tune, as a `.bitdelta`.
pub const DELTA_MEMBER: &str = "delta.bitdelta";
/// The description of the fine-tune's folder ([`FolderDelta`]).
pub const LAYOUT_MEMBER: &str = "zdn-delta.json";
/// Where the bytes of a `carried` file are: `files/<path>`.
pub const CARRIED_DIR: &str = "files/";
/// Where the patch of a `patched` file is: `patches/<path>`.
pub const PATCH_DIR: &str = "patches/";
/// Where the header of a `tensors` file is: `headers/<path>`.
pub const HEADER_DIR: &str = "headers/";
/// The value of [`FolderDelta::format`] when no file is `patched`.
pub const FORMAT: &str = "zdn-folder-delta/1";
/// The value of [`FolderDelta::format`] when some file is `patched` (a reader of format 1 alone
/// refuses it by its format rather than by a source it does not know).
pub const FORMAT_PATCHED: &str = "zdn-folder-delta/2";
/// Largest `zdn-delta.json` read (a 405B model's would be well under 1 MB).
pub const MAX_LAYOUT_LEN: usize = 16 << 20;
/// What the entry of a grown tensor's new rows is called: the tensor's name and this suffix.
pub const GROWN_SUFFIX: &str = ".zdn_new_rows";
/// What the entry of a tensor's exactly kept rows is called: the tensor's name and this suffix.
pub const EXACT_SUFFIX: &str = ".zdn_exact_rows";
/// Most rows one tensor may keep exactly (a 256k vocabulary's every row).
pub const MAX_EXACT_ROWS: usize = 1 << 18;

/// `zdn-delta.json`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FolderDelta {
    /// [`FORMAT`], or [`FORMAT_PATCHED`] when some file is `patched` ([`FolderDelta::format_for`]).
    pub format: String,
    /// The fine-tune's files, in canonical order (sorted by path bytes).
    pub files: Vec<OutputFile>,
    /// Tensors whose leading dimension grew: their new rows are a second entry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grown: Vec<GrownTensor>,
    /// Tensors some of whose rows are kept exactly (trained special tokens of a vocabulary
    /// matrix): those rows are a separate entry, written over the reconstruction.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exact_rows: Vec<ExactRows>,
}

/// Rows of a tensor kept exactly: after the tensor's entry is reconstructed, row `indices[i]` is
/// replaced by row `i` of the entry `rows` (stored exactly, no base). The indices are strictly
/// increasing and lie in the entry's rows (for a grown tensor: its common rows).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExactRows {
    pub name: String,
    pub rows: String,
    pub indices: Vec<u64>,
}

/// One file of the fine-tune's folder and where its bytes come from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputFile {
    pub path: String,
    pub from: Source,
    /// Length of the file in bytes.
    pub len: u64,
    /// BLAKE3 of the file, for `base`, `carried` and `patched` files (a `tensors` file's bytes
    /// depend on the reconstruction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<Hash>,
    /// BLAKE3 of the base's file a `patched` file is rebuilt from (only there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_blake3: Option<Hash>,
}

/// Where an output file's bytes come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The base's file of the same path, byte-identical.
    Base,
    /// The member `files/<path>` of the delta.
    Carried,
    /// A safetensors file: header `headers/<path>`, data rebuilt from `delta.bitdelta`.
    Tensors,
    /// The member `patches/<path>` applied to the base's file of the same path ([`super::patch`]).
    Patched,
}

/// A tensor whose leading dimension grew: rows `0..k` are the entry `name` (paired with the
/// base's first `k` rows), rows `k..` the entry `rows`, stored exactly.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrownTensor {
    pub name: String,
    pub rows: String,
}

/// Why a folder delta is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FolderDeltaError {
    #[error("{LAYOUT_MEMBER} is {0} bytes, over the limit of {MAX_LAYOUT_LEN}")]
    TooLarge(usize),
    #[error("{LAYOUT_MEMBER} is not valid: {0}")]
    Json(String),
    #[error("{LAYOUT_MEMBER} has format {0:?}; this zdn reads {FORMAT:?} and {FORMAT_PATCHED:?}")]
    Format(String),
    #[error("{LAYOUT_MEMBER} has format {got:?}, but its files need {want:?} ({FORMAT_PATCHED:?} exactly when a file is patched)")]
    FormatMismatch { got: String, want: &'static str },
    #[error("{LAYOUT_MEMBER}: {0}")]
    Files(FolderError),
    #[error("{LAYOUT_MEMBER}: {path:?}: {problem}")]
    File { path: String, problem: String },
    #[error(
        "{LAYOUT_MEMBER}: grown tensor {0:?} is listed twice, or its rows entry is a tensor too"
    )]
    Grown(String),
    #[error("{LAYOUT_MEMBER}: exact rows of {0:?}: listed twice, named like another entry, or indices not strictly increasing (1 ..= {MAX_EXACT_ROWS})")]
    ExactRows(String),
    #[error("the delta folder lacks its member {0:?}")]
    MissingMember(String),
    #[error("the delta folder's member {0:?} is not part of the fine-tune's layout")]
    StrayMember(String),
    #[error("{path}: header: {error}")]
    Header {
        path: String,
        error: SafetensorsError,
    },
    #[error("{path}: {problem}")]
    Shard { path: String, problem: String },
    #[error("tensor {name:?}: {problem}")]
    Tensor { name: String, problem: String },
    #[error("{DELTA_MEMBER}: {0}")]
    BitDelta(#[from] crate::bitdelta::FormatError),
    #[error("delta.bitdelta entry {0:?} is used by no file of the fine-tune")]
    UnusedEntry(String),
}

fn file_err(path: &str, problem: impl Into<String>) -> FolderDeltaError {
    FolderDeltaError::File {
        path: path.to_owned(),
        problem: problem.into(),
    }
}

pub(super) fn tensor_err(name: &str, problem: impl Into<String>) -> FolderDeltaError {
    FolderDeltaError::Tensor {
        name: name.to_owned(),
        problem: problem.into(),
    }
}

impl FolderDelta {
    /// Parses and checks `zdn-delta.json`: size, format, the paths (as a folder's file table: valid,
    /// canonical order, no duplicates or case clashes), each file's source, the grown tensors.
    pub fn parse(bytes: &[u8]) -> Result<Self, FolderDeltaError> {
        if bytes.len() > MAX_LAYOUT_LEN {
            return Err(FolderDeltaError::TooLarge(bytes.len()));
        }
        let d: FolderDelta =
            serde_json::from_slice(bytes).map_err(|e| FolderDeltaError::Json(e.to_string()))?;
        d.check()?;
        Ok(d)
    }

    /// The canonical bytes of `zdn-delta.json` (pretty JSON, a newline at the end).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// The format a layout with these files has: [`FORMAT_PATCHED`] if any is `patched`.
    pub fn format_for(files: &[OutputFile]) -> &'static str {
        if files.iter().any(|f| f.from == Source::Patched) {
            FORMAT_PATCHED
        } else {
            FORMAT
        }
    }

    /// The checks of [`Self::parse`], for a layout built in memory.
    pub fn check(&self) -> Result<(), FolderDeltaError> {
        if self.format != FORMAT && self.format != FORMAT_PATCHED {
            return Err(FolderDeltaError::Format(self.format.clone()));
        }
        // Format 2 exactly when some file is patched: format 1 readers refuse patches by format.
        let want = Self::format_for(&self.files);
        if self.format != want {
            return Err(FolderDeltaError::FormatMismatch {
                got: self.format.clone(),
                want,
            });
        }
        check_paths(self.files.iter().map(|f| f.path.as_str())).map_err(FolderDeltaError::Files)?;
        for f in &self.files {
            check_source(f)?;
            if let Some(m) = f.member() {
                super::check_path(&m).map_err(|e| file_err(&f.path, e.to_string()))?;
            }
        }
        let mut seen = HashSet::new();
        for g in &self.grown {
            if !seen.insert(g.name.as_str()) || g.rows == g.name {
                return Err(FolderDeltaError::Grown(g.name.clone()));
            }
        }
        for g in &self.grown {
            if !seen.insert(g.rows.as_str()) {
                return Err(FolderDeltaError::Grown(g.rows.clone()));
            }
        }
        // Exact rows: each tensor once; their entries distinct from every other name.
        let grown: HashSet<&str> = self.grown.iter().map(|g| g.name.as_str()).collect();
        let mut names = HashSet::new();
        for x in &self.exact_rows {
            let bad = !names.insert(x.name.as_str())
                || x.rows == x.name
                || !seen.insert(x.rows.as_str())
                || (seen.contains(x.name.as_str()) && !grown.contains(x.name.as_str()))
                || x.indices.is_empty()
                || x.indices.len() > MAX_EXACT_ROWS
                || x.indices.windows(2).any(|w| w[0] >= w[1]);
            if bad {
                return Err(FolderDeltaError::ExactRows(x.name.clone()));
            }
        }
        Ok(())
    }

    /// The tensors with exact rows, by name.
    pub fn exact_map(&self) -> HashMap<&str, &ExactRows> {
        self.exact_rows
            .iter()
            .map(|x| (x.name.as_str(), x))
            .collect()
    }

    /// Checks the delta folder's members (`(path, len)`, any order) against the layout: the two
    /// fixed members, exactly one member per carried, patched or tensors file, nothing else; a
    /// carried member's length is the file's, a patch is at most [`MAX_PATCH_LEN`] bytes.
    pub fn check_members<'a>(
        &self,
        members: impl IntoIterator<Item = (&'a str, u64)>,
    ) -> Result<(), FolderDeltaError> {
        /// What a member's length must be.
        enum Len {
            Any,
            Exactly(u64),
            AtMost(u64),
        }
        let mut want: HashMap<String, Len> = self
            .files
            .iter()
            .filter_map(|f| {
                let len = match f.from {
                    Source::Carried => Len::Exactly(f.len),
                    Source::Patched => Len::AtMost(MAX_PATCH_LEN),
                    Source::Base | Source::Tensors => Len::Any,
                };
                f.member().map(|m| (m, len))
            })
            .collect();
        want.insert(DELTA_MEMBER.into(), Len::Any);
        want.insert(LAYOUT_MEMBER.into(), Len::Any);
        for (path, len) in members {
            let problem = match want.remove(path) {
                None => return Err(FolderDeltaError::StrayMember(path.to_owned())),
                Some(Len::Exactly(l)) if l != len => format!("is {len} bytes, the layout says {l}"),
                Some(Len::AtMost(l)) if len > l => {
                    format!("is {len} bytes, over the {l}-byte limit")
                }
                Some(_) => continue,
            };
            return Err(file_err(path, problem));
        }
        let mut missing: Vec<String> = want.into_keys().collect();
        missing.sort();
        match missing.into_iter().next() {
            Some(m) => Err(FolderDeltaError::MissingMember(m)),
            None => Ok(()),
        }
    }

    /// The grown tensors by name → the entry holding their new rows.
    pub fn grown_map(&self) -> HashMap<&str, &str> {
        self.grown
            .iter()
            .map(|g| (g.name.as_str(), g.rows.as_str()))
            .collect()
    }
}

/// The fields one file's source requires or forbids (in a format-1 layout, `patched` is refused
/// by the format check).
fn check_source(f: &OutputFile) -> Result<(), FolderDeltaError> {
    let problem = match f.from {
        Source::Base | Source::Carried | Source::Patched if f.blake3.is_none() => {
            "a base, carried or patched file needs its blake3"
        }
        Source::Tensors if f.blake3.is_some() => "a tensors file has no blake3",
        Source::Tensors if !super::layout::is_safetensors(&f.path) => {
            "a tensors file must be *.safetensors"
        }
        Source::Patched if f.base_blake3.is_none() => "a patched file needs its base_blake3",
        Source::Patched if f.len > MAX_PATCHED_LEN => {
            "a patched file is at most 64 MiB (carry a larger one)"
        }
        Source::Base | Source::Carried | Source::Tensors if f.base_blake3.is_some() => {
            "only a patched file has a base_blake3"
        }
        _ => return Ok(()),
    };
    Err(file_err(&f.path, problem))
}

impl OutputFile {
    /// The delta member this file needs: `files/<path>`, `patches/<path>` or `headers/<path>`;
    /// none for a base file.
    pub fn member(&self) -> Option<String> {
        match self.from {
            Source::Base => None,
            Source::Carried => Some(format!("{CARRIED_DIR}{}", self.path)),
            Source::Patched => Some(format!("{PATCH_DIR}{}", self.path)),
            Source::Tensors => Some(format!("{HEADER_DIR}{}", self.path)),
        }
    }
}

/// A safetensors header kept apart from its data (the member `headers/<path>`): `8 + N` bytes, the
/// length and the JSON. Parsed with the data section the tensors tile exactly: they must follow each
/// other from offset 0 with no gap, as every writer of the format does, so the file is the header
/// and the tensors' bytes in data order.
pub fn parse_header(path: &str, header: &[u8]) -> Result<SafetensorsHeader, FolderDeltaError> {
    let err = |error| FolderDeltaError::Header {
        path: path.to_owned(),
        error,
    };
    let n = header
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .ok_or(err(SafetensorsError::TooShort(header.len())))?;
    if n > MAX_HEADER_LEN || n.checked_add(8) != Some(header.len() as u64) {
        return Err(FolderDeltaError::Shard {
            path: path.to_owned(),
            problem: format!(
                "the header member is {} bytes, its length field says 8 + {n}",
                header.len()
            ),
        });
    }
    let h = safetensors::parse_with_data_len(header, usize::MAX - header.len()).map_err(err)?;
    let mut end = h.data_start;
    for t in &h.tensors {
        if t.range.start != end {
            return Err(FolderDeltaError::Shard {
                path: path.to_owned(),
                problem: format!(
                    "tensor {:?} starts at data offset {}, not {} where the one before ends: a gap or overlap in the data section",
                    t.name,
                    t.range.start - h.data_start,
                    end - h.data_start
                ),
            });
        }
        end = t.range.end;
    }
    Ok(h)
}

/// Length of the safetensors file a header describes: the header and its tiled data.
pub fn file_len(h: &SafetensorsHeader) -> u64 {
    h.tensors
        .last()
        .map_or(h.data_start, |t| t.range.end)
        .try_into()
        .unwrap_or(u64::MAX)
}

/// Writes the exact rows over a reconstructed tensor: row `indices[i]` of `out` becomes row `i`
/// of `rows`. The shapes were checked by [`plan_file`]; `false` when the lengths disagree.
pub fn scatter_rows(out: &mut [u8], rows: &[u8], indices: &[u64]) -> bool {
    let Some(row) = rows.len().checked_div(indices.len()) else {
        return indices.is_empty();
    };
    if row * indices.len() != rows.len() {
        return false;
    }
    for (i, &at) in indices.iter().enumerate() {
        let Some(dst) = usize::try_from(at)
            .ok()
            .and_then(|a| a.checked_mul(row))
            .and_then(|start| out.get_mut(start..start.checked_add(row)?))
        else {
            return false;
        };
        dst.copy_from_slice(&rows[i * row..(i + 1) * row]);
    }
    true
}

/// [`scatter_rows`] onto a block of a reconstructed tensor that starts at row `first`: the exact
/// rows whose index lies in the block are written there, the others skipped. `false` when the
/// lengths disagree.
pub fn scatter_rows_within(block: &mut [u8], rows: &[u8], indices: &[u64], first: u64) -> bool {
    let Some(row) = rows.len().checked_div(indices.len()) else {
        return indices.is_empty();
    };
    if row * indices.len() != rows.len() {
        return false;
    }
    if row == 0 {
        return true;
    }
    if !block.len().is_multiple_of(row) {
        return false;
    }
    let end = first.saturating_add((block.len() / row) as u64);
    for (i, &at) in indices.iter().enumerate() {
        if (first..end).contains(&at) {
            let start = (at - first) as usize * row;
            block[start..start + row].copy_from_slice(&rows[i * row..(i + 1) * row]);
        }
    }
    true
}

/// The base tensor an entry is reconstructed against: the base tensor itself when the shapes are
/// equal, its first `entry.shape[0]` rows when the base has more rows and the same trailing
/// dimensions (the fine-tune's vocabulary shrank, or grew and this is the common part); `None`
/// when neither holds. Rows are the leading dimension of a row-major tensor, so the first `k` rows
/// are the first `k × row bytes` bytes.
pub fn base_rows<'a>(entry: &'a IndexEntry, base: TensorData<'a>) -> Option<TensorData<'a>> {
    if base.shape == entry.shape.as_slice() {
        return Some(base);
    }
    let (rows, rest) = entry.shape.split_first()?;
    let (base_rows, base_rest) = base.shape.split_first()?;
    if rest != base_rest || rows > base_rows {
        return None;
    }
    let row_bytes = rest
        .iter()
        .try_fold(base.dtype.size() as u64, |a, &d| a.checked_mul(d))?;
    let len = usize::try_from(rows.checked_mul(row_bytes)?).ok()?;
    TensorData::new(base.dtype, &entry.shape, base.bytes.get(..len)?)
}

#[cfg(test)]
#[path = "delta_tests.rs"]
mod tests;
