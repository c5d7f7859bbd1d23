//! The key-value layer under [`super::ObjectStore`]: four column families, atomic batches, prefix
//! scans. Two implementations: [`super::RocksBackend`] (the real one, on disk) and
//! [`super::MemoryBackend`] (a test double with the same semantics).

use super::StoreError;

/// The column families of the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Column {
    /// Chunk id (32 bytes) → stored chunk bytes.
    Chunks,
    /// Manifest hash (32 bytes) → canonical signed manifest bytes.
    Manifests,
    /// `pin/<hash>` → empty; `name/<name>` → manifest hash.
    Refs,
    /// Manifest hash → download state (the manifest bytes of an object being fetched).
    Partial,
    /// Chunk id (32 bytes) → empty: which chunks [`Column::Chunks`] holds, so that an existence
    /// check reads no chunk bytes (rocksdb resolves a blob value on every `get`). Written in the same
    /// batch as the chunk; the key `INDEX_COMPLETE` marks a store whose index is complete.
    ChunkIndex,
}

impl Column {
    pub const ALL: [Column; 5] = [
        Column::Chunks,
        Column::Manifests,
        Column::Refs,
        Column::Partial,
        Column::ChunkIndex,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Column::Chunks => "chunks",
            Column::Manifests => "manifests",
            Column::Refs => "refs",
            Column::Partial => "partial",
            Column::ChunkIndex => "chunk_index",
        }
    }
}

/// One write of a batch: `Some` puts, `None` deletes.
#[derive(Debug, Clone)]
pub struct Write {
    pub column: Column,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

impl Write {
    pub fn put(column: Column, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Write {
            column,
            key: key.into(),
            value: Some(value.into()),
        }
    }

    pub fn delete(column: Column, key: impl Into<Vec<u8>>) -> Self {
        Write {
            column,
            key: key.into(),
            value: None,
        }
    }
}

/// What a storage engine must do for the store. All writes of one `write` call become visible
/// together or not at all. A `durable` write survives a crash once the call returns; a non-durable
/// one may be lost in a crash until [`Backend::flush`] of its column returns (rocksdb writes it
/// without the write-ahead log: chunk bytes are then written once, not twice).
pub trait Backend: Send + Sync + 'static {
    fn get(&self, column: Column, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Whether `key` is in `column`. Reads the value unless the engine can avoid it: key-only
    /// columns ([`Column::ChunkIndex`]) are what existence checks use.
    fn contains(&self, column: Column, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self.get(column, key)?.is_some())
    }

    fn write(&self, batch: Vec<Write>, durable: bool) -> Result<(), StoreError>;

    /// Writes a batch that must survive the process being killed (not necessarily a power cut):
    /// chunks of a network download, so a restarted fetch does not download them again. The
    /// default is a fully durable write.
    fn write_logged(&self, batch: Vec<Write>) -> Result<(), StoreError> {
        self.write(batch, true)
    }

    /// Makes every earlier write to `column` durable. [`Column::Chunks`] and
    /// [`Column::ChunkIndex`] are flushed together: a flush of either makes both durable.
    fn flush(&self, column: Column) -> Result<(), StoreError>;

    /// Calls `f(key, value)` for every key starting with `prefix`, in key order, until it returns
    /// `false`.
    fn scan(
        &self,
        column: Column,
        prefix: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError>;
}
