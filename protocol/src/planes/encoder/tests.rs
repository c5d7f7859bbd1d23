#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The encoder against the block coder it replaced, kept here as the reference: code every
//! candidate in full (fields mode; each plane as const, or zstd and Huffman, raw), keep the
//! smallest. The faster encoder must give the same bytes for every block.

use super::*;
use proptest::prelude::*;

/// The reference's plane: its smallest codec (ties: raw, const, Huffman, zstd).
fn reference_plane(zstd: &mut zstd::bulk::Compressor<'_>, plane: &[u8], out: &mut Vec<u8>) {
    let (codec, payload): (u8, Vec<u8>) =
        if let Some(&first) = plane.first().filter(|&&f| plane.iter().all(|&b| b == f)) {
            (CODEC_CONST, vec![first])
        } else {
            let z = zstd.compress(plane).unwrap();
            let mut counts = [0u64; 256];
            for &b in plane {
                counts[usize::from(b)] += 1;
            }
            let huff = huffman::code_lengths(&counts).map(|lengths| {
                let est = huffman::coded_bits(&counts, &lengths).div_ceil(8) as usize
                    + huffman::table_bytes(&lengths)
                    + 4 * STREAMS;
                (est, lengths)
            });
            match huff {
                Some((est, lengths)) if est < plane.len() && est <= z.len() => {
                    let mut h = Vec::new();
                    huffman::encode_section(&lengths, plane, 1, 0, &mut h);
                    (CODEC_HUFFMAN, h)
                }
                _ if z.len() < plane.len() => (CODEC_ZSTD, z),
                _ => (CODEC_RAW, plane.to_vec()),
            }
        };
    out.push(codec);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&payload);
}

/// The reference's fields-mode body.
fn reference_fields(dtype: DType, block: &[u8]) -> Option<Vec<u8>> {
    let width = dtype.size();
    if width > 4 {
        return None;
    }
    let w = 8 * width as u32;
    let r_min = w.saturating_sub(MAX_SYMBOL_BITS);
    let mut counts = vec![0u64; 1 << (w - r_min)];
    for c in block.chunks_exact(width) {
        let mut a = [0u8; 4];
        a[..width].copy_from_slice(c);
        counts[(u32::from_le_bytes(a) >> r_min) as usize] += 1;
    }
    let n = block.len() / width;
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
    let mut out = vec![r as u8];
    huffman::encode_section(&lengths, block, width, r, &mut out);
    Some(out)
}

/// The reference's block: planes mode coded in full, fields mode coded in full, the smaller.
fn reference_block(dtype: DType, layout: Layout, block: &[u8], level: i32) -> (u8, Vec<u8>) {
    let mut zstd = zstd::bulk::Compressor::new(level).unwrap();
    let mut scratch = vec![0u8; block.len()];
    layout::split(layout, dtype, block, &mut scratch);
    let mut planes = vec![layout.code()];
    let n = block.len() / layout.planes(dtype);
    for plane in scratch.chunks(n.max(1)) {
        reference_plane(&mut zstd, plane, &mut planes);
    }
    match reference_fields(dtype, block) {
        Some(f) if f.len() < planes.len() => (MODE_FIELDS, f),
        _ => (MODE_PLANES, planes),
    }
}

/// Blocks of several kinds: weight-like floats of several spreads, constant and repetitive
/// planes, random bytes, few distinct values.
fn block(kind: u8, seed: u64, n: usize, dtype: DType) -> Vec<u8> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let value = |next: &mut dyn FnMut() -> u64| -> f32 {
        let u = ((next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
        match kind % 6 {
            0 => u * 0.04,
            1 => u * u * u * 0.1,
            2 => 1.0 + u * 0.01,
            3 => ((next() % 5) as f32 - 2.0) * 0.5,
            4 => f32::from_bits(next() as u32),
            _ => 0.0,
        }
    };
    let mut out = Vec::with_capacity(n * dtype.size());
    for _ in 0..n {
        let v = value(&mut next);
        match dtype {
            DType::BF16 => out.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
            DType::F16 => out.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
            DType::F32 => out.extend_from_slice(&v.to_le_bytes()),
            _ => out.extend_from_slice(&(next() as u8 % 7).to_le_bytes()),
        }
    }
    out
}

fn check(dtype: DType, data: &[u8], level: i32) {
    let layout = if Layout::FieldPlanes.applies_to(dtype) {
        Layout::FieldPlanes
    } else {
        Layout::BytePlanes
    };
    let mut enc = Encoder::new(level).unwrap();
    assert_eq!(
        enc.auto(dtype, layout, data),
        reference_block(dtype, layout, data, level),
        "{dtype}, {} bytes",
        data.len()
    );
}

#[test]
fn large_blocks_match_the_reference() {
    for dtype in [DType::BF16, DType::F16, DType::F32, DType::U8] {
        for kind in 0..6 {
            let n = (1 << 20) / dtype.size();
            check(dtype, &block(kind, 7 + u64::from(kind), n, dtype), 3);
        }
    }
}

#[test]
fn zstd_within_is_exact_or_refuses() {
    let mut z = zstd::bulk::Compressor::new(3).unwrap();
    for kind in 0..6 {
        let data = block(kind, 99, 100_000, DType::BF16);
        let full = zstd::bulk::compress(&data, 3).unwrap();
        for cap in [
            1,
            full.len() / 2,
            full.len() - 1,
            full.len(),
            full.len() + 1,
            1 << 30,
        ] {
            match zstd_within(&mut z, &data, cap) {
                Some(out) => assert_eq!(out, full, "cap {cap}"),
                None => assert!(full.len() > cap, "cap {cap}, full {}", full.len()),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn blocks_match_the_reference(
        kind in 0u8..6,
        seed in any::<u64>(),
        n in 1usize..20_000,
        dtype in prop_oneof![Just(DType::BF16), Just(DType::F16), Just(DType::F32), Just(DType::U8)],
        level in prop_oneof![Just(1), Just(3), Just(9)],
    ) {
        check(dtype, &block(kind, seed, n, dtype), level);
    }

    #[test]
    fn zstd_within_matches_zstd_at_every_cap(
        kind in 0u8..6,
        seed in any::<u64>(),
        n in 1usize..5_000,
        delta in -40i64..40,
    ) {
        let data = block(kind, seed, n, DType::BF16);
        let full = zstd::bulk::compress(&data, 3).unwrap();
        let cap = (full.len() as i64 + delta).max(0) as usize;
        let mut z = zstd::bulk::Compressor::new(3).unwrap();
        match zstd_within(&mut z, &data, cap) {
            Some(out) => prop_assert_eq!(out, full),
            None => prop_assert!(full.len() > cap),
        }
    }
}
