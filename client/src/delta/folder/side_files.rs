//! The fine-tune's files as a folder delta lists them, and the members that carry them: a shard is
//! a `tensors` file (its header a member), a side file identical to the base's is taken from the
//! base, one that differs from the base's file of the same path is sent as a patch against it when
//! the patch is smaller than the file would be compressed ([`zdn_protocol::folder::patch`]), any
//! other is carried whole.

use std::borrow::Cow;
use std::collections::HashSet;

use zdn_protocol::folder::delta::{OutputFile, Source};
use zdn_protocol::folder::patch::{self, MAX_PATCHED_LEN};
use zdn_protocol::safetensors::SafetensorsHeader;
use zdn_protocol::Hash;

use super::base::{BaseError, BaseModel};
use crate::fs::mapped_file::MappedFile;

/// A member of the delta folder holding a side file: its path in the delta and its bytes.
pub(super) struct SideMember<'a> {
    pub path: String,
    pub bytes: Cow<'a, [u8]>,
}

/// The fine-tune's files in the layout's order, and the members of its carried and patched files.
pub(super) fn output_files<'a>(
    files: &'a [(String, MappedFile)],
    headers: &[(usize, SafetensorsHeader)],
    base: &dyn BaseModel,
) -> Result<(Vec<OutputFile>, Vec<SideMember<'a>>), BaseError> {
    let shards: HashSet<usize> = headers.iter().map(|(i, _)| *i).collect();
    let mut out = Vec::with_capacity(files.len());
    let mut members = Vec::new();
    for (i, (path, map)) in files.iter().enumerate() {
        let bytes = map.bytes();
        let mut f = OutputFile {
            path: path.clone(),
            from: Source::Tensors,
            len: bytes.len() as u64,
            blake3: None,
            base_blake3: None,
        };
        if !shards.contains(&i) {
            f.blake3 = Some(Hash::of(bytes));
            f.from = Source::Base;
            if !base.same_file(path, bytes)? {
                let member = match patch_of(path, bytes, base)? {
                    Some((p, base_hash)) => {
                        f.from = Source::Patched;
                        f.base_blake3 = Some(base_hash);
                        Cow::Owned(p)
                    }
                    None => {
                        f.from = Source::Carried;
                        Cow::Borrowed(bytes)
                    }
                };
                members.push(SideMember {
                    path: f.member().unwrap_or_default(),
                    bytes: member,
                });
            }
        }
        out.push(f);
    }
    Ok((out, members))
}

/// A patch of `bytes` against the base's file at `path` and that file's BLAKE3, when the base has
/// one, both fit the limit, and the patch is smaller than the file compressed on its own.
fn patch_of(
    path: &str,
    bytes: &[u8],
    base: &dyn BaseModel,
) -> Result<Option<(Vec<u8>, Hash)>, BaseError> {
    if bytes.len() as u64 > MAX_PATCHED_LEN {
        return Ok(None);
    }
    let Some(old) = base.small_file(path, MAX_PATCHED_LEN)? else {
        return Ok(None);
    };
    Ok(patch::encode_if_smaller(&old, bytes).map(|p| (p, Hash::of(&old))))
}
