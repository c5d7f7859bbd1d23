//! Model folders: a Hugging Face style folder (sharded safetensors, their index, config, tokenizer,
//! chat template, …) stored as **one object**, the concatenation of its files in canonical order
//! (sorted by path bytes), described by a file table in the manifest (docs/spec/manifest.md "Folders").
//!
//! Everything here is sans-IO: [`path`] checks one relative path, [`table`] checks a whole file
//! table against an object, [`layout()`] turns the files' bytes (memory maps, typically) into the file
//! table, the tensor index and the chunk boundaries, checking `*.safetensors.index.json` files
//! against the shards they name ([`shard_index`]). Paths are untrusted input everywhere: a reader
//! re-checks them before writing anything to disk.

pub mod adapter;
pub mod architecture;
pub mod delta;
pub mod delta_layout;
pub mod delta_plan;
pub mod layout;
pub mod patch;
pub mod path;
pub mod shard_index;
pub mod table;

pub use delta_layout::{check_delta, delta_layout, DeltaFolderLayout, FilePlan};
pub use layout::{layout, FolderLayout, Member};
pub use path::{check_path, PathError};
pub use table::check_table;

/// Most files one folder object may hold. A 405B model has under 200 shards; a folder of many
/// thousands of files is not a model.
pub const MAX_FILES: usize = 4096;
/// Longest path, in bytes (UTF-8), `/`-separated, relative to the folder.
pub const MAX_PATH_LEN: usize = 1024;
/// Longest path component, in bytes (the common file-system limit).
pub const MAX_COMPONENT_LEN: usize = 255;
/// Largest `*.safetensors.index.json` read (a 405B model's index is about 100 kB).
pub const MAX_SHARD_INDEX_LEN: usize = 64 << 20;

/// One member file of a folder object: where its bytes are in the object.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileEntry {
    /// Relative, `/`-separated path ([`check_path`]).
    pub path: String,
    /// Offset of the file's first byte in the object.
    pub offset: u64,
    /// Length of the file in bytes (0 for an empty file).
    pub len: u64,
}

impl FileEntry {
    /// End of the file in the object (offset + len; the table check guarantees it does not overflow).
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.len)
    }
}

/// Why a folder (or a manifest's file table) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FolderError {
    #[error("the folder has no files")]
    Empty,
    #[error("the folder has {0} files, more than the limit of {MAX_FILES}")]
    TooManyFiles(usize),
    #[error("path {path:?}: {problem}")]
    Path { path: String, problem: PathError },
    #[error("path {0:?} appears twice")]
    Duplicate(String),
    #[error(
        "paths are not in canonical order (sorted by bytes, each once): {before:?} then {after:?}"
    )]
    Order { before: String, after: String },
    #[error("paths {a:?} and {b:?} differ only in letter case (they would be one file on a case-insensitive file system)")]
    CaseClash { a: String, b: String },
    #[error("{file:?} is a file, but {path:?} puts a folder there")]
    FileIsFolder { file: String, path: String },
    #[error("file table: {path:?} starts at {offset}, expected {expected} (files must follow each other)")]
    Placement {
        path: String,
        offset: u64,
        expected: u64,
    },
    #[error("file table covers {covered} bytes, the object has {object_len}")]
    Coverage { covered: u64, object_len: u64 },
    #[error("file table: no chunk starts where {path:?} starts (offset {offset}); chunks must not span files")]
    ChunkSpansFiles { path: String, offset: u64 },
    #[error("tensor {name:?} (bytes {offset}+{len}) does not lie inside one file of the folder")]
    TensorOutsideFile { name: String, offset: u64, len: u64 },
    #[error("{path}: not a valid safetensors file: {error}")]
    Safetensors {
        path: String,
        error: crate::safetensors::SafetensorsError,
    },
    #[error(
        "tensor {name:?} is in both {first} and {second}: a model folder holds each tensor once"
    )]
    DuplicateTensor {
        name: String,
        first: String,
        second: String,
    },
    #[error("{index}: {problem}")]
    ShardIndex { index: String, problem: String },
    #[error("the folder is larger than 2^64 bytes")]
    Overflow,
}
