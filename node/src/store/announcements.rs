//! Signed announcements ([`Announcement`]): what gossip carries for a manifest too big to travel
//! itself, signed by the manifest's publisher. Only the publisher can make one, so a node keeps
//! those it has — made by `add` with the publisher's key, or received by gossip and checked — to
//! announce the object again later. Kept in [`Column::Refs`] under `announce/<manifest hash>`,
//! with an entry `recent/<created_at, 16 hex digits>/<manifest hash>` that lists them by the
//! manifest's time (what a peer that was away asks for: [`ObjectStore::recent_announcements`]);
//! both removed with their manifest by `gc`.

use zdn_protocol::manifest::SignedManifest;
use zdn_protocol::wire::Announcement;
use zdn_protocol::Hash;

use super::{Column, ObjectStore, StoreError, Write};

pub(crate) const ANNOUNCE_PREFIX: &[u8] = b"announce/";

pub(crate) fn announce_key(h: &Hash) -> Vec<u8> {
    [ANNOUNCE_PREFIX, h.to_hex().as_bytes()].concat()
}

pub(crate) const RECENT_PREFIX: &[u8] = b"recent/";

fn recent_key(created_at: u64, h: &Hash) -> Vec<u8> {
    [
        RECENT_PREFIX,
        format!("{created_at:016x}/").as_bytes(),
        h.to_hex().as_bytes(),
    ]
    .concat()
}

/// (created_at, manifest hash) of a `recent/` key; `None` for a malformed one.
pub(crate) fn parse_recent_key(k: &[u8]) -> Option<(u64, Hash)> {
    let rest = std::str::from_utf8(k.strip_prefix(RECENT_PREFIX)?).ok()?;
    let (t, h) = rest.split_once('/')?;
    Some((u64::from_str_radix(t, 16).ok()?, h.parse().ok()?))
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
            vec![
                Write::put(Column::Refs, announce_key(&a.manifest), bytes),
                Write::put(
                    Column::Refs,
                    recent_key(m.manifest.created_at, &a.manifest),
                    Vec::new(),
                ),
            ],
            true,
        )
    }

    /// The signed announcements of manifests made at or after `since` (their `created_at`),
    /// newest first, at most `max`. Reads the `recent/` keys (no manifest is decoded) and the
    /// announcements it returns.
    pub fn recent_announcements(
        &self,
        since: u64,
        max: usize,
    ) -> Result<Vec<Announcement>, StoreError> {
        let mut found = Vec::new();
        self.backend()
            .scan(Column::Refs, RECENT_PREFIX, &mut |k, _| {
                if let Some((t, h)) = parse_recent_key(k).filter(|(t, _)| *t >= since) {
                    found.push((t, h));
                }
                true
            })?;
        found.sort_unstable_by(|a, b| b.cmp(a));
        let mut out = Vec::new();
        for (_, h) in found {
            if out.len() >= max {
                break;
            }
            if let Some(a) = self.announcement(&h)? {
                out.push(a);
            }
        }
        Ok(out)
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
