//! An object's distinct chunks (the unit a fetch transfers), and a peer's have-bitmap over
//! manifest positions turned into holdings over them.

use std::collections::HashMap;

use zdn_protocol::chunk::ChunkRef;
use zdn_protocol::manifest::SignedManifest;
use zdn_protocol::sync::Holdings;
use zdn_protocol::wire::ChunkBitmap;
use zdn_protocol::Hash;

/// The distinct chunks of a manifest (an object may repeat a chunk), in first-seen order, and
/// for each manifest position the index of its distinct chunk.
pub(crate) fn distinct_chunks(m: &SignedManifest) -> (Vec<ChunkRef>, Vec<u32>) {
    let mut index: HashMap<Hash, u32> = HashMap::new();
    let mut distinct = Vec::new();
    let mut positions = Vec::with_capacity(m.manifest.chunks.len());
    for r in &m.manifest.chunks {
        let i = *index.entry(r.id).or_insert_with(|| {
            distinct.push(r.clone());
            (distinct.len() - 1) as u32
        });
        positions.push(i);
    }
    (distinct, positions)
}

/// A peer's have-bitmap over manifest positions, as holdings over distinct chunks.
pub(crate) fn holdings(held: &ChunkBitmap, positions: &[u32], distinct: usize) -> Option<Holdings> {
    if held.len() as usize != positions.len() {
        return None;
    }
    if held.count() == held.len() {
        return Some(Holdings::All);
    }
    let mut b = ChunkBitmap::new(distinct as u32);
    for (pos, &d) in positions.iter().enumerate() {
        if held.get(pos as u32) {
            b.set(d);
        }
    }
    Some(Holdings::Some(b))
}
