//! Messages of the chunk protocol (`/zdn/chunk/1`) and of manifest announcements, with their byte
//! encoding. Sans-IO: the node reads a length-prefixed frame (never more than the cap stated here for
//! its direction), then calls `decode`.
//!
//! ```text
//! request  = tag u8 | body
//!   1 GetManifest  hash 32
//!   2 GetChunk     object 32 | chunk id 32
//!   3 GetHave      object 32
//! response = tag u8 | body
//!   1 Manifest     canonical signed manifest bytes (to the end of the frame)
//!   2 Chunk        chunk id 32 | stored chunk bytes (to the end of the frame)
//!   3 Have         object 32 | n_chunks u32 | bitmap ⌈n/8⌉ bytes (bit i of byte i/8 = chunk i held)
//!   4 NotFound     what 32
//!   5 Busy         retry_after_ms u32
//! announcement (gossip) = "ZDNA" | version u8 = 1 | manifest hash 32 | kind u8 | object_len u64
//!                         | base flag u8 [ base 32 ] | publisher 32 | name str16
//! ```
//! Integers little-endian. An announcement is small on purpose (gossip reaches every peer, on
//! satellite links too); a peer that wants the object asks for the manifest and checks its signature
//! and hash before anything else.

use crate::chunk::MAX_CHUNK_SIZE;
use crate::hash::Hash;
use crate::manifest::{Kind, MAX_MANIFEST_LEN};

/// The libp2p protocol name of the chunk protocol.
pub const CHUNK_PROTOCOL: &str = "/zdn/chunk/1";
/// Largest request frame: tag + two hashes.
pub const MAX_REQUEST_LEN: usize = 1 + 64;
/// Largest response frame: a manifest, or a chunk that did not compress, plus its header.
pub const MAX_RESPONSE_LEN: usize = 1 + 32 + MAX_MANIFEST_LEN;
/// Largest announcement.
pub const MAX_ANNOUNCEMENT_LEN: usize = 4 + 1 + 32 + 1 + 8 + 1 + 32 + 32 + 2 + 256;
/// Largest stored chunk a response may carry: a raw chunk plus slack for a zstd frame that did not
/// shrink it (zdn stores those raw; gzip from HTTP seeds can be slightly larger).
pub const MAX_STORED_CHUNK: usize = MAX_CHUNK_SIZE as usize + (MAX_CHUNK_SIZE as usize >> 7) + 512;

/// Largest stored form of a chunk of `len` uncompressed bytes: the same slack as
/// [`MAX_STORED_CHUNK`] (zdn itself never stores a chunk bigger than its raw bytes). A receiver
/// sizes its read of a chunk by this, not by the largest chunk there can be.
pub fn max_stored_len(len: u32) -> usize {
    let len = len as usize;
    (len + (len >> 7) + 512).min(MAX_STORED_CHUNK)
}

const ANNOUNCE_MAGIC: &[u8; 4] = b"ZDNA";

/// The first byte of a `Manifest` response and of a `Chunk` response: a server may write it, then
/// (for a chunk) the id, then the bytes from a buffer it shares, without building the response.
pub const MANIFEST_RESPONSE_TAG: u8 = 1;
pub const CHUNK_RESPONSE_TAG: u8 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    GetManifest(Hash),
    GetChunk { object: Hash, id: Hash },
    GetHave(Hash),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Manifest(Vec<u8>),
    Chunk { id: Hash, stored: Vec<u8> },
    Have { object: Hash, held: ChunkBitmap },
    NotFound(Hash),
    Busy { retry_after_ms: u32 },
}

/// Which chunks of an object a peer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkBitmap {
    n: u32,
    bits: Vec<u8>,
}

impl ChunkBitmap {
    pub fn new(n: u32) -> Self {
        ChunkBitmap {
            n,
            bits: vec![0; (n as usize).div_ceil(8)],
        }
    }

    pub fn full(n: u32) -> Self {
        let mut b = Self::new(n);
        for i in 0..n {
            b.set(i);
        }
        b
    }

    pub fn len(&self) -> u32 {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    pub fn set(&mut self, i: u32) {
        if i < self.n {
            self.bits[(i / 8) as usize] |= 1 << (i % 8);
        }
    }

    pub fn get(&self, i: u32) -> bool {
        i < self.n && self.bits[(i / 8) as usize] & (1 << (i % 8)) != 0
    }

    pub fn count(&self) -> u32 {
        self.bits.iter().map(|b| b.count_ones()).sum()
    }

    /// The bitmap's bytes: bit i of byte i/8 = item i.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }

    /// A bitmap of `n` items from its bytes; refused unless there are exactly ⌈n/8⌉ of them and
    /// no bit is set past `n` (one encoding per bitmap).
    pub fn from_bytes(n: u32, bits: &[u8]) -> Result<Self, WireError> {
        exact(bits, (n as usize).div_ceil(8), "bitmap")?;
        if !n.is_multiple_of(8) && bits.last().is_some_and(|&l| l >> (n % 8) != 0) {
            return Err(WireError::Invalid {
                what: "bitmap",
                problem: "bits set past its length",
            });
        }
        Ok(ChunkBitmap {
            n,
            bits: bits.to_vec(),
        })
    }
}

/// A small signed-manifest announcement for gossip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    pub manifest: Hash,
    pub kind: Kind,
    pub object_len: u64,
    pub base: Option<Hash>,
    pub publisher: [u8; 32],
    pub name: String,
}

/// Why a message is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("{what} of {len} bytes is over its {max}-byte limit")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{0} is truncated")]
    Truncated(&'static str),
    #[error("{what}: unknown tag {tag}")]
    Tag { what: &'static str, tag: u8 },
    #[error("{0} has trailing bytes")]
    Trailing(&'static str),
    #[error("{what}: {problem}")]
    Invalid {
        what: &'static str,
        problem: &'static str,
    },
}

fn cap(what: &'static str, len: usize, max: usize) -> Result<(), WireError> {
    if len > max {
        return Err(WireError::TooLarge { what, len, max });
    }
    Ok(())
}

fn hash_at(b: &[u8], at: usize, what: &'static str) -> Result<Hash, WireError> {
    let end = at.checked_add(32).ok_or(WireError::Truncated(what))?;
    let s = b.get(at..end).ok_or(WireError::Truncated(what))?;
    let mut a = [0u8; 32];
    a.copy_from_slice(s);
    Ok(Hash::from_bytes(a))
}

fn exact(b: &[u8], len: usize, what: &'static str) -> Result<(), WireError> {
    match b.len().cmp(&len) {
        std::cmp::Ordering::Less => Err(WireError::Truncated(what)),
        std::cmp::Ordering::Greater => Err(WireError::Trailing(what)),
        std::cmp::Ordering::Equal => Ok(()),
    }
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_REQUEST_LEN);
        match self {
            Request::GetManifest(h) => {
                out.push(1);
                out.extend_from_slice(h.as_bytes());
            }
            Request::GetChunk { object, id } => {
                out.push(2);
                out.extend_from_slice(object.as_bytes());
                out.extend_from_slice(id.as_bytes());
            }
            Request::GetHave(h) => {
                out.push(3);
                out.extend_from_slice(h.as_bytes());
            }
        }
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        const WHAT: &str = "request";
        cap(WHAT, b.len(), MAX_REQUEST_LEN)?;
        let tag = *b.first().ok_or(WireError::Truncated(WHAT))?;
        match tag {
            1 => {
                exact(b, 33, WHAT)?;
                Ok(Request::GetManifest(hash_at(b, 1, WHAT)?))
            }
            2 => {
                exact(b, 65, WHAT)?;
                Ok(Request::GetChunk {
                    object: hash_at(b, 1, WHAT)?,
                    id: hash_at(b, 33, WHAT)?,
                })
            }
            3 => {
                exact(b, 33, WHAT)?;
                Ok(Request::GetHave(hash_at(b, 1, WHAT)?))
            }
            tag => Err(WireError::Tag { what: WHAT, tag }),
        }
    }
}

impl Response {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Response::Manifest(m) => {
                out.push(MANIFEST_RESPONSE_TAG);
                out.extend_from_slice(m);
            }
            Response::Chunk { id, stored } => {
                out.reserve(33 + stored.len());
                out.push(CHUNK_RESPONSE_TAG);
                out.extend_from_slice(id.as_bytes());
                out.extend_from_slice(stored);
            }
            Response::Have { object, held } => {
                out.push(3);
                out.extend_from_slice(object.as_bytes());
                out.extend_from_slice(&held.n.to_le_bytes());
                out.extend_from_slice(&held.bits);
            }
            Response::NotFound(h) => {
                out.push(4);
                out.extend_from_slice(h.as_bytes());
            }
            Response::Busy { retry_after_ms } => {
                out.push(5);
                out.extend_from_slice(&retry_after_ms.to_le_bytes());
            }
        }
        out
    }

    /// Decodes a response frame. Does not verify hashes: a chunk's id against its bytes and a
    /// manifest's signature are checked by the caller, which knows what it asked for.
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        const WHAT: &str = "response";
        cap(WHAT, b.len(), MAX_RESPONSE_LEN)?;
        let tag = *b.first().ok_or(WireError::Truncated(WHAT))?;
        match tag {
            1 => {
                cap("manifest", b.len() - 1, MAX_MANIFEST_LEN)?;
                Ok(Response::Manifest(b[1..].to_vec()))
            }
            2 => {
                let id = hash_at(b, 1, WHAT)?;
                cap("chunk", b.len() - 33, MAX_STORED_CHUNK)?;
                Ok(Response::Chunk {
                    id,
                    stored: b[33..].to_vec(),
                })
            }
            3 => {
                let object = hash_at(b, 1, WHAT)?;
                let n = b.get(33..37).ok_or(WireError::Truncated(WHAT))?;
                let n = u32::from_le_bytes([n[0], n[1], n[2], n[3]]);
                let bytes = (n as usize).div_ceil(8);
                exact(b, 37 + bytes, WHAT)?;
                // Bits past n must be zero: one encoding per bitmap.
                Ok(Response::Have {
                    object,
                    held: ChunkBitmap::from_bytes(n, &b[37..])?,
                })
            }
            4 => {
                exact(b, 33, WHAT)?;
                Ok(Response::NotFound(hash_at(b, 1, WHAT)?))
            }
            5 => {
                exact(b, 5, WHAT)?;
                Ok(Response::Busy {
                    retry_after_ms: u32::from_le_bytes([b[1], b[2], b[3], b[4]]),
                })
            }
            tag => Err(WireError::Tag { what: WHAT, tag }),
        }
    }
}

impl Announcement {
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        if self.name.len() > 256 {
            return Err(WireError::Invalid {
                what: "announcement",
                problem: "name over 256 bytes",
            });
        }
        let mut out = Vec::with_capacity(MAX_ANNOUNCEMENT_LEN);
        out.extend_from_slice(ANNOUNCE_MAGIC);
        out.push(1);
        out.extend_from_slice(self.manifest.as_bytes());
        out.push(self.kind.code());
        out.extend_from_slice(&self.object_len.to_le_bytes());
        match &self.base {
            Some(b) => {
                out.push(1);
                out.extend_from_slice(b.as_bytes());
            }
            None => out.push(0),
        }
        out.extend_from_slice(&self.publisher);
        out.extend_from_slice(&(self.name.len() as u16).to_le_bytes());
        out.extend_from_slice(self.name.as_bytes());
        Ok(out)
    }

    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        const WHAT: &str = "announcement";
        cap(WHAT, b.len(), MAX_ANNOUNCEMENT_LEN)?;
        if b.len() < 5 {
            return Err(WireError::Truncated(WHAT));
        }
        if &b[..4] != ANNOUNCE_MAGIC || b[4] != 1 {
            return Err(WireError::Invalid {
                what: WHAT,
                problem: "bad magic or version",
            });
        }
        let manifest = hash_at(b, 5, WHAT)?;
        let kind_code = *b.get(37).ok_or(WireError::Truncated(WHAT))?;
        let kind = Kind::from_code(kind_code).ok_or(WireError::Tag {
            what: "announcement kind",
            tag: kind_code,
        })?;
        let len = b.get(38..46).ok_or(WireError::Truncated(WHAT))?;
        let mut l = [0u8; 8];
        l.copy_from_slice(len);
        let object_len = u64::from_le_bytes(l);
        let (base, mut at) = match b.get(46) {
            Some(0) => (None, 47),
            Some(1) => (Some(hash_at(b, 47, WHAT)?), 79),
            Some(_) => {
                return Err(WireError::Invalid {
                    what: WHAT,
                    problem: "base flag is not 0 or 1",
                })
            }
            None => return Err(WireError::Truncated(WHAT)),
        };
        let publisher = *hash_at(b, at, WHAT)?.as_bytes();
        at += 32;
        let n = b.get(at..at + 2).ok_or(WireError::Truncated(WHAT))?;
        let n = usize::from(u16::from_le_bytes([n[0], n[1]]));
        at += 2;
        exact(b, at + n, WHAT)?;
        let name = std::str::from_utf8(&b[at..])
            .map_err(|_| WireError::Invalid {
                what: WHAT,
                problem: "name is not UTF-8",
            })?
            .to_string();
        if (kind != Kind::Base) != base.is_some() {
            return Err(WireError::Invalid {
                what: WHAT,
                problem: "a delta or soup names its base, a base does not",
            });
        }
        Ok(Announcement {
            manifest,
            kind,
            object_len,
            base,
            publisher,
            name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(b: u8) -> Hash {
        Hash::from_bytes([b; 32])
    }

    #[test]
    fn stored_bound_of_a_chunk() {
        assert_eq!(max_stored_len(0), 512);
        assert_eq!(max_stored_len(1 << 20), (1 << 20) + (1 << 13) + 512);
        assert_eq!(max_stored_len(u32::MAX), MAX_STORED_CHUNK);
        assert_eq!(max_stored_len(MAX_CHUNK_SIZE), MAX_STORED_CHUNK);
        let m = Response::Manifest(vec![7, 8]).encode();
        assert_eq!(m, [MANIFEST_RESPONSE_TAG, 7, 8]);
    }

    /// Golden vectors: the exact bytes of each message kind (pins the wire format).
    #[test]
    fn golden_bytes() {
        let hex = |v: Vec<u8>| v.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(
            hex(Request::GetChunk {
                object: h(1),
                id: h(2)
            }
            .encode()),
            format!("02{}{}", "01".repeat(32), "02".repeat(32))
        );
        let mut held = ChunkBitmap::new(10);
        held.set(0);
        held.set(9);
        assert_eq!(
            hex(Response::Have { object: h(3), held }.encode()),
            format!("03{}0a0000000102", "03".repeat(32))
        );
        assert_eq!(
            hex(Response::Busy {
                retry_after_ms: 1000
            }
            .encode()),
            "05e8030000"
        );
        let a = Announcement {
            manifest: h(4),
            kind: Kind::Delta,
            object_len: 1_437_232,
            base: Some(h(5)),
            publisher: [6; 32],
            name: "ft".into(),
        };
        assert_eq!(
            hex(a.encode().unwrap()),
            format!(
                "5a444e4101{}01{}01{}{}02006674",
                "04".repeat(32),
                "30ee150000000000",
                "05".repeat(32),
                "06".repeat(32)
            )
        );
    }

    #[test]
    fn bad_messages_are_refused() {
        assert!(matches!(Request::decode(&[]), Err(WireError::Truncated(_))));
        assert!(matches!(
            Request::decode(&[9; 33]),
            Err(WireError::Tag { .. })
        ));
        assert!(matches!(
            Request::decode(&[1; 34]),
            Err(WireError::Trailing(_))
        ));
        assert!(matches!(
            Request::decode(&[2; 64]),
            Err(WireError::Truncated(_))
        ));
        assert!(matches!(
            Request::decode(&[1; 1000]),
            Err(WireError::TooLarge { .. })
        ));
        // A chunk larger than any stored chunk can be.
        let mut big = vec![2u8; 33 + MAX_STORED_CHUNK + 1];
        big[0] = 2;
        assert!(matches!(
            Response::decode(&big),
            Err(WireError::TooLarge { what: "chunk", .. })
        ));
        // Have with bits past n, or the wrong length.
        let mut have = Response::Have {
            object: h(1),
            held: ChunkBitmap::new(3),
        }
        .encode();
        *have.last_mut().unwrap() = 0b1000;
        assert!(Response::decode(&have).is_err());
        have.push(0);
        assert!(Response::decode(&have).is_err());
        // A forged huge chunk count does not allocate: the length check comes first.
        let mut forged = vec![3u8];
        forged.extend_from_slice(&[0; 32]);
        forged.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Response::decode(&forged),
            Err(WireError::Truncated(_))
        ));
    }

    fn arb_request() -> impl Strategy<Value = Request> {
        prop_oneof![
            any::<[u8; 32]>().prop_map(|a| Request::GetManifest(Hash::from_bytes(a))),
            (any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(a, b)| Request::GetChunk {
                object: Hash::from_bytes(a),
                id: Hash::from_bytes(b)
            }),
            any::<[u8; 32]>().prop_map(|a| Request::GetHave(Hash::from_bytes(a))),
        ]
    }

    fn arb_response() -> impl Strategy<Value = Response> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..200).prop_map(Response::Manifest),
            (
                any::<[u8; 32]>(),
                prop::collection::vec(any::<u8>(), 0..200)
            )
                .prop_map(|(a, stored)| Response::Chunk {
                    id: Hash::from_bytes(a),
                    stored
                }),
            (
                any::<[u8; 32]>(),
                prop::collection::vec(any::<bool>(), 0..100)
            )
                .prop_map(|(a, bits)| {
                    let mut held = ChunkBitmap::new(bits.len() as u32);
                    for (i, &b) in bits.iter().enumerate() {
                        if b {
                            held.set(i as u32);
                        }
                    }
                    Response::Have {
                        object: Hash::from_bytes(a),
                        held,
                    }
                }),
            any::<[u8; 32]>().prop_map(|a| Response::NotFound(Hash::from_bytes(a))),
            any::<u32>().prop_map(|retry_after_ms| Response::Busy { retry_after_ms }),
        ]
    }

    fn arb_announcement() -> impl Strategy<Value = Announcement> {
        (
            any::<[u8; 32]>(),
            any::<bool>(),
            any::<u64>(),
            any::<[u8; 32]>(),
            any::<[u8; 32]>(),
            ".{0,40}",
        )
            .prop_map(|(m, delta, object_len, b, publisher, name)| Announcement {
                manifest: Hash::from_bytes(m),
                kind: if delta { Kind::Delta } else { Kind::Base },
                object_len,
                base: delta.then(|| Hash::from_bytes(b)),
                publisher,
                name,
            })
    }

    proptest! {
        #[test]
        fn request_round_trip(r in arb_request()) {
            prop_assert_eq!(Request::decode(&r.encode()).unwrap(), r);
        }

        #[test]
        fn response_round_trip(r in arb_response()) {
            prop_assert_eq!(Response::decode(&r.encode()).unwrap(), r);
        }

        #[test]
        fn announcement_round_trip(a in arb_announcement()) {
            let b = a.encode().unwrap();
            prop_assert!(b.len() <= MAX_ANNOUNCEMENT_LEN);
            prop_assert_eq!(Announcement::decode(&b).unwrap(), a);
        }

        #[test]
        fn mutated_messages_never_panic(
            r in arb_response(), a in arb_announcement(), i in any::<usize>(), x in any::<u8>(),
            cut in any::<usize>()
        ) {
            for mut b in [r.encode(), a.encode().unwrap(), Request::GetHave(Hash::ZERO).encode()] {
                if !b.is_empty() {
                    let i = i % b.len();
                    b[i] ^= x;
                    let _ = Response::decode(&b);
                    let _ = Request::decode(&b);
                    let _ = Announcement::decode(&b);
                    b.truncate(cut % b.len());
                    let _ = Response::decode(&b);
                    let _ = Request::decode(&b);
                    let _ = Announcement::decode(&b);
                }
            }
        }
    }
}
