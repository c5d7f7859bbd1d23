//! Messages of the chunk protocol (`/zdn/chunk/1`) and of manifest announcements, with their byte
//! encoding. Sans-IO: the node reads a length-prefixed frame (never more than the cap stated here for
//! its direction), then calls `decode`.
//!
//! ```text
//! request  = tag u8 | body
//!   1 GetManifest  hash 32
//!   2 GetChunk     object 32 | chunk id 32
//!   3 GetHave      object 32
//!   4 GetAnnouncement  manifest hash 32
//!   5 GetRecent    since u64 (unix seconds)
//! response = tag u8 | body
//!   1 Manifest     canonical signed manifest bytes (to the end of the frame)
//!   2 Chunk        chunk id 32 | stored chunk bytes (to the end of the frame)
//!   3 Have         object 32 | n_chunks u32 | bitmap ⌈n/8⌉ bytes (bit i of byte i/8 = chunk i held)
//!   4 NotFound     what 32
//!   5 Busy         retry_after_ms u32
//!   6 Announcement the signed announcement of the manifest asked for (to the end of the frame)
//!   7 Recent       n u16 (≤ 64) | n × ( len u16 (≤ MAX_ANNOUNCEMENT_LEN) | signed announcement )
//! announcement (gossip) = body | signature 64
//!   body = "ZDNA" | version u8 = 3 | manifest hash 32 | kind u8 | object_len u64
//!          | base flag u8 [ base 32 ] | publisher 32 | manifest_len u32 | name str16
//!   signature = ed25519 by `publisher` over ANNOUNCE_SIGNING_CONTEXT | body
//! ```
//! Integers little-endian. An announcement is small on purpose (gossip reaches every peer, on
//! satellite links too): it stands for a manifest too big to travel itself. Its publisher signs it
//! when it signs the manifest, so a peer cannot claim a trusted publisher for a hash it made up; a
//! peer that wants the object still asks for the manifest and checks its own signature and hash
//! before anything else. (Version 2 was the same body unsigned; it is refused.)

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
pub const MAX_ANNOUNCEMENT_LEN: usize = 4 + 1 + 32 + 1 + 8 + 1 + 32 + 32 + 4 + 2 + 256 + 64;
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

/// The first bytes of an [`Announcement`] (a signed manifest starts with `ZDNM`).
pub const ANNOUNCE_MAGIC: &[u8; 4] = b"ZDNA";
/// The announcement's version byte.
const ANNOUNCE_VERSION: u8 = 3;
/// What an announcement's signature is over, before its body: no signature over an announcement
/// is a valid signature over a manifest, or the other way round.
pub const ANNOUNCE_SIGNING_CONTEXT: &[u8] = b"zdn announcement v3\0";

/// The first byte of a `Manifest` response and of a `Chunk` response: a server may write it, then
/// (for a chunk) the id, then the bytes from a buffer it shares, without building the response.
pub const MANIFEST_RESPONSE_TAG: u8 = 1;
pub const CHUNK_RESPONSE_TAG: u8 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    GetManifest(Hash),
    GetChunk {
        object: Hash,
        id: Hash,
    },
    GetHave(Hash),
    /// The publisher's signed announcement of a manifest (one too big for gossip), which a node
    /// needs to announce that object in turn.
    GetAnnouncement(Hash),
    /// The signed announcements of the objects whose manifests were made at or after `since`
    /// (unix seconds, the publishers' clocks): how a node that was away learns what it missed.
    GetRecent {
        since: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Manifest(Vec<u8>),
    Chunk {
        id: Hash,
        stored: Vec<u8>,
    },
    Have {
        object: Hash,
        held: ChunkBitmap,
    },
    NotFound(Hash),
    Busy {
        retry_after_ms: u32,
    },
    /// An encoded [`Announcement`]; the caller decodes and verifies it.
    Announcement(Vec<u8>),
    /// Encoded [`Announcement`]s, newest first, at most [`MAX_RECENT`]; the caller decodes and
    /// verifies each.
    Recent(Vec<Vec<u8>>),
}

/// Most announcements in a [`Response::Recent`].
pub const MAX_RECENT: usize = 64;

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

/// What gossip carries of a manifest too big to travel itself: its hash and what a receiver needs
/// to decide whether it wants the object, signed by the manifest's publisher. The signature makes
/// every field the publisher's word; the manifest, fetched by hash, is still checked on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    pub manifest: Hash,
    pub kind: Kind,
    pub object_len: u64,
    pub base: Option<Hash>,
    pub publisher: [u8; 32],
    /// The manifest's length in bytes (at most `MAX_MANIFEST_LEN`): the most a receiver reads
    /// when it fetches it.
    pub manifest_len: u32,
    pub name: String,
    /// ed25519 by `publisher` over [`ANNOUNCE_SIGNING_CONTEXT`] and the body.
    pub signature: [u8; 64],
}

impl Announcement {
    /// The announcement of `m`, signed by `key`, which must be `m`'s publisher's.
    pub fn signed(
        m: &crate::manifest::SignedManifest,
        key: &crate::manifest::PublisherKey,
    ) -> Result<Announcement, WireError> {
        if key.public() != m.publisher {
            return Err(WireError::Invalid {
                what: "announcement",
                problem: "only the manifest's publisher can sign its announcement",
            });
        }
        let mut a = Announcement {
            manifest: m.hash(),
            kind: m.manifest.kind,
            object_len: m.manifest.object_len,
            base: m.manifest.base,
            publisher: m.publisher,
            manifest_len: u32::try_from(m.as_bytes().len()).unwrap_or(u32::MAX),
            name: m.manifest.name.clone(),
            signature: [0; 64],
        };
        a.signature = key.sign(&a.signing_bytes()?);
        Ok(a)
    }

    fn signing_bytes(&self) -> Result<Vec<u8>, WireError> {
        let mut out = ANNOUNCE_SIGNING_CONTEXT.to_vec();
        out.extend_from_slice(&self.body()?);
        Ok(out)
    }

    /// Whether the signature is the publisher's over the rest.
    pub fn verify(&self) -> Result<(), WireError> {
        crate::manifest::verify_signature(&self.publisher, &self.signing_bytes()?, &self.signature)
            .map_err(|_| WireError::Invalid {
                what: "announcement",
                problem: "its signature is not its publisher's",
            })
    }

    /// Whether this announces `m`: its hash, by its publisher.
    pub fn announces(&self, m: &crate::manifest::SignedManifest) -> bool {
        self.manifest == m.hash() && self.publisher == m.publisher
    }
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
            Request::GetAnnouncement(h) => {
                out.push(4);
                out.extend_from_slice(h.as_bytes());
            }
            Request::GetRecent { since } => {
                out.push(5);
                out.extend_from_slice(&since.to_le_bytes());
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
            4 => {
                exact(b, 33, WHAT)?;
                Ok(Request::GetAnnouncement(hash_at(b, 1, WHAT)?))
            }
            5 => {
                exact(b, 9, WHAT)?;
                let mut since = [0u8; 8];
                since.copy_from_slice(&b[1..9]);
                Ok(Request::GetRecent {
                    since: u64::from_le_bytes(since),
                })
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
            Response::Announcement(a) => {
                out.push(6);
                out.extend_from_slice(a);
            }
            Response::Recent(list) => {
                // Encoders keep to the caps the decoder checks: at most MAX_RECENT entries of at
                // most MAX_ANNOUNCEMENT_LEN bytes each (more is the caller's bug, cut here).
                let list: Vec<&Vec<u8>> = list
                    .iter()
                    .filter(|a| a.len() <= MAX_ANNOUNCEMENT_LEN)
                    .take(MAX_RECENT)
                    .collect();
                out.push(7);
                out.extend_from_slice(&(list.len() as u16).to_le_bytes());
                for a in list {
                    out.extend_from_slice(&(a.len() as u16).to_le_bytes());
                    out.extend_from_slice(a);
                }
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
            6 => {
                cap("announcement", b.len() - 1, MAX_ANNOUNCEMENT_LEN)?;
                Ok(Response::Announcement(b[1..].to_vec()))
            }
            7 => decode_recent(&b[1..]),
            tag => Err(WireError::Tag { what: WHAT, tag }),
        }
    }
}

/// The body of a [`Response::Recent`]: a u16 count (at most [`MAX_RECENT`]), then each entry as a
/// u16 length (at most [`MAX_ANNOUNCEMENT_LEN`]) and its bytes; nothing after the last.
fn decode_recent(b: &[u8]) -> Result<Response, WireError> {
    const WHAT: &str = "recent announcements";
    let n = b.get(..2).ok_or(WireError::Truncated(WHAT))?;
    let n = usize::from(u16::from_le_bytes([n[0], n[1]]));
    cap(WHAT, n, MAX_RECENT)?;
    let mut list = Vec::with_capacity(n);
    let mut at = 2;
    for _ in 0..n {
        let len = b.get(at..at + 2).ok_or(WireError::Truncated(WHAT))?;
        let len = usize::from(u16::from_le_bytes([len[0], len[1]]));
        cap("announcement", len, MAX_ANNOUNCEMENT_LEN)?;
        let a = b
            .get(at + 2..at + 2 + len)
            .ok_or(WireError::Truncated(WHAT))?;
        list.push(a.to_vec());
        at += 2 + len;
    }
    exact(b, at, WHAT)?;
    Ok(Response::Recent(list))
}

impl Announcement {
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut out = self.body()?;
        out.extend_from_slice(&self.signature);
        Ok(out)
    }

    /// Everything but the signature.
    fn body(&self) -> Result<Vec<u8>, WireError> {
        if self.name.len() > 256 {
            return Err(WireError::Invalid {
                what: "announcement",
                problem: "name over 256 bytes",
            });
        }
        let mut out = Vec::with_capacity(MAX_ANNOUNCEMENT_LEN);
        out.extend_from_slice(ANNOUNCE_MAGIC);
        out.push(ANNOUNCE_VERSION);
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
        out.extend_from_slice(&self.manifest_len.to_le_bytes());
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
        if &b[..4] != ANNOUNCE_MAGIC {
            return Err(WireError::Invalid {
                what: WHAT,
                problem: "bad magic",
            });
        }
        if b[4] != ANNOUNCE_VERSION {
            return Err(WireError::Invalid {
                what: WHAT,
                problem: "unknown version (version 2 was unsigned)",
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
        let ml = b.get(at..at + 4).ok_or(WireError::Truncated(WHAT))?;
        let manifest_len = u32::from_le_bytes([ml[0], ml[1], ml[2], ml[3]]);
        if manifest_len as usize > MAX_MANIFEST_LEN {
            return Err(WireError::Invalid {
                what: WHAT,
                problem: "manifest length over the manifest limit",
            });
        }
        at += 4;
        let n = b.get(at..at + 2).ok_or(WireError::Truncated(WHAT))?;
        let n = usize::from(u16::from_le_bytes([n[0], n[1]]));
        at += 2;
        exact(b, at + n + 64, WHAT)?;
        let name = std::str::from_utf8(&b[at..at + n])
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
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&b[at + n..]);
        Ok(Announcement {
            manifest,
            kind,
            object_len,
            base,
            publisher,
            manifest_len,
            name,
            signature,
        })
    }
}

#[cfg(test)]
mod tests;
