//! [`ManifestCache`]: verified manifests the chunk server has read, by hash. Every `GetHave` and
//! `GetManifest` used to decode the manifest and verify its signature again on the store's one
//! thread — a request of 33 bytes for milliseconds of a shared thread. Manifests are immutable (a
//! hash names one), so the decoded, verified one is kept, shared by every response that needs it
//! (a slow reader holds a reference, not a copy). Bounded by [`MAX_COST`] bytes and
//! [`MAX_ENTRIES`] entries, least recently used first out.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use zdn_protocol::manifest::SignedManifest;
use zdn_protocol::Hash;

/// Bytes the cache may account for (a decoded manifest counts as three times its encoding).
pub const MAX_COST: usize = 96 << 20;
/// Manifests kept at most.
pub const MAX_ENTRIES: usize = 1024;

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<Hash, Arc<SignedManifest>>,
    /// Least recently used first.
    order: VecDeque<Hash>,
    cost: usize,
}

#[derive(Debug, Default)]
pub(crate) struct ManifestCache {
    inner: Mutex<Inner>,
}

fn cost(m: &SignedManifest) -> usize {
    m.as_bytes().len().saturating_mul(3)
}

impl ManifestCache {
    pub fn get(&self, hash: &Hash) -> Option<Arc<SignedManifest>> {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let m = c.map.get(hash).cloned()?;
        if let Some(i) = c.order.iter().position(|h| h == hash) {
            c.order.remove(i);
        }
        c.order.push_back(*hash);
        Some(m)
    }

    /// Keeps `m` (a manifest bigger than a quarter of the cache is not kept).
    pub fn insert(&self, m: Arc<SignedManifest>) {
        let size = cost(&m);
        if size > MAX_COST / 4 {
            return;
        }
        let hash = m.hash();
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if c.map.contains_key(&hash) {
            return;
        }
        while c.cost + size > MAX_COST || c.map.len() >= MAX_ENTRIES {
            let Some(old) = c.order.pop_front() else {
                break;
            };
            if let Some(o) = c.map.remove(&old) {
                c.cost -= cost(&o);
            }
        }
        c.cost += size;
        c.order.push_back(hash);
        c.map.insert(hash, m);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().map(|c| c.map.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zdn_protocol::manifest::{Kind, Manifest, PublisherKey};

    fn manifest(i: u32) -> Arc<SignedManifest> {
        let m = Manifest {
            kind: Kind::Base,
            name: format!("m{i}"),
            version: "1".into(),
            created_at: 0,
            base: None,
            object_len: 0,
            object_hash: Hash::of(b""),
            chunks: Vec::new(),
            tensors: Vec::new(),
            extra: Vec::new(),
            files: Vec::new(),
        };
        Arc::new(m.sign(&PublisherKey::from_seed(&[1; 32])).unwrap())
    }

    #[test]
    fn bounded_and_least_recently_used_first_out() {
        let c = ManifestCache::default();
        let first = manifest(0);
        c.insert(first.clone());
        for i in 1..MAX_ENTRIES as u32 {
            c.insert(manifest(i));
        }
        assert!(
            c.get(&first.hash()).is_some(),
            "touched: now the most recent"
        );
        c.insert(manifest(100_000));
        assert_eq!(c.len(), MAX_ENTRIES);
        assert!(
            c.get(&first.hash()).is_some(),
            "the least recently used went instead"
        );
        assert!(c.get(&manifest(1).hash()).is_none());
    }
}
