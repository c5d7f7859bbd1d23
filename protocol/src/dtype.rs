//! Element types of tensors, their safetensors names, their codes in the `.bitdelta` format, and the
//! exact conversions to and from f32 that reconstruction is defined with.

use half::{bf16, f16};

/// A tensor element type (the safetensors set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum DType {
    Bool,
    U8,
    I8,
    U16,
    I16,
    F16,
    BF16,
    U32,
    I32,
    F32,
    U64,
    I64,
    F64,
    /// 8-bit float, 4 exponent bits, 3 mantissa bits (OCP FP8 E4M3); stored and moved losslessly,
    /// never quantized.
    #[serde(rename = "F8_E4M3")]
    F8E4M3,
    /// 8-bit float, 5 exponent bits, 2 mantissa bits (OCP FP8 E5M2); stored and moved losslessly,
    /// never quantized.
    #[serde(rename = "F8_E5M2")]
    F8E5M2,
}

impl DType {
    pub const ALL: [DType; 15] = [
        DType::Bool,
        DType::U8,
        DType::I8,
        DType::U16,
        DType::I16,
        DType::F16,
        DType::BF16,
        DType::U32,
        DType::I32,
        DType::F32,
        DType::U64,
        DType::I64,
        DType::F64,
        DType::F8E4M3,
        DType::F8E5M2,
    ];

    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            DType::Bool | DType::U8 | DType::I8 | DType::F8E4M3 | DType::F8E5M2 => 1,
            DType::U16 | DType::I16 | DType::F16 | DType::BF16 => 2,
            DType::U32 | DType::I32 | DType::F32 => 4,
            DType::U64 | DType::I64 | DType::F64 => 8,
        }
    }

    /// The name safetensors uses in its JSON header.
    pub const fn safetensors_name(self) -> &'static str {
        match self {
            DType::Bool => "BOOL",
            DType::U8 => "U8",
            DType::I8 => "I8",
            DType::U16 => "U16",
            DType::I16 => "I16",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::U32 => "U32",
            DType::I32 => "I32",
            DType::F32 => "F32",
            DType::U64 => "U64",
            DType::I64 => "I64",
            DType::F64 => "F64",
            DType::F8E4M3 => "F8_E4M3",
            DType::F8E5M2 => "F8_E5M2",
        }
    }

    pub fn from_safetensors_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.safetensors_name() == name)
    }

    /// The one-byte code of this dtype in a `.bitdelta` tensor index (docs/spec/bitdelta.md).
    pub const fn code(self) -> u8 {
        match self {
            DType::Bool => 0,
            DType::U8 => 1,
            DType::I8 => 2,
            DType::U16 => 3,
            DType::I16 => 4,
            DType::F16 => 5,
            DType::BF16 => 6,
            DType::U32 => 7,
            DType::I32 => 8,
            DType::F32 => 9,
            DType::U64 => 10,
            DType::I64 => 11,
            DType::F64 => 12,
            DType::F8E4M3 => 13,
            DType::F8E5M2 => 14,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.code() == code)
    }

    /// Whether zdn can quantize a delta of this type: the floating types reconstruction is defined for.
    pub const fn is_quantizable(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    /// Bit pattern of the canonical quiet NaN that reconstruction writes for any NaN result.
    pub(crate) const fn canonical_nan_bits(self) -> u32 {
        match self {
            DType::F16 => 0x7e00,
            DType::BF16 => 0x7fc0,
            _ => 0x7fc0_0000,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.safetensors_name())
    }
}

/// A quantizable element type: exact conversion to f32 and round-to-nearest-even conversion from it.
pub(crate) trait FloatElem: Copy {
    const SIZE: usize;
    /// The dtype this is (the runtime-selected kernels dispatch on it).
    const DTYPE: DType;
    fn read(bytes: &[u8]) -> f32;
    /// Rounds `v` to this type with round-to-nearest-even; NaN becomes the canonical quiet NaN.
    fn write(v: f32, out: &mut [u8]);
}

#[derive(Clone, Copy)]
pub(crate) struct F32;
#[derive(Clone, Copy)]
pub(crate) struct F16;
#[derive(Clone, Copy)]
pub(crate) struct BF16;

impl FloatElem for F32 {
    const SIZE: usize = 4;
    const DTYPE: DType = DType::F32;
    #[inline(always)]
    fn read(b: &[u8]) -> f32 {
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
    #[inline(always)]
    fn write(v: f32, out: &mut [u8]) {
        let bits = if v.is_nan() {
            DType::F32.canonical_nan_bits()
        } else {
            v.to_bits()
        };
        out[..4].copy_from_slice(&bits.to_le_bytes());
    }
}

impl FloatElem for F16 {
    const SIZE: usize = 2;
    const DTYPE: DType = DType::F16;
    #[inline(always)]
    fn read(b: &[u8]) -> f32 {
        f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
    }
    #[inline(always)]
    fn write(v: f32, out: &mut [u8]) {
        let bits = if v.is_nan() {
            0x7e00
        } else {
            f16::from_f32(v).to_bits()
        };
        out[..2].copy_from_slice(&bits.to_le_bytes());
    }
}

impl FloatElem for BF16 {
    const SIZE: usize = 2;
    const DTYPE: DType = DType::BF16;
    #[inline(always)]
    fn read(b: &[u8]) -> f32 {
        f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)
    }
    #[inline(always)]
    fn write(v: f32, out: &mut [u8]) {
        let bits = if v.is_nan() {
            0x7fc0
        } else {
            bf16::from_f32(v).to_bits()
        };
        out[..2].copy_from_slice(&bits.to_le_bytes());
    }
}

/// Reads element `i` of a little-endian float buffer of type `dtype` as f32 (exact for f16/bf16/f32).
/// Returns `None` for a non-quantizable dtype.
pub fn read_f32(dtype: DType, bytes: &[u8], i: usize) -> Option<f32> {
    let start = i.checked_mul(dtype.size())?;
    let b = bytes.get(start..start.checked_add(dtype.size())?)?;
    match dtype {
        DType::F32 => Some(F32::read(b)),
        DType::F16 => Some(F16::read(b)),
        DType::BF16 => Some(BF16::read(b)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Independent round-to-nearest-even f32 → bf16, written from the definition.
    fn bf16_rne_reference(v: f32) -> u16 {
        let bits = v.to_bits();
        let upper = (bits >> 16) as u16;
        let lower = bits & 0xffff;
        let round_up = lower > 0x8000 || (lower == 0x8000 && (upper & 1) == 1);
        if round_up {
            upper.wrapping_add(1)
        } else {
            upper
        }
    }

    #[test]
    fn codes_and_names_round_trip() {
        for d in DType::ALL {
            assert_eq!(DType::from_code(d.code()), Some(d));
            assert_eq!(DType::from_safetensors_name(d.safetensors_name()), Some(d));
        }
        assert_eq!(DType::from_code(15), None);
        assert_eq!(DType::from_code(200), None);
        // The safetensors names of the FP8 types, and their codes (docs/spec/bitdelta.md § 2.1).
        assert_eq!(DType::from_safetensors_name("F8_E4M3"), Some(DType::F8E4M3));
        assert_eq!(DType::from_safetensors_name("F8_E5M2"), Some(DType::F8E5M2));
        assert_eq!(DType::F8E4M3.code(), 13);
        assert_eq!(DType::F8E5M2.code(), 14);
        assert_eq!(DType::F8E4M3.size(), 1);
        assert!(!DType::F8E4M3.is_quantizable() && !DType::F8E5M2.is_quantizable());
        assert_eq!(DType::from_safetensors_name("F8_E4M3FNUZ"), None);
        // JSON reports name the FP8 types as safetensors does.
        for d in [DType::F8E4M3, DType::F8E5M2] {
            assert_eq!(
                serde_json::to_string(&d).unwrap(),
                format!("\"{}\"", d.safetensors_name())
            );
        }
    }

    #[test]
    fn nan_is_canonical() {
        let mut b = [0u8; 4];
        F32::write(f32::from_bits(0xffc1_2345), &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x7fc0_0000);
        F16::write(f32::NAN, &mut b[..2]);
        assert_eq!(u16::from_le_bytes([b[0], b[1]]), 0x7e00);
        BF16::write(-f32::NAN, &mut b[..2]);
        assert_eq!(u16::from_le_bytes([b[0], b[1]]), 0x7fc0);
    }

    #[test]
    fn f16_ties_go_to_even() {
        // 1 + 2^-11 is exactly halfway between 1.0 and the next f16 (1 + 2^-10): rounds to even 1.0.
        let mut b = [0u8; 2];
        F16::write(1.0 + f32::powi(2.0, -11), &mut b);
        assert_eq!(u16::from_le_bytes(b), 0x3c00);
        // 1 + 3·2^-11 is halfway between 1+2^-10 (odd) and 1+2^-9 (even): rounds up.
        F16::write(1.0 + 3.0 * f32::powi(2.0, -11), &mut b);
        assert_eq!(u16::from_le_bytes(b), 0x3c02);
        // Overflow rounds to infinity.
        F16::write(1.0e6, &mut b);
        assert_eq!(u16::from_le_bytes(b), 0x7c00);
    }

    proptest! {
        #[test]
        fn bf16_matches_reference_rne(bits in any::<u32>()) {
            let v = f32::from_bits(bits);
            prop_assume!(!v.is_nan());
            let mut b = [0u8; 2];
            BF16::write(v, &mut b);
            prop_assert_eq!(u16::from_le_bytes(b), bf16_rne_reference(v));
        }

        #[test]
        fn half_types_round_trip_exactly(bits in any::<u16>()) {
            let bytes = bits.to_le_bytes();
            for (read, write) in [
                (F16::read as fn(&[u8]) -> f32, F16::write as fn(f32, &mut [u8])),
                (BF16::read, BF16::write),
            ] {
                let v = read(&bytes);
                prop_assume!(!v.is_nan());
                let mut out = [0u8; 2];
                write(v, &mut out);
                prop_assert_eq!(out, bytes);
            }
        }
    }
}
