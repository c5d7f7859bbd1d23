//! The container: header constants, the header itself and a bounds-checked reader of untrusted bytes.
//!
//! Byte layout (all integers little-endian; docs/spec/planes.md has the full description):
//!
//! ```text
//! header   magic "ZDNP" · version u8 = 1 · dtype code u8 · tail_len u8 · flags u8 = 0
//!          · decoded_len u64 · block_len u32 · n_blocks u32           (24 bytes)
//! tail     tail_len bytes: the last decoded_len mod elem bytes, stored as is
//! blocks   n_blocks × (mode u8 · body_len u32 · body)
//! ```

use crate::dtype::DType;

use super::PlanesError;

pub(crate) const MAGIC: [u8; 4] = *b"ZDNP";
pub(crate) const VERSION: u8 = 1;
pub(crate) const HEADER_LEN: usize = 24;
/// Bytes every block takes at least: mode and body length.
pub(crate) const BLOCK_HEADER_LEN: usize = 5;

/// Block mode codes.
pub(crate) const MODE_PLANES: u8 = 0;
pub(crate) const MODE_FIELDS: u8 = 1;

/// Plane codec codes.
pub(crate) const CODEC_RAW: u8 = 0;
pub(crate) const CODEC_CONST: u8 = 1;
pub(crate) const CODEC_ZSTD: u8 = 2;
pub(crate) const CODEC_HUFFMAN: u8 = 3;

/// The fixed part of an encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub dtype: DType,
    pub tail_len: u8,
    pub decoded_len: u64,
    pub block_len: u32,
    pub n_blocks: u32,
}

impl Header {
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(self.dtype.code());
        out.push(self.tail_len);
        out.push(0);
        out.extend_from_slice(&self.decoded_len.to_le_bytes());
        out.extend_from_slice(&self.block_len.to_le_bytes());
        out.extend_from_slice(&self.n_blocks.to_le_bytes());
    }

    /// Reads and checks the header: every field alone and against the others. Does not look at what
    /// follows it.
    pub(crate) fn read(cur: &mut Cursor<'_>) -> Result<Self, PlanesError> {
        if cur.bytes(4, "magic")? != MAGIC {
            return Err(PlanesError::BadMagic);
        }
        let version = cur.u8("version")?;
        if version != VERSION {
            return Err(PlanesError::Version(version));
        }
        let code = cur.u8("dtype")?;
        let dtype = DType::from_code(code).ok_or(PlanesError::UnknownDType(code))?;
        let tail_len = cur.u8("tail length")?;
        let flags = cur.u8("flags")?;
        if flags != 0 {
            return Err(PlanesError::Flags(flags));
        }
        let decoded_len = cur.u64("decoded length")?;
        let block_len = cur.u32("block length")?;
        let n_blocks = cur.u32("block count")?;
        let elem = dtype.size();
        if usize::from(tail_len) >= elem || u64::from(tail_len) > decoded_len {
            return Err(PlanesError::TailLength {
                tail_len,
                decoded_len,
                elem,
            });
        }
        check_block_len(block_len, dtype)?;
        let body = decoded_len - u64::from(tail_len);
        if body % elem as u64 != 0 {
            return Err(PlanesError::TailLength {
                tail_len,
                decoded_len,
                elem,
            });
        }
        let expected = body.div_ceil(u64::from(block_len));
        if u64::from(n_blocks) != expected {
            return Err(PlanesError::BlockCount {
                declared: n_blocks,
                expected,
            });
        }
        Ok(Header {
            dtype,
            tail_len,
            decoded_len,
            block_len,
            n_blocks,
        })
    }
}

/// A block holds a whole number of elements and at most [`super::MAX_BLOCK_LEN`] bytes.
pub(crate) fn check_block_len(block_len: u32, dtype: DType) -> Result<(), PlanesError> {
    let elem = dtype.size() as u32;
    if block_len == 0 || block_len > super::MAX_BLOCK_LEN || !block_len.is_multiple_of(elem) {
        return Err(PlanesError::BlockLength { block_len, dtype });
    }
    Ok(())
}

/// Reads an untrusted byte string front to back; every read is bounds-checked and names what it read.
#[derive(Debug, Clone)]
pub(crate) struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Cursor { data, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    pub(crate) fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], PlanesError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or(PlanesError::Truncated {
                what,
                need: n,
                left: self.remaining(),
            })?;
        let b = &self.data[self.pos..end];
        self.pos = end;
        Ok(b)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], PlanesError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N, what)?);
        Ok(a)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, PlanesError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, PlanesError> {
        self.array(what).map(u16::from_le_bytes)
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, PlanesError> {
        self.array(what).map(u32::from_le_bytes)
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, PlanesError> {
        self.array(what).map(u64::from_le_bytes)
    }
}
