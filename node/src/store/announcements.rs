//! Signed announcements ([`Announcement`]): what gossip carries for a manifest too big to travel
//! itself, signed by the manifest's publisher. Only the publisher can make one, so a node keeps
//! those it has — made by `add` with the publisher's key, or received by gossip and checked — to
//! announce the object again later. Kept in [`Column::Refs`] under `announce/<manifest hash>`,
//! removed with their manifest by `gc`.

use zdn_protocol::manifest::SignedManifest;
use zdn_protocol::wire::Announcement;
use zdn_protocol::Hash;

use super::{Column, ObjectStore, StoreError, Write};

pub(crate) const ANNOUNCE_PREFIX: &[u8] = b"announce/";

pub(crate) fn announce_key(h: &Hash) -> Vec<u8> {
    [ANNOUNCE_PREFIX, h.to_hex().as_bytes()].concat()
}

fn bad(a: &Announcement, problem: String) -> StoreError {
    StoreError::Corrupt {
        key: format!("announcement of {}", a.manifest),
        problem,
    }
}

impl ObjectStore {
    /// Keeps `a`, which must verify and announce a manifest this store holds.
    pub fn put_announcement(&self, a: &Announcement) -> Result<(), StoreError> {
        let m = self
            .manifest(&a.manifest)?
            .ok_or_else(|| bad(a, "the store lacks its manifest".into()))?;
        self.put_announcement_of(a, &m)
    }

    /// Keeps `a`, which must verify and announce `m` (a manifest this store holds).
    pub(crate) fn put_announcement_of(
        &self,
        a: &Announcement,
        m: &SignedManifest,
    ) -> Result<(), StoreError> {
        a.verify().map_err(|e| bad(a, e.to_string()))?;
        if !a.announces(m) {
            return Err(bad(
                a,
                "it names another publisher than its manifest".into(),
            ));
        }
        let bytes = a.encode().map_err(|e| bad(a, e.to_string()))?;
        self.backend().write(
            vec![Write::put(Column::Refs, announce_key(&a.manifest), bytes)],
            true,
        )
    }

    /// The signed announcement of manifest `hash`, if this store has one.
    pub fn announcement(&self, hash: &Hash) -> Result<Option<Announcement>, StoreError> {
        let Some(v) = self.backend().get(Column::Refs, &announce_key(hash))? else {
            return Ok(None);
        };
        Announcement::decode(&v)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                key: format!("announcement of {hash}"),
                problem: e.to_string(),
            })
    }
}
