//! Lossless tensor coding: byte planes + zstd, optionally of the XOR with the base.
//!
//! Floats that changed a little keep their sign, exponent and high mantissa bits, so `target XOR base`
//! is zero in its high bytes; splitting the bytes into planes (all byte 0s, then all byte 1s, …) puts
//! those zeros together, where zstd removes them.

/// Default zstd level for lossless tensors: measured in docs/quality.md.
pub const DEFAULT_LEVEL: i32 = 9;

/// Encodes `target` (XOR `base` when given, same length) as zstd(byte planes).
pub fn encode(
    target: &[u8],
    base: Option<&[u8]>,
    elem: usize,
    level: i32,
) -> Result<Vec<u8>, String> {
    let n = target.len() / elem.max(1);
    let mut planes = vec![0u8; target.len()];
    for (i, chunk) in target.chunks_exact(elem).enumerate() {
        for (k, &byte) in chunk.iter().enumerate() {
            let x = match base {
                Some(b) => byte ^ b[i * elem + k],
                None => byte,
            };
            planes[k * n + i] = x;
        }
    }
    zstd::bulk::compress(&planes, level).map_err(|e| format!("zstd compression failed: {e}"))
}

/// Most bytes one byte of a zstd frame can decode to: a block regenerates at most 128 KiB and takes at
/// least 4 bytes (an RLE block: 3-byte header, 1 byte).
const MAX_EXPANSION: u64 = 32 * 1024;

/// Checks, from the zstd frame header alone, that a block declares exactly `len` decoded bytes, and
/// that a frame of its length can decode to that many (so a forged header cannot make a caller
/// allocate more than `MAX_EXPANSION` times the block).
pub fn check_frame_size(block: &[u8], len: u64) -> Result<(), String> {
    if block.is_empty() && len == 0 {
        return Ok(());
    }
    match zstd::zstd_safe::get_frame_content_size(block) {
        Ok(Some(n)) if n == len && n > (block.len() as u64).saturating_mul(MAX_EXPANSION) => {
            Err(format!(
                "lossless block of {} bytes cannot decode to the {n} bytes it declares",
                block.len()
            ))
        }
        Ok(Some(n)) if n == len => Ok(()),
        Ok(Some(n)) => Err(format!(
            "lossless block declares {n} bytes, the tensor has {len}"
        )),
        Ok(None) => Err("lossless block does not declare its decoded size".to_owned()),
        Err(_) => Err("lossless block is not a zstd frame".to_owned()),
    }
}

/// Decodes a block into `out`, whose length is the tensor's exact byte size. A frame that would inflate
/// past `out.len()` is refused without allocating more.
pub fn decode(
    block: &[u8],
    base: Option<&[u8]>,
    elem: usize,
    out: &mut [u8],
) -> Result<(), String> {
    if out.is_empty() && block.is_empty() {
        return Ok(());
    }
    let mut planes = vec![0u8; out.len()];
    let got = zstd::bulk::decompress_to_buffer(block, &mut planes)
        .map_err(|e| format!("lossless block does not decode to {} bytes: {e}", out.len()))?;
    if got != out.len() {
        return Err(format!(
            "lossless block decodes to {got} bytes, the tensor has {}",
            out.len()
        ));
    }
    let n = out.len() / elem.max(1);
    for (i, chunk) in out.chunks_exact_mut(elem).enumerate() {
        for (k, o) in chunk.iter_mut().enumerate() {
            let p = planes[k * n + i];
            *o = match base {
                Some(b) => p ^ b[i * elem + k],
                None => p,
            };
        }
    }
    Ok(())
}
