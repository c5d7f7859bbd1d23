//! From a folder's files to what the store needs: the file table, the tensor index of every
//! `*.safetensors` member (offsets into the object), and the chunk boundaries (every file start,
//! every safetensors data section and tensor start), after every check of a folder.

use std::collections::{HashMap, HashSet};

use super::shard_index::{self, ShardIndex};
use super::table::check_paths;
use super::{FileEntry, FolderError};
use crate::manifest::TensorEntry;
use crate::safetensors;

/// One file of a folder: its relative path and its bytes (a memory map, typically).
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    pub path: &'a str,
    pub bytes: &'a [u8],
}

/// Whether a member is read as safetensors weights.
pub fn is_safetensors(path: &str) -> bool {
    path.ends_with(".safetensors")
}

/// What the store needs to know about a folder before chunking it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderLayout {
    pub files: Vec<FileEntry>,
    /// Every tensor of every `*.safetensors` member, in object order.
    pub tensors: Vec<TensorEntry>,
    /// Object offsets where a chunk must start: every file start, every safetensors data section
    /// and tensor start.
    pub boundaries: Vec<u64>,
    pub object_len: u64,
}

/// Checks a folder and lays it out as one object. `members` must be in canonical order (sorted by
/// path bytes); the object is their concatenation in that order.
///
/// Checks, in this order: the paths ([`check_paths`]); every `*.safetensors` member parses
/// ([`safetensors::parse`]); no tensor name is in two members; every `*.safetensors.index.json`
/// agrees with the shards ([`shard_index::check`]).
pub fn layout(members: &[Member<'_>]) -> Result<FolderLayout, FolderError> {
    check_paths(members.iter().map(|m| m.path))?;
    let mut files = Vec::with_capacity(members.len());
    let mut tensors = Vec::new();
    let mut boundaries = Vec::new();
    // Tensor name → the member holding it; shard path → its tensor names.
    let mut owner: HashMap<&str, &str> = HashMap::new();
    let mut shards: HashMap<&str, HashSet<&str>> = HashMap::new();
    let mut offset = 0u64;
    let mut headers = Vec::new();
    for m in members {
        let len = m.bytes.len() as u64;
        files.push(FileEntry {
            path: m.path.to_owned(),
            offset,
            len,
        });
        boundaries.push(offset);
        if is_safetensors(m.path) {
            let h = safetensors::parse(m.bytes).map_err(|error| FolderError::Safetensors {
                path: m.path.to_owned(),
                error,
            })?;
            headers.push((m.path, offset, h));
        }
        offset = offset.checked_add(len).ok_or(FolderError::Overflow)?;
    }
    for (path, start, h) in &headers {
        let names = shards.entry(path).or_default();
        boundaries.push(start + h.data_start as u64);
        for t in &h.tensors {
            if let Some(first) = owner.insert(&t.name, path) {
                return Err(FolderError::DuplicateTensor {
                    name: t.name.clone(),
                    first: first.to_owned(),
                    second: (*path).to_owned(),
                });
            }
            names.insert(&t.name);
            // Inside the member: the parser checked every range against the member's length.
            let at = start + t.range.start as u64;
            boundaries.push(at);
            tensors.push(TensorEntry {
                name: t.name.clone(),
                dtype: t.dtype.code(),
                shape: t.shape.clone(),
                offset: at,
                len: t.range.len() as u64,
            });
        }
    }
    let paths: HashSet<&str> = members.iter().map(|m| m.path).collect();
    for m in members
        .iter()
        .filter(|m| shard_index::is_shard_index(m.path))
    {
        let problem = |problem| FolderError::ShardIndex {
            index: m.path.to_owned(),
            problem,
        };
        let idx = ShardIndex::parse(m.bytes).map_err(problem)?;
        shard_index::check(m.path, &idx, &shards, &paths).map_err(problem)?;
    }
    Ok(FolderLayout {
        files,
        tensors,
        boundaries,
        object_len: offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::safetensors::{encode_header, TensorLayout};
    use crate::DType;

    fn shard(names: &[&str]) -> Vec<u8> {
        let layouts: Vec<TensorLayout> = names
            .iter()
            .map(|n| TensorLayout {
                name: (*n).into(),
                dtype: DType::F32,
                shape: vec![2, 3],
            })
            .collect();
        let (mut f, lens) = encode_header(&layouts, &Default::default()).unwrap();
        let data: u64 = lens.iter().sum();
        f.resize(f.len() + data as usize, 1);
        f
    }

    #[test]
    fn a_sharded_folder_is_laid_out() {
        let s1 = shard(&["a", "b"]);
        let s2 = shard(&["c"]);
        let index = br#"{"weight_map":{"a":"m-1.safetensors","b":"m-1.safetensors","c":"m-2.safetensors"}}"#;
        let members = [
            Member {
                path: "config.json",
                bytes: b"{}",
            },
            Member {
                path: "m-1.safetensors",
                bytes: &s1,
            },
            Member {
                path: "m-2.safetensors",
                bytes: &s2,
            },
            Member {
                path: "model.safetensors.index.json",
                bytes: index,
            },
        ];
        let l = layout(&members).unwrap();
        assert_eq!(l.files.len(), 4);
        assert_eq!(l.files[1].offset, 2);
        assert_eq!(
            l.object_len,
            2 + s1.len() as u64 + s2.len() as u64 + index.len() as u64
        );
        let names: Vec<&str> = l.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        // Tensor offsets are object offsets: the bytes there are the tensor's.
        let object: Vec<u8> = members
            .iter()
            .flat_map(|m| m.bytes.iter().copied())
            .collect();
        let h = safetensors::parse(&s2).unwrap();
        let c = &l.tensors[2];
        assert_eq!(
            &object[c.offset as usize..(c.offset + c.len) as usize],
            &s2[h.tensors[0].range.clone()]
        );
        for f in &l.files {
            assert!(l.boundaries.contains(&f.offset));
        }
        assert!(l.boundaries.contains(&c.offset));
    }

    #[test]
    fn bad_folders_are_refused() {
        let s1 = shard(&["a"]);
        let s2 = shard(&["a"]);
        let e = layout(&[
            Member {
                path: "x.safetensors",
                bytes: &s1,
            },
            Member {
                path: "y.safetensors",
                bytes: &s2,
            },
        ])
        .unwrap_err();
        assert!(matches!(e, FolderError::DuplicateTensor { .. }), "{e}");
        let e = layout(&[Member {
            path: "x.safetensors",
            bytes: b"not weights",
        }])
        .unwrap_err();
        assert!(matches!(e, FolderError::Safetensors { .. }), "{e}");
        let e = layout(&[Member {
            path: "model.safetensors.index.json",
            bytes: br#"{"weight_map":{"a":"x.safetensors"}}"#,
        }])
        .unwrap_err();
        assert!(e.to_string().contains("not in the folder"), "{e}");
        let e = layout(&[Member {
            path: "../x",
            bytes: b"",
        }])
        .unwrap_err();
        assert!(matches!(e, FolderError::Path { .. }), "{e}");
        assert_eq!(layout(&[]).unwrap_err(), FolderError::Empty);
        // Side files are anything; empty files are files.
        let l = layout(&[
            Member {
                path: "a",
                bytes: b"",
            },
            Member {
                path: "b",
                bytes: b"\xff\x00",
            },
        ])
        .unwrap();
        assert_eq!(l.object_len, 2);
        assert!(l.tensors.is_empty());
    }
}
