//! Errors of the store.

use std::path::PathBuf;

use zdn_protocol::chunk::ChunkError;
use zdn_protocol::folder::FolderError;
use zdn_protocol::manifest::ManifestError;
use zdn_protocol::object::ObjectError;
use zdn_protocol::Hash;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store at {0} is in use by another zdn process (rocksdb lock held)")]
    InUse(PathBuf),
    #[error("storage engine: {0}")]
    Engine(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0:?} is not a hash, a unique hash prefix (8+ hex digits) or the name of an object in the store")]
    Unresolved(String),
    #[error("no object {0} in the store")]
    NotFound(Hash),
    #[error("object {hash}: chunk {chunk} is missing from the store")]
    MissingChunk { hash: Hash, chunk: Hash },
    #[error("store entry {key} is corrupt: {problem}")]
    Corrupt { key: String, problem: String },
    #[error("object is {len} bytes, over the store's limit of {limit} bytes")]
    TooLarge { len: u64, limit: u64 },
    #[error(transparent)]
    Object(#[from] ObjectError),
    #[error("manifest: {0}")]
    Manifest(#[from] ManifestError),
    #[error("not a valid model folder: {0}")]
    Folder(#[from] FolderError),
    #[error(
        "a folder is added as a base model (no --base) or as a folder delta (with --base; made by `zdn delta encode --base DIR --finetuned DIR`); a soup is a single file"
    )]
    FolderKind,
    #[error("{0} is a model folder: a delta against a folder is a folder delta, made by `zdn delta encode --base DIR --finetuned DIR -o OUT_DIR` and added with `zdn add OUT_DIR --base HASH`")]
    FolderBase(Hash),
    #[error("a soup of the model folder {0} is mixed exactly: its recipe must have the default quantization (1 bit, row scales)")]
    SoupQuantization(Hash),
    #[error("not a valid LoRA adapter: {0}")]
    Adapter(#[from] zdn_protocol::folder::adapter::AdapterError),
    #[error("not a valid folder delta: {0}")]
    FolderDelta(#[from] zdn_protocol::folder::delta::FolderDeltaError),
    #[error("{object} is a single-file object, not a folder: it has no file {path:?}")]
    NotAFolder { object: Hash, path: String },
    #[error("folder {object} has no file {path:?}")]
    NoSuchFile { object: Hash, path: String },
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    #[error("publisher {0} is not trusted (add it to trusted_publishers in the config)")]
    Untrusted(String),
    #[error("the base {0} is not in the store: add or import the base first")]
    MissingBase(Hash),
    #[error("the .bitdelta was made against base object {recorded}, but manifest {base} describes object {actual}")]
    WrongBase {
        base: Hash,
        recorded: Hash,
        actual: Hash,
    },
    #[error("the soup recipe names base {recorded}, but the object is being added with base {}", given.map_or_else(|| "(none)".to_string(), |g| g.to_string()))]
    SoupBase { recorded: Hash, given: Option<Hash> },
    #[error("soup component {component} {problem}")]
    SoupComponent { component: Hash, problem: String },
    #[error("{0} is a {1} object, not a soup recipe")]
    NotASoup(Hash, &'static str),
    #[error("{0} is a {1} manifest where a base was expected")]
    NotABase(Hash, &'static str),
    #[error("object hash mismatch for {hash}: manifest says {expected}, chunks give {actual}")]
    ObjectHash {
        hash: Hash,
        expected: Hash,
        actual: Hash,
    },
    #[error("the store's worker thread has stopped")]
    WorkerGone,
}

impl StoreError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io {
            what: what.into(),
            source,
        }
    }
}
