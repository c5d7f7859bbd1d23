//! The decoder of the planes codec: blocks back into their bytes (the spec: docs/spec/planes.md).

use super::huffman::MAX_SYMBOL_BITS;
use super::*;

pub(super) struct Decoder {
    /// Created on the first zstd plane.
    pub(super) zstd: Option<zstd::bulk::Decompressor<'static>>,
    pub(super) scratch: Vec<u8>,
}

impl Decoder {
    /// Decodes the next block from `cur` into `out` (its exact decoded size).
    pub(super) fn block(
        &mut self,
        cur: &mut Cursor<'_>,
        dtype: DType,
        out: &mut [u8],
        block: u64,
    ) -> Result<(), PlanesError> {
        let mode = cur.u8("block mode")?;
        let len = cur.u32("block body length")? as usize;
        let mut b = Cursor::new(cur.bytes(len, "block body")?);
        match mode {
            MODE_FIELDS => fields(&mut b, dtype, out, block)?,
            MODE_PLANES => self.planes(&mut b, dtype, out, block)?,
            mode => return Err(PlanesError::UnknownMode { block, mode }),
        }
        if b.remaining() != 0 {
            return Err(PlanesError::BodyLength {
                block,
                unused: b.remaining(),
            });
        }
        Ok(())
    }

    pub(super) fn planes(
        &mut self,
        b: &mut Cursor<'_>,
        dtype: DType,
        out: &mut [u8],
        block: u64,
    ) -> Result<(), PlanesError> {
        let code = b.u8("layout")?;
        let layout = Layout::from_code(code)
            .filter(|l| l.applies_to(dtype))
            .ok_or(PlanesError::UnknownLayout {
                block,
                layout: code,
                dtype,
            })?;
        if layout == Layout::Bytes || dtype.size() == 1 {
            return self.plane(b, out, block, 0);
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.resize(out.len(), 0);
        let n = out.len() / dtype.size();
        let mut result = Ok(());
        for (plane, dst) in scratch.chunks_mut(n.max(1)).enumerate() {
            result = self.plane(b, dst, block, plane);
            if result.is_err() {
                break;
            }
        }
        if result.is_ok() {
            layout::merge(layout, dtype, &scratch, out);
        }
        self.scratch = scratch;
        result
    }

    /// Decodes one plane into `dst` (its exact size).
    pub(super) fn plane(
        &mut self,
        b: &mut Cursor<'_>,
        dst: &mut [u8],
        block: u64,
        plane: usize,
    ) -> Result<(), PlanesError> {
        let codec = b.u8("plane codec")?;
        let len = b.u32("plane length")? as usize;
        let payload = b.bytes(len, "plane payload")?;
        let length_err = |codec, expected| PlanesError::PlaneLength {
            block,
            plane,
            codec,
            len,
            expected,
        };
        match codec {
            CODEC_RAW if len == dst.len() => dst.copy_from_slice(payload),
            CODEC_RAW => return Err(length_err("raw", dst.len())),
            CODEC_CONST => match payload {
                [v] => dst.fill(*v),
                _ => return Err(length_err("const", 1)),
            },
            CODEC_ZSTD => {
                let zstd_err = |problem: String| PlanesError::Zstd {
                    block,
                    plane,
                    problem,
                };
                let z = match &mut self.zstd {
                    Some(z) => z,
                    None => self.zstd.insert(
                        zstd::bulk::Decompressor::new().map_err(|e| zstd_err(e.to_string()))?,
                    ),
                };
                let got = z
                    .decompress_to_buffer(payload, dst)
                    .map_err(|e| zstd_err(e.to_string()))?;
                if got != dst.len() {
                    return Err(zstd_err(format!(
                        "decodes to {got} bytes, the plane has {}",
                        dst.len()
                    )));
                }
            }
            CODEC_HUFFMAN => {
                let mut h = Cursor::new(payload);
                let sec = huffman::parse_section(&mut h, 8, block)?;
                if h.remaining() != 0 {
                    return Err(PlanesError::BodyLength {
                        block,
                        unused: h.remaining(),
                    });
                }
                huffman::decode_section::<1>(&sec, 0, dst, block)?;
            }
            codec => {
                return Err(PlanesError::UnknownCodec {
                    block,
                    plane,
                    codec,
                })
            }
        }
        Ok(())
    }
}

/// Decodes a fields-mode body into `out`.
fn fields(b: &mut Cursor<'_>, dtype: DType, out: &mut [u8], block: u64) -> Result<(), PlanesError> {
    let width = dtype.size();
    if width > 4 {
        return Err(PlanesError::FieldsDType { block, dtype });
    }
    let w = 8 * width as u32;
    let raw_bits = b.u8("raw bits")?;
    let r = u32::from(raw_bits);
    if r >= w || w - r > MAX_SYMBOL_BITS {
        return Err(PlanesError::RawBits {
            block,
            raw_bits,
            dtype,
        });
    }
    let sec = huffman::parse_section(b, w - r, block)?;
    match width {
        1 => huffman::decode_section::<1>(&sec, r, out, block),
        2 => huffman::decode_section::<2>(&sec, r, out, block),
        _ => huffman::decode_section::<4>(&sec, r, out, block),
    }
}
