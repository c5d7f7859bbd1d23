//! [`PartialChunks`]: what the paced lane received of chunks not yet complete, kept on disk beside
//! the store (`<store>/lane-partial/`), so an outage, a restart of either side or a kill -9 costs
//! only the packets that never arrived: the next request names the byte ranges held and the
//! sender skips them (`zdn_protocol::paced::HeldChunk`). A chunk is verified (BLAKE3 against the
//! signed manifest) when complete, as always; one that fails is dropped here and asked for whole.
//!
//! Per chunk id two files: `<id>.part` (the chunk's stored length; bytes only inside the held
//! ranges mean anything) and `<id>.held`:
//!
//! ```text
//! magic "zdnheld1" | stored_len u32 | n u32 | n × (start u32 | len u32) | BLAKE3(all before)[..16]
//! ```
//!
//! The bytes are written (and synced) before the `.held` file that claims them, which is replaced
//! whole (written aside, then renamed): a crash leaves a claim only for bytes on disk. Every file
//! is read as hostile input (lengths, ranges and checksum checked; anything wrong is deleted).
//! At most [`MAX_CHUNKS`] chunks and [`MAX_BYTES`] are kept: the oldest go first.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use zdn_protocol::paced::{ByteRanges, MAX_HELD_CHUNKS, MAX_HELD_RANGES};
use zdn_protocol::wire::MAX_STORED_CHUNK;
use zdn_protocol::Hash;

const MAGIC: &[u8; 8] = b"zdnheld1";
const CHECK: usize = 16;
/// Chunks kept at once, and their bytes in all.
pub const MAX_CHUNKS: usize = MAX_HELD_CHUNKS;
pub const MAX_BYTES: u64 = 256 << 20;

/// The sidecar directory of partly received chunks.
#[derive(Debug, Clone)]
pub struct PartialChunks {
    dir: PathBuf,
}

/// What is held of one chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub stored_len: u32,
    pub ranges: ByteRanges,
}

fn hex(id: &Hash) -> String {
    id.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

impl PartialChunks {
    /// The directory `dir` (created when missing).
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(PartialChunks {
            dir: dir.to_path_buf(),
        })
    }

    fn part(&self, id: &Hash) -> PathBuf {
        self.dir.join(format!("{}.part", hex(id)))
    }

    fn held_path(&self, id: &Hash) -> PathBuf {
        self.dir.join(format!("{}.held", hex(id)))
    }

    /// What is held of chunk `id`, if anything valid is.
    pub fn held(&self, id: &Hash) -> Option<Held> {
        let mut b = Vec::new();
        let f = File::open(self.held_path(id)).ok()?;
        // A .held file is small: more than the most ranges allowed is not one of ours.
        let max = MAGIC.len() + 8 + 8 * MAX_HELD_RANGES + CHECK;
        if f.take(max as u64 + 1).read_to_end(&mut b).is_err() || b.len() > max {
            self.remove(id);
            return None;
        }
        match decode(&b) {
            Some(h)
                if std::fs::symlink_metadata(self.part(id))
                    .is_ok_and(|m| m.is_file() && m.len() == u64::from(h.stored_len)) =>
            {
                Some(h)
            }
            _ => {
                self.remove(id);
                None
            }
        }
    }

    /// The held bytes of chunk `id` (its stored length), if they are still there.
    pub fn load(&self, id: &Hash, stored_len: u32) -> Option<Vec<u8>> {
        let part = self.part(id);
        if !std::fs::symlink_metadata(&part).ok()?.is_file() {
            return None;
        }
        let f = File::open(part).ok()?;
        if f.metadata().ok()?.len() != u64::from(stored_len) {
            return None;
        }
        let mut b = vec![0u8; stored_len as usize];
        f.read_exact_at(&mut b, 0).ok()?;
        Some(b)
    }

    /// Records `pieces` (offset, bytes) of chunk `id`. The claim written is what is now on disk:
    /// the ranges held before (when a valid claim of the same length was there) and the pieces.
    /// On any failure the chunk's files are removed (its bytes are asked for again).
    pub fn save(
        &self,
        id: &Hash,
        stored_len: u32,
        pieces: &[(u32, Vec<u8>)],
    ) -> std::io::Result<()> {
        if stored_len as usize > MAX_STORED_CHUNK || pieces.is_empty() {
            return Ok(());
        }
        let r = self.write(id, stored_len, pieces);
        if r.is_err() {
            self.remove(id);
        }
        r
    }

    fn write(&self, id: &Hash, stored_len: u32, pieces: &[(u32, Vec<u8>)]) -> std::io::Result<()> {
        let part = self.part(id);
        let mut claim = self
            .held(id)
            .filter(|h| h.stored_len == stored_len)
            .map(|h| h.ranges)
            .unwrap_or_default();
        if claim.is_empty() {
            // Nothing valid before: start the chunk afresh (whatever is at its paths goes).
            self.remove(id);
            self.make_room(u64::from(stored_len));
        }
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&part)?;
        // Only a plain file of ours (not a link placed there) is written to.
        if !std::fs::symlink_metadata(&part)?.is_file() {
            return Err(std::io::Error::other("not a plain file"));
        }
        if f.metadata()?.len() != u64::from(stored_len) {
            f.set_len(u64::from(stored_len))?;
        }
        for (off, bytes) in pieces {
            let end = u64::from(*off) + bytes.len() as u64;
            if end <= u64::from(stored_len) && !bytes.is_empty() {
                f.write_all_at(bytes, u64::from(*off))?;
                claim.insert(*off, end as u32);
            }
        }
        f.sync_data()?;
        claim.truncate(MAX_HELD_RANGES);
        let tmp = self.dir.join(format!("{}.held.tmp", hex(id)));
        let mut t = File::create(&tmp)?;
        t.write_all(&encode(stored_len, &claim))?;
        t.sync_data()?;
        std::fs::rename(&tmp, self.held_path(id))
    }

    /// Forgets chunk `id` (it completed, or failed verification).
    pub fn remove(&self, id: &Hash) {
        let _ = std::fs::remove_file(self.held_path(id));
        let _ = std::fs::remove_file(self.part(id));
    }

    /// The chunks held, by id.
    pub fn ids(&self) -> Vec<Hash> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        rd.filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let hex = name.strip_suffix(".held")?;
            parse_hex(hex)
        })
        .take(4 * MAX_CHUNKS)
        .collect()
    }

    /// Deletes the oldest chunks until one of `bytes` more fits the caps.
    fn make_room(&self, bytes: u64) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut parts: Vec<(std::time::SystemTime, u64, Hash)> = rd
            .filter_map(|e| {
                let e = e.ok()?;
                let name = e.file_name().into_string().ok()?;
                let id = parse_hex(name.strip_suffix(".part")?)?;
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), id))
            })
            .collect();
        parts.sort_by_key(|p| p.0);
        let mut total: u64 = parts.iter().map(|p| p.1).sum();
        let mut count = parts.len();
        for (_, len, id) in parts {
            if count < MAX_CHUNKS && total + bytes <= MAX_BYTES {
                break;
            }
            self.remove(&id);
            count -= 1;
            total -= len;
        }
    }
}

fn parse_hex(s: &str) -> Option<Hash> {
    if s.len() != 64 {
        return None;
    }
    let mut a = [0u8; 32];
    for (i, b) in a.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(Hash::from_bytes(a))
}

fn encode(stored_len: u32, r: &ByteRanges) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + 8 + 8 * r.len() + CHECK);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&stored_len.to_le_bytes());
    out.extend_from_slice(&(r.len() as u32).to_le_bytes());
    for &(s, l) in r.as_slice() {
        out.extend_from_slice(&s.to_le_bytes());
        out.extend_from_slice(&l.to_le_bytes());
    }
    let check = blake3::hash(&out);
    out.extend_from_slice(&check.as_bytes()[..CHECK]);
    out
}

fn decode(b: &[u8]) -> Option<Held> {
    let (body, check) = b.split_at_checked(b.len().checked_sub(CHECK)?)?;
    if blake3::hash(body).as_bytes()[..CHECK] != *check {
        return None;
    }
    let rest = body.strip_prefix(MAGIC)?;
    let word = |i: usize| -> Option<u32> {
        Some(u32::from_le_bytes(rest.get(i..i + 4)?.try_into().ok()?))
    };
    let stored_len = word(0)?;
    let n = word(4)? as usize;
    if stored_len as usize > MAX_STORED_CHUNK || n > MAX_HELD_RANGES || rest.len() != 8 + 8 * n {
        return None;
    }
    let ranges = (0..n)
        .map(|i| Some((word(8 + 8 * i)?, word(12 + 8 * i)?)))
        .collect::<Option<Vec<_>>>()?;
    let ranges = ByteRanges::from_canonical(ranges, stored_len)?;
    Some(Held { stored_len, ranges })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ranges(r: &[(u32, u32)]) -> ByteRanges {
        ByteRanges::from_canonical(r.to_vec(), u32::MAX).unwrap()
    }

    #[test]
    fn saved_ranges_and_bytes_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = PartialChunks::open(dir.path()).unwrap();
        let id = Hash::of(b"chunk");
        p.save(&id, 100, &[(0, vec![7; 10])]).unwrap();
        p.save(&id, 100, &[(50, vec![9; 5])]).unwrap();
        let h = p.held(&id).unwrap();
        assert_eq!(h.stored_len, 100);
        assert_eq!(h.ranges.as_slice(), &[(0, 10), (50, 5)]);
        let b = p.load(&id, 100).unwrap();
        assert_eq!(&b[..10], &[7; 10]);
        assert_eq!(&b[50..55], &[9; 5]);
        assert_eq!(p.ids(), vec![id]);
        p.remove(&id);
        assert!(p.held(&id).is_none());
        assert!(p.ids().is_empty());
    }

    #[test]
    fn damaged_files_are_refused_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let p = PartialChunks::open(dir.path()).unwrap();
        let id = Hash::of(b"x");
        p.save(&id, 100, &[(0, vec![1; 10])]).unwrap();
        // One flipped bit in the .held file: the checksum refuses it, and both files go.
        let held = p.held_path(&id);
        let mut b = std::fs::read(&held).unwrap();
        b[13] ^= 1;
        std::fs::write(&held, &b).unwrap();
        assert!(p.held(&id).is_none());
        assert!(!p.part(&id).exists());
        // A .part file of the wrong length.
        p.save(&id, 100, &[(0, vec![1; 10])]).unwrap();
        std::fs::write(p.part(&id), [0u8; 7]).unwrap();
        assert!(p.held(&id).is_none());
        // Ranges past the stored length, with a valid checksum: refused.
        std::fs::write(p.part(&id), [0u8; 100]).unwrap();
        std::fs::write(&held, encode(100, &ranges(&[(95, 10)]))).unwrap();
        assert!(p.held(&id).is_none());
        // A huge file is not read whole.
        std::fs::write(p.part(&id), [0u8; 100]).unwrap();
        std::fs::write(&held, vec![0u8; 1 << 20]).unwrap();
        assert!(p.held(&id).is_none());
    }

    #[test]
    fn the_oldest_go_when_the_caps_are_reached() {
        let dir = tempfile::tempdir().unwrap();
        let p = PartialChunks::open(dir.path()).unwrap();
        let ids: Vec<Hash> = (0..MAX_CHUNKS as u32 + 3)
            .map(|i| Hash::of(&i.to_le_bytes()))
            .collect();
        for id in &ids {
            p.save(id, 10, &[(0, vec![1])]).unwrap();
        }
        assert_eq!(p.ids().len(), MAX_CHUNKS);
    }

    #[test]
    fn a_claim_covers_only_bytes_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let p = PartialChunks::open(dir.path()).unwrap();
        let id = Hash::of(b"y");
        p.save(&id, 100, &[(0, vec![3; 10])]).unwrap();
        // The files went (damaged, evicted): the next save claims only what it writes.
        p.remove(&id);
        p.save(&id, 100, &[(40, vec![4; 10])]).unwrap();
        assert_eq!(p.held(&id).unwrap().ranges.as_slice(), &[(40, 10)]);
        // A claim of another length is not extended: the chunk starts afresh.
        p.save(&id, 60, &[(0, vec![5; 5])]).unwrap();
        let h = p.held(&id).unwrap();
        assert_eq!((h.stored_len, h.ranges.as_slice()), (60, &[(0, 5)][..]));
        // Pieces past the end are not written nor claimed.
        p.save(&id, 60, &[(58, vec![6; 5])]).unwrap();
        assert_eq!(p.held(&id).unwrap().ranges.as_slice(), &[(0, 5)]);
    }

    #[test]
    fn links_are_neither_read_nor_written() {
        let dir = tempfile::tempdir().unwrap();
        let p = PartialChunks::open(dir.path()).unwrap();
        let id = Hash::of(b"z");
        let outside = dir.path().join("outside");
        std::fs::write(&outside, [9u8; 100]).unwrap();
        std::os::unix::fs::symlink(&outside, p.part(&id)).unwrap();
        std::fs::write(p.held_path(&id), encode(100, &ranges(&[(0, 100)]))).unwrap();
        assert!(p.held(&id).is_none(), "a claim on a link is refused");
        assert!(p.load(&id, 100).is_none());
        std::os::unix::fs::symlink(&outside, p.part(&id)).unwrap();
        // Saving replaces the link with a file of ours; the file it pointed to is untouched.
        p.save(&id, 100, &[(0, vec![1; 10])]).unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), vec![9u8; 100]);
        assert!(std::fs::symlink_metadata(p.part(&id)).unwrap().is_file());
        assert_eq!(p.load(&id, 100).unwrap()[..10], [1; 10]);
    }

    proptest::proptest! {
        /// A claim's bytes decode to the claim; any bytes at all decode to a claim or to nothing,
        /// never to ranges outside the chunk.
        #[test]
        fn claims_round_trip(
            stored_len in 1u32..=MAX_STORED_CHUNK as u32,
            spans in proptest::collection::vec((0u32..1 << 22, 1u32..1 << 16), 0..300),
            junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
        ) {
            let mut r = ByteRanges::new();
            for (s, l) in spans {
                r.insert(s.min(stored_len - 1), s.saturating_add(l).min(stored_len));
            }
            r.truncate(MAX_HELD_RANGES);
            let b = encode(stored_len, &r);
            proptest::prop_assert_eq!(decode(&b), Some(Held { stored_len, ranges: r }));
            if let Some(h) = decode(&junk) {
                proptest::prop_assert!(h.ranges.missing(h.stored_len).bytes() + h.ranges.bytes()
                    == u64::from(h.stored_len));
            }
            let mut cut = b.clone();
            cut.pop();
            proptest::prop_assert_eq!(decode(&cut), None);
        }
    }
}
