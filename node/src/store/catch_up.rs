//! When this node last caught up from each peer ([`crate::net::catchup`]): kept in
//! [`Column::Refs`] under `caught-up/<the peer's id, hex>` (8 bytes, big-endian unix seconds), so a
//! node that restarts asks each peer only for what was announced since (less the clock skew), not
//! for everything again. At most [`MAX_MARKS`] peers: past that the oldest half is forgotten (those
//! peers are asked for everything next time).

use super::{Column, ObjectStore, StoreError, Write};

const PREFIX: &[u8] = b"caught-up/";
/// Peers whose last catch-up is kept.
pub const MAX_MARKS: usize = 4096;
/// A peer id's bytes (a multihash) are at most this long; longer ones are not kept.
const MAX_PEER_LEN: usize = 64;

fn key(peer: &[u8]) -> Vec<u8> {
    let mut k = PREFIX.to_vec();
    for b in peer {
        k.extend_from_slice(format!("{b:02x}").as_bytes());
    }
    k
}

impl ObjectStore {
    /// Unix seconds of the start of the last catch-up `peer` (its id's bytes) answered.
    pub fn caught_up_at(&self, peer: &[u8]) -> Result<Option<u64>, StoreError> {
        let Some(v) = self.backend().get(Column::Refs, &key(peer))? else {
            return Ok(None);
        };
        // A value of another length (written by something else) reads as none: ask for all.
        Ok(<[u8; 8]>::try_from(v.as_slice())
            .ok()
            .map(u64::from_be_bytes))
    }

    /// Notes that `peer` answered a catch-up started at `at` (unix seconds); forgets the oldest
    /// half of the peers when more than `MAX_MARKS` (4096) are kept.
    pub fn set_caught_up_at(&self, peer: &[u8], at: u64) -> Result<(), StoreError> {
        if peer.len() > MAX_PEER_LEN {
            return Ok(());
        }
        let this = key(peer);
        let mut marks: Vec<(u64, Vec<u8>)> = Vec::new();
        self.backend().scan(Column::Refs, PREFIX, &mut |k, v| {
            if k != this.as_slice() {
                let t = <[u8; 8]>::try_from(v).map_or(0, u64::from_be_bytes);
                marks.push((t, k.to_vec()));
            }
            true
        })?;
        let mut writes = vec![Write::put(Column::Refs, this, at.to_be_bytes().to_vec())];
        if marks.len() >= MAX_MARKS {
            marks.sort_unstable();
            let forget = marks.len() - MAX_MARKS / 2;
            writes.extend(
                marks
                    .into_iter()
                    .take(forget)
                    .map(|(_, k)| Write::delete(Column::Refs, k)),
            );
        }
        self.backend().write(writes, false)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn store() -> ObjectStore {
        ObjectStore::in_memory()
    }

    #[test]
    fn a_mark_is_kept_per_peer_and_replaced() {
        let s = store();
        assert_eq!(s.caught_up_at(b"peer-a").unwrap(), None);
        s.set_caught_up_at(b"peer-a", 100).unwrap();
        s.set_caught_up_at(b"peer-b", 200).unwrap();
        s.set_caught_up_at(b"peer-a", 300).unwrap();
        assert_eq!(s.caught_up_at(b"peer-a").unwrap(), Some(300));
        assert_eq!(s.caught_up_at(b"peer-b").unwrap(), Some(200));
        // Too long to be a peer id: not kept.
        s.set_caught_up_at(&[7u8; 65], 1).unwrap();
        assert_eq!(s.caught_up_at(&[7u8; 65]).unwrap(), None);
    }

    #[test]
    fn past_the_cap_the_oldest_half_is_forgotten() {
        let s = store();
        for i in 0..MAX_MARKS as u64 {
            s.set_caught_up_at(&i.to_be_bytes(), 1_000 + i).unwrap();
        }
        assert_eq!(s.caught_up_at(&0u64.to_be_bytes()).unwrap(), Some(1_000));
        // One more: the oldest half goes, the newest and the new one stay.
        s.set_caught_up_at(b"new", 5_000).unwrap();
        let mut n = 0;
        s.backend()
            .scan(Column::Refs, PREFIX, &mut |_, _| {
                n += 1;
                true
            })
            .unwrap();
        assert_eq!(n, MAX_MARKS / 2 + 1);
        assert_eq!(s.caught_up_at(&0u64.to_be_bytes()).unwrap(), None);
        let last = (MAX_MARKS as u64 - 1).to_be_bytes();
        assert_eq!(
            s.caught_up_at(&last).unwrap(),
            Some(1_000 + MAX_MARKS as u64 - 1)
        );
        assert_eq!(s.caught_up_at(b"new").unwrap(), Some(5_000));
    }
}
