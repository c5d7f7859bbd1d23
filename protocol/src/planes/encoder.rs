//! The encoder's choices for one block, made before anything is written.
//!
//! A block is coded in the smaller of fields mode and planes mode, each plane of planes mode with
//! the smallest of raw, const, Huffman and zstd (docs/spec/planes.md). Every size that decides is
//! known exactly without writing the coding: a Huffman section's length follows from the symbol
//! counts of its four streams. Only zstd's size needs zstd to run, and its exact size matters only
//! while it could still win; past that point a zstd pass is cut short ([`zstd_within`]). So the
//! output is the same bytes as coding every candidate in full and keeping the smallest, with the
//! losing Huffman codings never written and the losing zstd passes mostly skipped.

use std::cmp::Reverse;

use crate::dtype::DType;

use super::format::{CODEC_CONST, CODEC_HUFFMAN, CODEC_RAW, CODEC_ZSTD, MODE_FIELDS, MODE_PLANES};
use super::huffman::{self, MAX_SYMBOL_BITS, STREAMS};
use super::layout::{self, Layout};
use super::PlanesError;

/// Output room a capped zstd call gets beyond its cap. zstd's writers stop a few bytes short of
/// the end of their buffer (bit writers keep 8 bytes, block and literal headers a few more); with
/// this much room an output that fits the cap is produced exactly as with unlimited room.
const ZSTD_SLACK: usize = 4096;

/// zstd's output for `data`, if it is at most `cap` bytes; `None` when it is longer (or zstd
/// fails). The same bytes as an uncapped call: zstd compresses straight into the caller's buffer
/// and only reacts to its size when a block does not fit, and with [`ZSTD_SLACK`] beyond the cap
/// that happens only after more than `cap` bytes are written, so the result is refused anyway.
/// A pass whose output outgrows the buffer stops there, which is where the time is saved.
pub(crate) fn zstd_within(
    zstd: &mut zstd::bulk::Compressor<'_>,
    data: &[u8],
    cap: usize,
) -> Option<Vec<u8>> {
    if cap == 0 {
        return None;
    }
    let room = cap
        .saturating_add(ZSTD_SLACK)
        .min(zstd::zstd_safe::compress_bound(data.len()));
    let mut out = Vec::with_capacity(room);
    match zstd.compress_to_buffer(data, &mut out) {
        Ok(n) if n <= cap => Some(out),
        _ => None,
    }
}

/// How a plane is stored.
enum PlaneCoding {
    Raw,
    Const(u8),
    Zstd(Vec<u8>),
    /// A Huffman section with these code lengths.
    Huffman(Vec<u8>),
}

/// A plane's coding, its payload length and, while zstd has not been tried, the zstd size below
/// which zstd would take its place (0: zstd cannot win).
struct PlaneChoice {
    coding: PlaneCoding,
    len: usize,
    zstd_below: usize,
}

/// Per-stream symbol counts of a block (`STREAMS` tables of `alphabet` entries, one after the
/// other) for the symbols `sym(i)` of its `m` values.
fn stream_counts(m: usize, alphabet: usize, sym: impl Fn(usize) -> usize) -> Vec<u32> {
    let mut counts = vec![0u32; STREAMS * alphabet];
    let b = huffman::stream_bounds(m);
    let (c0, rest) = counts.split_at_mut(alphabet);
    let (c1, rest) = rest.split_at_mut(alphabet);
    let (c2, c3) = rest.split_at_mut(alphabet);
    // The four streams interleaved: four independent tables to increment.
    for k in 0..b[1] {
        c0[sym(k)] += 1;
        c1[sym(b[1] + k)] += 1;
        c2[sym(b[2] + k)] += 1;
        c3[sym(b[3] + k)] += 1;
    }
    for i in b[3] + b[1]..m {
        c3[sym(i)] += 1;
    }
    counts
}

/// The counts of all streams together.
fn total_counts(counts: &[u32], alphabet: usize) -> Vec<u64> {
    let mut total = vec![0u64; alphabet];
    for table in counts.chunks_exact(alphabet) {
        for (t, &c) in total.iter_mut().zip(table) {
            *t += u64::from(c);
        }
    }
    total
}

/// Bits of each stream when symbol `s` of the counted alphabet is coded as symbol `s >> shift`
/// with `lengths`, followed by `r` raw bits.
fn stream_bits(
    counts: &[u32],
    alphabet: usize,
    lengths: &[u8],
    shift: u32,
    r: u32,
) -> [u64; STREAMS] {
    let mut bits = [0u64; STREAMS];
    for (b, table) in bits.iter_mut().zip(counts.chunks_exact(alphabet)) {
        for (s, &c) in table.iter().enumerate() {
            *b += u64::from(c) * (u64::from(lengths[s >> shift]) + u64::from(r));
        }
    }
    bits
}

/// A fields-mode coding of a block: its raw bit count, code lengths and exact body length.
pub(crate) struct FieldsPlan {
    r: u32,
    lengths: Vec<u8>,
    len: usize,
}

impl FieldsPlan {
    /// The raw bit count that makes fields mode smallest; `None` for elements wider than 4 bytes
    /// or a block with a single symbol at every split.
    pub(crate) fn new(dtype: DType, block: &[u8]) -> Option<Self> {
        let width = dtype.size();
        if width > 4 {
            return None;
        }
        let w = 8 * width as u32;
        let r_min = w.saturating_sub(MAX_SYMBOL_BITS);
        let n = block.len() / width;
        let alphabet = 1usize << (w - r_min);
        let per_stream = match width {
            1 => stream_counts(n, alphabet, |i| usize::from(block[i])),
            2 => stream_counts(n, alphabet, |i| {
                usize::from(u16::from_le_bytes([block[2 * i], block[2 * i + 1]]) >> r_min)
            }),
            _ => stream_counts(n, alphabet, |i| {
                let c = &block[4 * i..4 * i + 4];
                (u32::from_le_bytes([c[0], c[1], c[2], c[3]]) >> r_min) as usize
            }),
        };
        let mut counts = total_counts(&per_stream, alphabet);
        // Try every split: merge the histogram one bit at a time.
        let mut best: Option<(u64, u32, Vec<u8>)> = None;
        for r in r_min..w {
            if r > r_min {
                counts = counts.chunks(2).map(|p| p.iter().sum()).collect();
            }
            if let Some(lengths) = huffman::code_lengths(&counts) {
                let bits = huffman::coded_bits(&counts, &lengths) + n as u64 * u64::from(r);
                let cost = bits.div_ceil(8) + huffman::table_bytes(&lengths) as u64;
                if best.as_ref().is_none_or(|b| cost < b.0) {
                    best = Some((cost, r, lengths));
                }
            }
        }
        let (_, r, lengths) = best?;
        let bits = stream_bits(&per_stream, alphabet, &lengths, r - r_min, r);
        let len = 1 + huffman::section_len(&lengths, &bits);
        Some(FieldsPlan { r, lengths, len })
    }

    /// The fields-mode body: the raw bit count, then the Huffman section.
    fn write(&self, dtype: DType, block: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        out.push(self.r as u8);
        huffman::encode_section(&self.lengths, block, dtype.size(), self.r, &mut out);
        debug_assert_eq!(out.len(), self.len);
        out
    }
}

/// A plane's coding without zstd: const, or the smaller of Huffman and raw (ties: raw, const,
/// Huffman, zstd, as the spec's encoder breaks them).
fn plane_without_zstd(plane: &[u8]) -> PlaneChoice {
    if let Some(&first) = plane.first().filter(|&&f| plane.iter().all(|&b| b == f)) {
        return PlaneChoice {
            coding: PlaneCoding::Const(first),
            len: 1,
            zstd_below: 0,
        };
    }
    let per_stream = stream_counts(plane.len(), 256, |i| usize::from(plane[i]));
    let counts = total_counts(&per_stream, 256);
    let huff = huffman::code_lengths(&counts).map(|lengths| {
        let est = huffman::coded_bits(&counts, &lengths).div_ceil(8) as usize
            + huffman::table_bytes(&lengths)
            + 4 * STREAMS;
        (est, lengths)
    });
    match huff {
        // Huffman unless zstd is smaller than the estimate (the actual length can be a few bytes
        // more: each stream ends on a byte).
        Some((est, lengths)) if est < plane.len() => {
            let bits = stream_bits(&per_stream, 256, &lengths, 0, 0);
            PlaneChoice {
                len: huffman::section_len(&lengths, &bits),
                coding: PlaneCoding::Huffman(lengths),
                zstd_below: est,
            }
        }
        _ => PlaneChoice {
            coding: PlaneCoding::Raw,
            len: plane.len(),
            zstd_below: plane.len(),
        },
    }
}

pub(crate) struct Encoder {
    zstd: zstd::bulk::Compressor<'static>,
    scratch: Vec<u8>,
}

impl Encoder {
    pub(crate) fn new(zstd_level: i32) -> Result<Self, PlanesError> {
        Ok(Encoder {
            zstd: zstd::bulk::Compressor::new(zstd_level)
                .map_err(|e| PlanesError::ZstdEncode(e.to_string()))?,
            scratch: Vec::new(),
        })
    }

    /// A block in the smaller of fields mode and planes mode (`layout`; ties: planes): the mode
    /// and the body.
    pub(crate) fn auto(&mut self, dtype: DType, layout: Layout, block: &[u8]) -> (u8, Vec<u8>) {
        let fields = FieldsPlan::new(dtype, block);
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.resize(block.len(), 0);
        layout::split(layout, dtype, block, &mut scratch);
        let n = block.len() / layout.planes(dtype);
        let planes: Vec<&[u8]> = scratch.chunks(n.max(1)).collect();
        let choices = self.choose_planes(&planes, fields.as_ref().map(|f| f.len));
        let planes_len = 1 + choices.iter().map(|c| 5 + c.len).sum::<usize>();
        let out = match fields {
            Some(f) if f.len < planes_len => (MODE_FIELDS, f.write(dtype, block)),
            _ => (
                MODE_PLANES,
                write_planes(layout, &planes, choices, planes_len),
            ),
        };
        self.scratch = scratch;
        out
    }

    /// Each plane's coding. zstd runs on the planes whose other codings are largest first; a
    /// pass is cut short once its size could no longer change the outcome: once the plane's
    /// Huffman or raw coding is as small, or once planes mode is certain to be larger than
    /// `fields_len` (then the planes' codings do not matter, and the body length they give is
    /// still larger than `fields_len`).
    fn choose_planes(&mut self, planes: &[&[u8]], fields_len: Option<usize>) -> Vec<PlaneChoice> {
        let mut choices: Vec<PlaneChoice> = planes.iter().map(|p| plane_without_zstd(p)).collect();
        let mut order: Vec<usize> = (0..planes.len()).collect();
        order.sort_by_key(|&i| Reverse(choices[i].len));
        // The least each plane's payload can be: exact once decided, else 1 byte.
        let mut least: Vec<usize> = choices
            .iter()
            .map(|c| if c.zstd_below == 0 { c.len } else { 1 })
            .collect();
        for i in order {
            if choices[i].zstd_below == 0 {
                continue;
            }
            let mut cap = choices[i].zstd_below - 1;
            if let Some(f) = fields_len {
                let others: usize = least
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != i)
                    .map(|(_, l)| l)
                    .sum();
                cap = cap.min(f.saturating_sub(1 + 5 * planes.len() + others));
            }
            if let Some(z) = zstd_within(&mut self.zstd, planes[i], cap) {
                choices[i].len = z.len();
                choices[i].coding = PlaneCoding::Zstd(z);
            }
            choices[i].zstd_below = 0;
            least[i] = choices[i].len;
        }
        choices
    }

    /// A planes-mode body with every plane zstd-compressed (the baselines' coding).
    pub(crate) fn planes_zstd(
        &mut self,
        dtype: DType,
        layout: Layout,
        block: &[u8],
    ) -> Result<Vec<u8>, PlanesError> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.resize(block.len(), 0);
        layout::split(layout, dtype, block, &mut scratch);
        let mut out = vec![layout.code()];
        let n = block.len() / layout.planes(dtype);
        for plane in scratch.chunks(n.max(1)) {
            let z = self
                .zstd
                .compress(plane)
                .map_err(|e| PlanesError::ZstdEncode(e.to_string()))?;
            out.push(CODEC_ZSTD);
            out.extend_from_slice(&(z.len() as u32).to_le_bytes());
            out.extend_from_slice(&z);
        }
        self.scratch = scratch;
        Ok(out)
    }
}

/// A planes-mode body: the layout, then each plane's codec, length and payload.
fn write_planes(
    layout: Layout,
    planes: &[&[u8]],
    choices: Vec<PlaneChoice>,
    body_len: usize,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(body_len);
    out.push(layout.code());
    for (plane, c) in planes.iter().zip(choices) {
        let codec = match &c.coding {
            PlaneCoding::Raw => CODEC_RAW,
            PlaneCoding::Const(_) => CODEC_CONST,
            PlaneCoding::Zstd(_) => CODEC_ZSTD,
            PlaneCoding::Huffman(_) => CODEC_HUFFMAN,
        };
        out.push(codec);
        out.extend_from_slice(&(c.len as u32).to_le_bytes());
        match c.coding {
            PlaneCoding::Raw => out.extend_from_slice(plane),
            PlaneCoding::Const(b) => out.push(b),
            PlaneCoding::Zstd(z) => out.extend_from_slice(&z),
            PlaneCoding::Huffman(lengths) => {
                huffman::encode_section(&lengths, plane, 1, 0, &mut out)
            }
        }
    }
    debug_assert_eq!(out.len(), body_len);
    out
}

#[cfg(test)]
mod tests;
