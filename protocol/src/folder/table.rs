//! The rules of a manifest's file table (docs/spec/manifest.md "Folders"): between 1 and [`MAX_FILES`]
//! files, each path valid ([`check_path`]), sorted by path bytes with no duplicate, no two paths
//! equal but for letter case, no file where another path needs a folder; files back to back from
//! offset 0 covering the whole object; a chunk starting at every file's start (so no chunk spans two
//! files); every tensor inside one file.

use std::collections::HashMap;

use super::path::{check_path, parents};
use super::{FileEntry, FolderError, MAX_FILES};
use crate::chunk::ChunkRef;
use crate::manifest::TensorEntry;

/// Checks a list of member paths: count, each path, order, duplicates, case clashes, and that no
/// file stands where another path needs a folder. `paths` must be in canonical order.
pub fn check_paths<'a>(paths: impl ExactSizeIterator<Item = &'a str>) -> Result<(), FolderError> {
    let n = paths.len();
    if n == 0 {
        return Err(FolderError::Empty);
    }
    if n > MAX_FILES {
        return Err(FolderError::TooManyFiles(n));
    }
    // Lower-cased path → the path as given: case clashes, and files standing where a folder is needed
    // (also across letter case).
    let mut folded: HashMap<String, &str> = HashMap::with_capacity(n);
    let mut previous: Option<&str> = None;
    let mut all = Vec::with_capacity(n);
    for p in paths {
        check_path(p).map_err(|problem| FolderError::Path {
            path: p.to_owned(),
            problem,
        })?;
        if let Some(before) = previous {
            if before == p {
                return Err(FolderError::Duplicate(p.to_owned()));
            }
            if before > p {
                return Err(FolderError::Order {
                    before: before.to_owned(),
                    after: p.to_owned(),
                });
            }
        }
        previous = Some(p);
        if let Some(a) = folded.insert(p.to_lowercase(), p) {
            return Err(FolderError::CaseClash {
                a: a.to_owned(),
                b: p.to_owned(),
            });
        }
        all.push(p);
    }
    for p in all {
        for dir in parents(p) {
            if let Some(file) = folded.get(&dir.to_lowercase()) {
                return Err(FolderError::FileIsFolder {
                    file: (*file).to_owned(),
                    path: p.to_owned(),
                });
            }
        }
    }
    Ok(())
}

/// Checks a manifest's file table against the object it describes (see the module documentation).
/// `chunks` must already cover the object (`chunk::check_coverage`).
pub fn check_table(
    files: &[FileEntry],
    object_len: u64,
    chunks: &[ChunkRef],
    tensors: &[TensorEntry],
) -> Result<(), FolderError> {
    if files.len() > MAX_FILES {
        return Err(FolderError::TooManyFiles(files.len()));
    }
    check_paths(files.iter().map(|f| f.path.as_str()))?;
    let mut expected = 0u64;
    for f in files {
        if f.offset != expected {
            return Err(FolderError::Placement {
                path: f.path.clone(),
                offset: f.offset,
                expected,
            });
        }
        expected = expected.checked_add(f.len).ok_or(FolderError::Overflow)?;
    }
    if expected != object_len {
        return Err(FolderError::Coverage {
            covered: expected,
            object_len,
        });
    }
    // Chunks are sorted by offset (coverage): walk both lists once.
    let mut c = 0;
    for f in files.iter().filter(|f| f.offset < object_len) {
        while c < chunks.len() && chunks[c].offset < f.offset {
            c += 1;
        }
        if chunks.get(c).is_none_or(|ch| ch.offset != f.offset) {
            return Err(FolderError::ChunkSpansFiles {
                path: f.path.clone(),
                offset: f.offset,
            });
        }
    }
    for t in tensors {
        if containing_file(files, t.offset, t.len).is_none() {
            return Err(FolderError::TensorOutsideFile {
                name: t.name.clone(),
                offset: t.offset,
                len: t.len,
            });
        }
    }
    Ok(())
}

/// The file (index into `files`, which must be placed back to back) that holds bytes
/// `offset..offset + len` entirely.
pub fn containing_file(files: &[FileEntry], offset: u64, len: u64) -> Option<usize> {
    let end = offset.checked_add(len)?;
    let mut i = files.partition_point(|f| f.offset <= offset);
    // Empty files share their offset with the next file: look back past them.
    while i > 0 {
        i -= 1;
        let f = &files[i];
        if f.offset <= offset && end <= f.end() {
            return Some(i);
        }
        if f.len > 0 {
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::Codec;
    use crate::Hash;

    fn table(spec: &[(&str, u64)]) -> Vec<FileEntry> {
        let mut offset = 0;
        spec.iter()
            .map(|&(p, len)| {
                let f = FileEntry {
                    path: p.into(),
                    offset,
                    len,
                };
                offset += len;
                f
            })
            .collect()
    }

    fn chunks_at(cuts: &[u64], object_len: u64) -> Vec<ChunkRef> {
        let ranges = crate::chunk::plan(object_len, cuts, 1 << 20).unwrap();
        ranges
            .iter()
            .map(|r| ChunkRef {
                id: Hash::ZERO,
                offset: r.start,
                len: (r.end - r.start) as u32,
                codec: Codec::Raw,
            })
            .collect()
    }

    #[test]
    fn a_good_table_passes() {
        let files = table(&[
            ("a/config.json", 10),
            ("b.json", 0),
            ("model.safetensors", 30),
            ("z", 5),
        ]);
        let chunks = chunks_at(&[10, 40], 45);
        let t = TensorEntry {
            name: "w".into(),
            dtype: 9,
            shape: vec![2],
            offset: 20,
            len: 8,
        };
        assert_eq!(check_table(&files, 45, &chunks, &[t]), Ok(()));
        assert_eq!(containing_file(&files, 10, 0), Some(2));
        assert_eq!(containing_file(&files, 9, 2), None);
        assert_eq!(containing_file(&files, 40, 5), Some(3));
    }

    #[test]
    fn bad_tables_are_named() {
        let chunks = chunks_at(&[10], 20);
        let check = |spec: &[(&str, u64)]| check_table(&table(spec), 20, &chunks, &[]);
        assert_eq!(check(&[]), Err(FolderError::Empty));
        assert!(matches!(
            check(&[("../x", 10), ("y", 10)]),
            Err(FolderError::Path { .. })
        ));
        assert_eq!(
            check(&[("x", 10), ("x", 10)]),
            Err(FolderError::Duplicate("x".into()))
        );
        assert!(matches!(
            check(&[("y", 10), ("x", 10)]),
            Err(FolderError::Order { .. })
        ));
        assert!(matches!(
            check(&[("Config.json", 10), ("config.json", 10)]),
            Err(FolderError::CaseClash { .. })
        ));
        assert!(matches!(
            check(&[("a", 10), ("a/b", 10)]),
            Err(FolderError::FileIsFolder { .. })
        ));
        assert!(matches!(
            check(&[("A", 10), ("a/b", 10)]),
            Err(FolderError::FileIsFolder { .. })
        ));
        assert!(matches!(
            check(&[("x", 10), ("y", 9)]),
            Err(FolderError::Coverage { .. })
        ));
        assert!(matches!(
            check(&[("x", 5), ("y", 15)]),
            Err(FolderError::ChunkSpansFiles { .. })
        ));
        let mut files = table(&[("x", 10), ("y", 10)]);
        files[1].offset = 11;
        assert!(matches!(
            check_table(&files, 20, &chunks, &[]),
            Err(FolderError::Placement { .. })
        ));
        let t = TensorEntry {
            name: "w".into(),
            dtype: 9,
            shape: vec![2],
            offset: 6,
            len: 8,
        };
        assert!(matches!(
            check_table(&table(&[("x", 10), ("y", 10)]), 20, &chunks, &[t]),
            Err(FolderError::TensorOutsideFile { .. })
        ));
        let many: Vec<String> = (0..=MAX_FILES).map(|i| format!("f{i:05}")).collect();
        assert_eq!(
            check_paths(many.iter().map(String::as_str)),
            Err(FolderError::TooManyFiles(MAX_FILES + 1))
        );
    }
}
