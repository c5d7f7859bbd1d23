//! The on-disk [`Backend`]: rocksdb with one column family per [`Column`]. Chunk values go to blob
//! files (they are large and already compressed, so rocksdb compresses nothing). One process opens a
//! store at a time: rocksdb's lock file refuses a second opener, which we report as "store in use".

use std::path::{Path, PathBuf};

use rocksdb::{
    BlockBasedOptions, ColumnFamilyDescriptor, DBCompressionType, Direction, FlushOptions,
    IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions, DB,
};

use super::backend::{Backend, Column, Write};
use super::StoreError;

#[derive(Debug)]
pub struct RocksBackend {
    db: DB,
    path: PathBuf,
}

fn column_options(column: Column) -> Options {
    let mut o = Options::default();
    o.set_compression_type(DBCompressionType::None);
    if column == Column::Chunks {
        o.set_enable_blob_files(true);
        o.set_min_blob_size(4096);
        o.set_blob_compression_type(DBCompressionType::None);
        o.set_enable_blob_gc(true);
    }
    if column == Column::ChunkIndex {
        // Existence checks of chunks that are not there (every new chunk of an add or a fetch)
        // mostly stop at a bloom filter.
        let mut t = BlockBasedOptions::default();
        t.set_bloom_filter(10.0, false);
        o.set_block_based_table_factory(&t);
    }
    o
}

impl RocksBackend {
    /// Opens (creating when missing) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(path).map_err(|e| StoreError::Io {
            what: format!("creating store directory {}", path.display()),
            source: e,
        })?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(DBCompressionType::None);
        // Several small stores live on one machine in tests; keep file handles bounded.
        opts.set_max_open_files(256);
        // Chunk bytes and their index entries are written together without the write-ahead log;
        // flushing all column families atomically keeps a crash from leaving one without the other.
        opts.set_atomic_flush(true);
        let cfs = Column::ALL
            .iter()
            .map(|&c| ColumnFamilyDescriptor::new(c.name(), column_options(c)));
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|e| open_error(path, e))?;
        Ok(RocksBackend {
            db,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn batch(&self, writes: Vec<Write>) -> Result<WriteBatch, StoreError> {
        let mut b = WriteBatch::default();
        for w in writes {
            let cf = self.cf(w.column)?;
            match w.value {
                Some(v) => b.put_cf(cf, w.key, v),
                None => b.delete_cf(cf, w.key),
            }
        }
        Ok(b)
    }

    fn cf(&self, column: Column) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db
            .cf_handle(column.name())
            .ok_or_else(|| StoreError::Engine(format!("column family {} missing", column.name())))
    }
}

fn open_error(path: &Path, e: rocksdb::Error) -> StoreError {
    let msg = e.into_string();
    if msg.contains("lock") && (msg.contains("LOCK") || msg.contains("Resource temporarily")) {
        StoreError::InUse(path.to_path_buf())
    } else {
        StoreError::Engine(format!("opening {}: {msg}", path.display()))
    }
}

/// Reads skip rocksdb's own block checksums: every value zdn stores is checked by BLAKE3 above this
/// layer, and a flipped bit then surfaces as "chunk X is corrupt" (which `verify` reports and a peer
/// can refetch) instead of an opaque engine error.
fn read_options() -> ReadOptions {
    let mut o = ReadOptions::default();
    o.set_verify_checksums(false);
    o
}

fn engine(e: rocksdb::Error) -> StoreError {
    StoreError::Engine(e.into_string())
}

impl Backend for RocksBackend {
    fn get(&self, column: Column, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .get_cf_opt(self.cf(column)?, key, &read_options())
            .map_err(engine)
    }

    fn contains(&self, column: Column, key: &[u8]) -> Result<bool, StoreError> {
        let cf = self.cf(column)?;
        if !self.db.key_may_exist_cf(cf, key) {
            return Ok(false);
        }
        Ok(self
            .db
            .get_pinned_cf_opt(cf, key, &read_options())
            .map_err(engine)?
            .is_some())
    }

    fn write(&self, batch: Vec<Write>, durable: bool) -> Result<(), StoreError> {
        let b = self.batch(batch)?;
        let mut o = WriteOptions::default();
        if durable {
            // A synced write fsyncs the write-ahead log, and with it every earlier logged write.
            o.set_sync(true);
        } else {
            // Bulk chunk bytes skip the log (no second copy, no log checksums); `flush` makes
            // them durable before anything that references them is committed.
            o.disable_wal(true);
        }
        self.db.write_opt(b, &o).map_err(engine)
    }

    fn write_logged(&self, batch: Vec<Write>) -> Result<(), StoreError> {
        let b = self.batch(batch)?;
        // Logged but not synced: the write-ahead log reaches the OS before this returns, so a
        // killed process loses nothing; a power cut may lose the tail, which is refetched.
        self.db
            .write_opt(b, &WriteOptions::default())
            .map_err(engine)
    }

    fn flush(&self, column: Column) -> Result<(), StoreError> {
        match column {
            // A chunk and its index entry are one pair: flushed together, atomically.
            Column::Chunks | Column::ChunkIndex => self
                .db
                .flush_cfs_opt(
                    &[self.cf(Column::Chunks)?, self.cf(Column::ChunkIndex)?],
                    &FlushOptions::default(),
                )
                .map_err(engine),
            _ => self.db.flush_cf(self.cf(column)?).map_err(engine),
        }
    }

    fn scan(
        &self,
        column: Column,
        prefix: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let cf = self.cf(column)?;
        let iter = self.db.iterator_cf_opt(
            cf,
            read_options(),
            IteratorMode::From(prefix, Direction::Forward),
        );
        for item in iter {
            let (k, v) = item.map_err(engine)?;
            if !k.starts_with(prefix) || !f(&k, &v) {
                break;
            }
        }
        Ok(())
    }
}
