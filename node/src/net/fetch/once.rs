//! [`OneAtATime`]: at most one fetch of an object at a time in a node. A second fetch of the same
//! object (an announcement replayed while the first auto-fetch runs, a user's `zdn fetch` of what
//! auto-fetch is bringing) waits for the first and then finds the object in the store, instead of
//! asking the same peers for the same chunks a second time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};
use zdn_protocol::Hash;

/// Entries kept before those no fetch holds are dropped.
const PURGE_AT: usize = 1024;

#[derive(Debug, Default)]
pub(crate) struct OneAtATime {
    locks: Mutex<HashMap<Hash, Weak<AsyncMutex<()>>>>,
}

impl OneAtATime {
    /// Waits until no other fetch of `hash` runs; the fetch holds the guard while it runs.
    pub async fn enter(&self, hash: Hash) -> OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            if map.len() >= PURGE_AT {
                map.retain(|_, w| w.strong_count() > 0);
            }
            match map.get(&hash).and_then(Weak::upgrade) {
                Some(l) => l,
                None => {
                    let l = Arc::new(AsyncMutex::new(()));
                    map.insert(hash, Arc::downgrade(&l));
                    l
                }
            }
        };
        lock.lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_second_fetch_of_one_object_waits_for_the_first() {
        let o = Arc::new(OneAtATime::default());
        let h = Hash::of(b"x");
        let first = o.enter(h).await;
        let o2 = o.clone();
        let second = tokio::spawn(async move { o2.enter(h).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second.is_finished());
        let _other = o.enter(Hash::of(b"y")).await;
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .unwrap()
            .unwrap();
    }
}
