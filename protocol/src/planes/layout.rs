//! How a block of elements is split into byte planes and put back together.
//!
//! *Field planes* move the bits of a float so its whole exponent is one byte: for f16 and bf16 plane 0
//! is bits 7..=14 (bf16: the 8-bit exponent; f16: the 5-bit exponent and the top 3 mantissa bits) and
//! plane 1 is the sign (bit 7) with mantissa bits 0..=6; for f32 plane 0 is the exponent (bits
//! 23..=30), plane 1 the sign with mantissa bits 16..=22, planes 2 and 3 mantissa bits 8..=15 and
//! 0..=7. *Byte planes* put byte `k` of every element in plane `k`; *bytes* keeps the block as is.

use crate::dtype::DType;

/// How a planes-mode block splits its elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    /// One plane: the bytes as they are.
    Bytes,
    /// Plane `k` holds byte `k` (little-endian) of every element.
    BytePlanes,
    /// Exponent bits in one plane, sign and mantissa in the others (f16, bf16, f32 only).
    FieldPlanes,
}

impl Layout {
    pub const fn code(self) -> u8 {
        match self {
            Layout::Bytes => 0,
            Layout::BytePlanes => 1,
            Layout::FieldPlanes => 2,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        [Layout::Bytes, Layout::BytePlanes, Layout::FieldPlanes]
            .into_iter()
            .find(|l| l.code() == code)
    }

    pub const fn applies_to(self, dtype: DType) -> bool {
        match self {
            Layout::Bytes | Layout::BytePlanes => true,
            Layout::FieldPlanes => matches!(dtype, DType::F16 | DType::BF16 | DType::F32),
        }
    }

    /// Number of planes of a block of `dtype` elements.
    pub const fn planes(self, dtype: DType) -> usize {
        match self {
            Layout::Bytes => 1,
            Layout::BytePlanes | Layout::FieldPlanes => dtype.size(),
        }
    }
}

#[inline(always)]
fn split16(v: u16) -> [u8; 2] {
    [(v >> 7) as u8, (((v >> 8) & 0x80) | (v & 0x7f)) as u8]
}

#[inline(always)]
fn merge16(p0: u8, p1: u8) -> u16 {
    (u16::from(p1 & 0x80) << 8) | (u16::from(p0) << 7) | u16::from(p1 & 0x7f)
}

#[inline(always)]
fn split32(v: u32) -> [u8; 4] {
    [
        (v >> 23) as u8,
        (((v >> 24) & 0x80) | ((v >> 16) & 0x7f)) as u8,
        (v >> 8) as u8,
        v as u8,
    ]
}

#[inline(always)]
fn merge32(p: [u8; 4]) -> u32 {
    (u32::from(p[1] & 0x80) << 24)
        | (u32::from(p[0]) << 23)
        | (u32::from(p[1] & 0x7f) << 16)
        | (u32::from(p[2]) << 8)
        | u32::from(p[3])
}

/// Splits `block` (whole elements of `dtype`) into `planes` (same length; plane `k` at
/// `k·n..(k+1)·n` for `n` elements).
pub(crate) fn split(layout: Layout, dtype: DType, block: &[u8], planes: &mut [u8]) {
    let e = dtype.size();
    let n = block.len() / e;
    match (layout, e) {
        (Layout::Bytes, _) | (_, 1) => planes.copy_from_slice(block),
        (Layout::FieldPlanes, 2) => {
            let (p0, p1) = planes.split_at_mut(n);
            for ((c, a), b) in block.chunks_exact(2).zip(p0).zip(p1) {
                [*a, *b] = split16(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        (Layout::FieldPlanes, 4) => {
            let (p01, p23) = planes.split_at_mut(2 * n);
            let (p0, p1) = p01.split_at_mut(n);
            let (p2, p3) = p23.split_at_mut(n);
            for ((((c, a), b), x), y) in block.chunks_exact(4).zip(p0).zip(p1).zip(p2).zip(p3) {
                [*a, *b, *x, *y] = split32(u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
            }
        }
        (_, 2) => {
            let (p0, p1) = planes.split_at_mut(n);
            for ((c, a), b) in block.chunks_exact(2).zip(p0).zip(p1) {
                [*a, *b] = [c[0], c[1]];
            }
        }
        _ => {
            for (i, c) in block.chunks_exact(e).enumerate() {
                for (k, &byte) in c.iter().enumerate() {
                    planes[k * n + i] = byte;
                }
            }
        }
    }
}

/// Inverse of [`split`]: `planes` back into the elements of `out` (same length).
pub(crate) fn merge(layout: Layout, dtype: DType, planes: &[u8], out: &mut [u8]) {
    let e = dtype.size();
    let n = out.len() / e;
    match (layout, e) {
        (Layout::Bytes, _) | (_, 1) => out.copy_from_slice(planes),
        (Layout::FieldPlanes, 2) => {
            let (p0, p1) = planes.split_at(n);
            for ((o, &a), &b) in out.chunks_exact_mut(2).zip(p0).zip(p1) {
                o.copy_from_slice(&merge16(a, b).to_le_bytes());
            }
        }
        (Layout::FieldPlanes, 4) => {
            let (p01, p23) = planes.split_at(2 * n);
            let (p0, p1) = p01.split_at(n);
            let (p2, p3) = p23.split_at(n);
            for ((((o, &a), &b), &x), &y) in out.chunks_exact_mut(4).zip(p0).zip(p1).zip(p2).zip(p3)
            {
                o.copy_from_slice(&merge32([a, b, x, y]).to_le_bytes());
            }
        }
        (_, 2) => {
            let (p0, p1) = planes.split_at(n);
            for ((o, &a), &b) in out.chunks_exact_mut(2).zip(p0).zip(p1) {
                o.copy_from_slice(&[a, b]);
            }
        }
        (_, 4) => {
            let (p01, p23) = planes.split_at(2 * n);
            let (p0, p1) = p01.split_at(n);
            let (p2, p3) = p23.split_at(n);
            for ((((o, &a), &b), &x), &y) in out.chunks_exact_mut(4).zip(p0).zip(p1).zip(p2).zip(p3)
            {
                o.copy_from_slice(&[a, b, x, y]);
            }
        }
        _ => {
            for (i, c) in out.chunks_exact_mut(e).enumerate() {
                for (k, byte) in c.iter_mut().enumerate() {
                    *byte = planes[k * n + i];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn exponent_lands_in_plane_zero() {
        // bf16 1.0 = 0x3f80: exponent 127, mantissa 0, sign 0.
        assert_eq!(split16(0x3f80), [127, 0]);
        // bf16 -1.5 = 0xbfc0: exponent 127, sign 1, top mantissa bit 1.
        assert_eq!(split16(0xbfc0), [127, 0xc0]);
        // f32 -1.0 = 0xbf80_0000.
        assert_eq!(split32(0xbf80_0000), [127, 0x80, 0, 0]);
    }

    proptest! {
        #[test]
        fn split_merge_round_trip(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
            d in proptest::sample::select(DType::ALL.to_vec()),
            l in proptest::sample::select(vec![Layout::Bytes, Layout::BytePlanes, Layout::FieldPlanes]),
        ) {
            prop_assume!(l.applies_to(d));
            let len = bytes.len() / d.size() * d.size();
            let block = &bytes[..len];
            let mut planes = vec![0u8; len];
            split(l, d, block, &mut planes);
            let mut out = vec![0u8; len];
            merge(l, d, &planes, &mut out);
            prop_assert_eq!(&out[..], block);
        }
    }

    #[test]
    fn field_bits_are_a_permutation() {
        for v in 0..=u16::MAX {
            let [a, b] = split16(v);
            assert_eq!(merge16(a, b), v);
        }
        for v in [
            0u32,
            1,
            0x8000_0000,
            0x7f80_0001,
            0xffff_ffff,
            0x3f80_1234,
            0x0040_0000,
        ] {
            assert_eq!(merge32(split32(v)), v);
        }
    }
}
