//! Large objects through the store thread in bounded jobs. Reading, verifying and committing a
//! 7B–70B object touches thousands of chunks; done as one job on the single store thread, every
//! peer's chunk request would wait for it (seconds at 7B, minutes at 70B). Here each job reads at
//! most [`BATCH_BYTES`] of chunks or checks at most [`BATCH_IDS`] chunk ids, and the decoding and
//! hashing happen on the calling thread, so other requests are served between the jobs.
//!
//! The `_blocking` functions wait for each job: call them from a plain thread or from
//! `tokio::task::spawn_blocking`, never from an async task.

use std::io::Write;

use zdn_protocol::chunk::{self, ChunkRef};
use zdn_protocol::manifest::SignedManifest;
use zdn_protocol::Hash;

use super::backend::Column;
use super::{StoreError, StoreHandle};

/// Most chunk bytes (declared, uncompressed) read by one job: about 16 ms of disk at 1 GB/s.
pub const BATCH_BYTES: u64 = 16 << 20;
/// Most chunk ids checked by one job (key-only lookups, a few µs each).
pub const BATCH_IDS: usize = 4096;

/// What [`StoreHandle::for_each_chunk_blocking`] calls with each chunk's decoded bytes.
pub type ChunkSink<'a> = dyn FnMut(&ChunkRef, Vec<u8>) -> Result<(), StoreError> + 'a;

/// Splits `chunks` into runs of at most [`BATCH_BYTES`] declared bytes (at least one chunk each).
pub(super) fn batches(chunks: &[ChunkRef]) -> impl Iterator<Item = &[ChunkRef]> {
    let mut rest = chunks;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0u64;
        let mut n = 0;
        while n < rest.len() && (n == 0 || bytes + u64::from(rest[n].len) <= BATCH_BYTES) {
            bytes += u64::from(rest[n].len);
            n += 1;
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Some(head)
    })
}

impl StoreHandle {
    /// Reads `chunks` of object `object` in bounded jobs and passes each chunk's decoded bytes, in
    /// order, to `each`. Every chunk is checked against its id before it is decoded (on this
    /// thread), and decoding never inflates past the declared length.
    pub fn for_each_chunk_blocking(
        &self,
        object: Hash,
        chunks: &[ChunkRef],
        each: &mut ChunkSink<'_>,
    ) -> Result<(), StoreError> {
        for batch in batches(chunks) {
            let ids: Vec<Hash> = batch.iter().map(|c| c.id).collect();
            let stored = self.call_blocking(move |s| {
                ids.iter()
                    .map(|id| s.backend().get(Column::Chunks, id.as_bytes()))
                    .collect::<Result<Vec<_>, _>>()
            })?;
            for (r, bytes) in batch.iter().zip(stored) {
                let bytes = bytes.ok_or(StoreError::MissingChunk {
                    hash: object,
                    chunk: r.id,
                })?;
                each(r, chunk::decode(&bytes, r)?)?;
            }
        }
        Ok(())
    }

    /// Writes the object of `m` to `out` in bounded jobs, checking every chunk and then the
    /// whole-object hash. On a mismatch the error comes after some bytes were written: callers
    /// write to a temporary file or folder and rename.
    pub fn read_object_blocking(
        &self,
        m: &SignedManifest,
        out: &mut dyn Write,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), StoreError> {
        let object = m.hash();
        let mut hasher = blake3::Hasher::new();
        self.for_each_chunk_blocking(object, &m.manifest.chunks, &mut |r, data| {
            hasher.update(&data);
            out.write_all(&data)
                .map_err(|e| StoreError::io("writing the object", e))?;
            progress(u64::from(r.len));
            Ok(())
        })?;
        out.flush()
            .map_err(|e| StoreError::io("writing the object", e))?;
        let actual = Hash::from(hasher.finalize());
        if actual != m.manifest.object_hash {
            return Err(StoreError::ObjectHash {
                hash: object,
                expected: m.manifest.object_hash,
                actual,
            });
        }
        Ok(())
    }

    /// Checks every chunk of `m` and the whole-object hash, in bounded jobs.
    pub fn verify_object_blocking(&self, m: &SignedManifest) -> Result<(), StoreError> {
        self.read_object_blocking(m, &mut std::io::sink(), &mut |_| {})
    }

    /// Makes `m` visible like [`super::ObjectStore::commit`], in bounded jobs: the presence of its
    /// chunks in runs of [`BATCH_IDS`] ids, then a flush of the chunks written so far, then the
    /// synced manifest batch (which flushes only what was written since).
    pub fn commit_blocking(&self, m: &SignedManifest, pin: bool) -> Result<(), StoreError> {
        let object = m.hash();
        for ids in m.manifest.chunks.chunks(BATCH_IDS) {
            let ids = ids.to_vec();
            self.call_blocking(move |s| s.check_chunks_present(&object, &ids))?;
        }
        self.call_blocking(|s| s.flush_chunks())?;
        let m = m.clone();
        self.call_blocking(move |s| s.write_manifests(std::slice::from_ref(&m), pin))
    }

    /// Which of `ids` the store holds, checked in jobs of at most [`BATCH_IDS`] key-only lookups.
    pub async fn present_chunks(&self, ids: &[Hash]) -> Result<Vec<bool>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for part in ids.chunks(BATCH_IDS) {
            let part = part.to_vec();
            out.extend(
                self.call(move |s| {
                    part.iter()
                        .map(|id| s.has_chunk(id))
                        .collect::<Result<Vec<_>, _>>()
                })
                .await?,
            );
        }
        Ok(out)
    }

    /// A downloaded object's last step: verify every chunk and the whole-object hash, then commit
    /// it, all in bounded jobs, on a blocking thread of the runtime.
    pub async fn verify_and_commit(&self, m: SignedManifest, pin: bool) -> Result<(), StoreError> {
        let handle = self.clone();
        tokio::task::spawn_blocking(move || {
            handle.verify_object_blocking(&m)?;
            handle.commit_blocking(&m, pin)
        })
        .await
        .map_err(|_| StoreError::WorkerGone)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zdn_protocol::chunk::Codec;

    fn c(len: u32) -> ChunkRef {
        ChunkRef {
            id: Hash::ZERO,
            offset: 0,
            len,
            codec: Codec::Raw,
        }
    }

    #[test]
    fn batches_are_bounded_and_cover_everything() {
        let mb = 1 << 20;
        let chunks: Vec<ChunkRef> = [mb, mb, 16 * mb, 3, 15 * mb, mb, mb]
            .into_iter()
            .map(c)
            .collect();
        let got: Vec<usize> = batches(&chunks).map(<[ChunkRef]>::len).collect();
        assert_eq!(got, [2, 1, 2, 2]);
        assert_eq!(batches(&[]).count(), 0);
        for b in batches(&chunks) {
            let bytes: u64 = b.iter().map(|c| u64::from(c.len)).sum();
            assert!(b.len() == 1 || bytes <= BATCH_BYTES);
        }
    }
}
