//! An in-memory [`Backend`] for tests: same semantics as rocksdb (atomic batches, ordered scans),
//! nothing on disk.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use super::backend::{Backend, Column, Write};
use super::StoreError;

type Tables = BTreeMap<Column, BTreeMap<Vec<u8>, Vec<u8>>>;

#[derive(Debug, Default)]
pub struct MemoryBackend {
    tables: Mutex<Tables>,
}

impl MemoryBackend {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        // A panic while holding the lock cannot leave a half-applied batch (batches are applied
        // after all allocation), so a poisoned lock is still consistent.
        self.tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Backend for MemoryBackend {
    fn get(&self, column: Column, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().get(&column).and_then(|t| t.get(key)).cloned())
    }

    fn contains(&self, column: Column, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self
            .lock()
            .get(&column)
            .is_some_and(|t| t.contains_key(key)))
    }

    fn write(&self, batch: Vec<Write>, _durable: bool) -> Result<(), StoreError> {
        let mut tables = self.lock();
        for w in batch {
            let t = tables.entry(w.column).or_default();
            match w.value {
                Some(v) => {
                    t.insert(w.key, v);
                }
                None => {
                    t.remove(&w.key);
                }
            }
        }
        Ok(())
    }

    fn flush(&self, _column: Column) -> Result<(), StoreError> {
        Ok(())
    }

    fn scan(
        &self,
        column: Column,
        prefix: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        // Copy out first so `f` may call back into the store.
        let items: Vec<(Vec<u8>, Vec<u8>)> = match self.lock().get(&column) {
            Some(t) => t
                .range(prefix.to_vec()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            None => Vec::new(),
        };
        for (k, v) in items {
            if !f(&k, &v) {
                break;
            }
        }
        Ok(())
    }
}
