//! From a folder delta's files to what the store needs (the file table, the tensor index of
//! `delta.bitdelta` as object offsets, the chunk boundaries) after every check a reader relies on:
//! the layout ([`FolderDelta::parse`]), the members ([`FolderDelta::check_members`]), every shard
//! header against the delta's tensor index ([`plan_file`]), every entry used once.

use std::collections::HashMap;

use super::delta::{
    file_len, parse_header, plan_file, FolderDelta, FolderDeltaError, Source, TensorPlan,
    DELTA_MEMBER, LAYOUT_MEMBER,
};
use super::layout::Member;
use super::table::check_paths;
use super::{FileEntry, FolderError, FolderLayout};
use crate::bitdelta::BitDeltaFile;
use crate::hash::Hash;
use crate::manifest::TensorEntry;
use crate::safetensors::{SafetensorsHeader, MAX_HEADER_LEN};

/// Largest `headers/…` member read: a safetensors header's largest JSON and its length field.
pub const MAX_HEADER_MEMBER_LEN: u64 = MAX_HEADER_LEN + 8;

/// A checked folder delta, laid out as one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaFolderLayout {
    pub layout: FolderLayout,
    /// What `delta.bitdelta` records as its base: the BLAKE3 of the base object.
    pub base_object: Hash,
    pub delta: FolderDelta,
}

/// A `tensors` file of the fine-tune, ready to rebuild: its header's bytes (written as they are),
/// the header parsed, and the entries of each tensor in data order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePlan {
    /// Index into [`FolderDelta::files`].
    pub file: usize,
    pub header_bytes: Vec<u8>,
    pub header: SafetensorsHeader,
    pub tensors: Vec<TensorPlan>,
}

/// Checks a folder delta without reading its carried files or its tensors' blocks: `members` are
/// the delta folder's `(path, length)` (its file table), `layout` the bytes of `zdn-delta.json`,
/// `bitdelta` the parsed `delta.bitdelta`; `header(member)` reads one `headers/…` member (each at
/// most [`MAX_HEADER_MEMBER_LEN`] bytes: checked against the file table before it is read). Returns
/// the layout and the plan of every `tensors` file, in the layout's order; every entry of
/// `delta.bitdelta` is used exactly once.
pub fn check_delta<'a>(
    members: &[(&'a str, u64)],
    layout: &[u8],
    bitdelta: &BitDeltaFile<'_>,
    header: &mut dyn FnMut(&str) -> Result<Vec<u8>, FolderDeltaError>,
) -> Result<(FolderDelta, Vec<FilePlan>), FolderDeltaError> {
    let delta = FolderDelta::parse(layout)?;
    delta.check_members(members.iter().copied())?;
    let by_name: HashMap<&str, usize> = bitdelta
        .entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.name.as_str(), i))
        .collect();
    let mut used = vec![false; bitdelta.entries.len()];
    let mut plans = Vec::new();
    for (i, f) in delta.files.iter().enumerate() {
        if f.from != Source::Tensors {
            continue;
        }
        let path = f.member().unwrap_or_default();
        let len = members.iter().find(|m| m.0 == path).map_or(0, |m| m.1);
        if len > MAX_HEADER_MEMBER_LEN {
            return Err(FolderDeltaError::Shard {
                path: f.path.clone(),
                problem: format!("its header is {len} bytes, over {MAX_HEADER_MEMBER_LEN}"),
            });
        }
        let header_bytes = header(&path)?;
        let h = parse_header(&f.path, &header_bytes)?;
        if file_len(&h) != f.len {
            return Err(FolderDeltaError::Shard {
                path: f.path.clone(),
                problem: format!(
                    "its header describes {} bytes, the layout says {}",
                    file_len(&h),
                    f.len
                ),
            });
        }
        let tensors = plan_file(&h, &bitdelta.entries, &by_name, &delta, &mut used)?;
        plans.push(FilePlan {
            file: i,
            header_bytes,
            header: h,
            tensors,
        });
    }
    if let Some(i) = used.iter().position(|u| !u) {
        return Err(FolderDeltaError::UnusedEntry(
            bitdelta.entries[i].name.clone(),
        ));
    }
    Ok((delta, plans))
}

/// Checks a folder delta ([`check_delta`]) and lays it out. `members` must be in canonical order.
pub fn delta_layout(members: &[Member<'_>]) -> Result<DeltaFolderLayout, FolderDeltaError> {
    check_paths(members.iter().map(|m| m.path)).map_err(FolderDeltaError::Files)?;
    let member = |path: &str| {
        members
            .iter()
            .find(|m| m.path == path)
            .map(|m| m.bytes)
            .ok_or_else(|| FolderDeltaError::MissingMember(path.to_owned()))
    };
    let bitdelta = BitDeltaFile::parse(member(DELTA_MEMBER)?)?;
    let table: Vec<(&str, u64)> = members
        .iter()
        .map(|m| (m.path, m.bytes.len() as u64))
        .collect();
    let (delta, _) = check_delta(&table, member(LAYOUT_MEMBER)?, &bitdelta, &mut |p| {
        member(p).map(<[u8]>::to_vec)
    })?;

    let mut files = Vec::with_capacity(members.len());
    let mut boundaries = Vec::new();
    let mut tensors = Vec::new();
    let mut offset = 0u64;
    let overflow = || FolderDeltaError::Files(FolderError::Overflow);
    for m in members {
        let len = m.bytes.len() as u64;
        files.push(FileEntry {
            path: m.path.to_owned(),
            offset,
            len,
        });
        boundaries.push(offset);
        if m.path == DELTA_MEMBER {
            for e in &bitdelta.entries {
                let at = offset.checked_add(e.offset).ok_or_else(overflow)?;
                if e.length > 0 {
                    boundaries.push(at);
                }
                tensors.push(TensorEntry {
                    name: e.name.clone(),
                    dtype: e.dtype.code(),
                    shape: e.shape.clone(),
                    offset: at,
                    len: e.length,
                });
            }
        }
        offset = offset.checked_add(len).ok_or_else(overflow)?;
    }
    boundaries.sort_unstable();
    boundaries.dedup();
    Ok(DeltaFolderLayout {
        layout: FolderLayout {
            files,
            tensors,
            boundaries,
            object_len: offset,
        },
        base_object: bitdelta.meta.base_hash,
        delta,
    })
}
