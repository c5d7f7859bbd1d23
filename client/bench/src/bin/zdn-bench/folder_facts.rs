//! What `folder`'s checks need to know of a folder's files (lengths, BLAKE3, header hashes),
//! taken while the files exist, so that `--lean` can delete them before the checks.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use zdn_protocol::Hash;

/// What the checks need to know of one file of a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FileFacts {
    pub(super) len: u64,
    /// BLAKE3 of the whole file.
    blake3: Hash,
    /// BLAKE3 of a safetensors file's header (up to its data), of any other file's bytes.
    head: Hash,
}

/// The files of `dir` (one level), by name.
pub(super) fn folder_facts(dir: &Path) -> Result<BTreeMap<String, FileFacts>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let map = zdn::fs::mapped_file::MappedFile::open(&e.path())?;
        let blake3 = map.blake3();
        let head = if name.ends_with(".safetensors") {
            let h = zdn_protocol::safetensors::parse(map.bytes())?;
            let head = blake3::hash(&map.bytes()[..h.data_start]).into();
            map.release(0..h.data_start);
            head
        } else {
            blake3
        };
        let len = map.len() as u64;
        out.insert(name, FileFacts { len, blake3, head });
    }
    Ok(out)
}

/// Whether two folders have the same file names and lengths, and `hash` of each file agrees.
fn agree(
    a: &BTreeMap<String, FileFacts>,
    b: &BTreeMap<String, FileFacts>,
    hash: impl Fn(&FileFacts) -> Hash,
) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((na, fa), (nb, fb))| na == nb && fa.len == fb.len && hash(fa) == hash(fb))
}

/// Whether two folders hold the same bytes.
pub(super) fn same_files(a: &BTreeMap<String, FileFacts>, b: &BTreeMap<String, FileFacts>) -> bool {
    agree(a, b, |f| f.blake3)
}

/// Whether `out` has the fine-tune's files, its side files and its shard headers exactly.
pub(super) fn matches_layout(
    out: &BTreeMap<String, FileFacts>,
    fine: &BTreeMap<String, FileFacts>,
) -> bool {
    agree(out, fine, |f| f.head)
}
