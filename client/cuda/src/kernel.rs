//! The kernels as the host sees them: the PTX text, their names, the parameter block each launch
//! takes, and the group geometry of a tensor in the kernels' terms. Pure: tested without a GPU.

use zdn_protocol::bitdelta::{matrix_of, Granularity};
use zdn_protocol::DType;

/// The reconstruction kernels, PTX for sm_70 (PTX ISA 6.0) built from `kernels/reconstruct.cu` by
/// build.rs. The driver compiles it for the GPU it is loaded on.
pub const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/reconstruct.ptx"));

/// Threads per block of every launch.
pub const THREADS_PER_BLOCK: u32 = 256;

/// The most blocks one launch asks for; the kernels loop over whatever remains (a grid-stride loop),
/// so any tensor the format allows fits.
pub const MAX_BLOCKS: u32 = 1 << 20;

/// Every device placement (tensors, blocks) starts at a multiple of this: the kernels load and store
/// 16 bytes at a time and read codes 4 bytes at a time.
pub const DEVICE_ALIGN: u64 = 256;

/// The bits per code the kernels handle (the format's `sign1`, `bits2`, `bits4`).
pub const BITS: [u32; 3] = [1, 2, 4];

/// The element types the kernels read (base) and write (target): the quantizable dtypes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FloatType {
    F32,
    F16,
    Bf16,
}

impl FloatType {
    pub const ALL: [FloatType; 3] = [FloatType::F32, FloatType::F16, FloatType::Bf16];

    /// The kernel type of a quantizable dtype.
    pub fn of(d: DType) -> Option<FloatType> {
        match d {
            DType::F32 => Some(FloatType::F32),
            DType::F16 => Some(FloatType::F16),
            DType::BF16 => Some(FloatType::Bf16),
            _ => None,
        }
    }

    pub const fn dtype(self) -> DType {
        match self {
            FloatType::F32 => DType::F32,
            FloatType::F16 => DType::F16,
            FloatType::Bf16 => DType::BF16,
        }
    }

    /// The number kernels/reconstruct.cuh gives the type (ZDN_F32, ZDN_F16, ZDN_BF16).
    pub const fn code(self) -> u32 {
        match self {
            FloatType::F32 => 0,
            FloatType::F16 => 1,
            FloatType::Bf16 => 2,
        }
    }

    /// The name used in kernel names.
    pub const fn name(self) -> &'static str {
        match self {
            FloatType::F32 => "f32",
            FloatType::F16 => "f16",
            FloatType::Bf16 => "bf16",
        }
    }
}

/// The kernel for `bits`-bit codes over a `base` tensor giving a `target` one, as named in the PTX;
/// `None` for bits the format does not have.
pub fn kernel_name(bits: u32, base: FloatType, target: FloatType) -> Option<String> {
    BITS.contains(&bits)
        .then(|| format!("zdn_reconstruct_b{bits}_{}_{}", base.name(), target.name()))
}

/// Every kernel: (bits, base, target).
pub fn all_kernels() -> impl Iterator<Item = (u32, FloatType, FloatType)> {
    BITS.into_iter().flat_map(|b| {
        FloatType::ALL
            .into_iter()
            .flat_map(move |s| FloatType::ALL.into_iter().map(move |t| (b, s, t)))
    })
}

/// A tensor's scale groups in the kernels' terms (docs/spec/bitdelta.md § 3): `numel` elements in rows of
/// `row_len`, each row cut into groups of `width` (the last one shorter), `groups_per_row` groups a
/// row; element `i` is in group `(i / row_len)·groups_per_row + (i % row_len) / width`. Tensor
/// granularity is one row of the whole tensor; row granularity has `width = row_len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub numel: u64,
    pub row_len: u64,
    pub width: u64,
    pub groups_per_row: u64,
}

impl Geometry {
    /// The geometry of `shape` at `granularity`; `None` for an empty tensor (nothing to launch) or a
    /// shape whose element count overflows.
    pub fn new(shape: &[u64], granularity: Granularity) -> Option<Geometry> {
        let (rows, cols) = matrix_of(shape);
        let numel = rows.checked_mul(cols)?;
        if numel == 0 {
            return None;
        }
        Some(match granularity {
            Granularity::Tensor => Geometry {
                numel,
                row_len: numel,
                width: numel,
                groups_per_row: 1,
            },
            Granularity::Row => Geometry {
                numel,
                row_len: cols,
                width: cols,
                groups_per_row: 1,
            },
            Granularity::Group(n) => {
                let width = u64::from(n).max(1);
                Geometry {
                    numel,
                    row_len: cols,
                    width,
                    groups_per_row: cols.div_ceil(width),
                }
            }
        })
    }

    /// Scales the kernels read: one per group.
    pub fn n_scales(&self) -> u64 {
        self.numel / self.row_len * self.groups_per_row
    }

    /// The group of element `i` (what the kernels compute, for the tests).
    pub fn group_of(&self, i: u64) -> u64 {
        (i / self.row_len) * self.groups_per_row + (i % self.row_len) / self.width
    }

    /// Octets (8 elements, the last one shorter): one thread's work at a time.
    pub fn octets(&self) -> u64 {
        self.numel.div_ceil(8)
    }

    /// Blocks of [`THREADS_PER_BLOCK`] threads for one launch: one thread per octet, at most
    /// [`MAX_BLOCKS`].
    pub fn blocks(&self) -> u32 {
        let b = self.octets().div_ceil(u64::from(THREADS_PER_BLOCK));
        u32::try_from(b).unwrap_or(MAX_BLOCKS).min(MAX_BLOCKS)
    }
}

/// One launch's parameter block: `struct ZdnParams` of kernels/reconstruct.cuh, field for field.
/// Addresses are device addresses (host addresses in the emulation).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelParams {
    pub out: u64,
    pub base: u64,
    pub scales: u64,
    pub codes: u64,
    pub numel: u64,
    pub row_len: u64,
    pub width: u64,
    pub groups_per_row: u64,
}

impl KernelParams {
    pub fn new(g: &Geometry, out: u64, base: u64, scales: u64, codes: u64) -> KernelParams {
        KernelParams {
            out,
            base,
            scales,
            codes,
            numel: g.numel,
            row_len: g.row_len,
            width: g.width,
            groups_per_row: g.groups_per_row,
        }
    }

    /// Whether the addresses meet the kernels' alignment: 16 bytes for the base and the output
    /// (16-byte loads and stores), 4 for the scales and the codes.
    pub fn is_aligned(&self) -> bool {
        self.out.is_multiple_of(16)
            && self.base.is_multiple_of(16)
            && self.scales.is_multiple_of(4)
            && self.codes.is_multiple_of(4)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use zdn_protocol::bitdelta::scale_count;

    /// The geometry's group of every element is the format's (§ 3, written out here from the spec:
    /// row-major, groups of N within a row, never spanning rows), and its scale count the format's.
    #[test]
    fn geometry_matches_the_format_groups() {
        let shapes: [&[u64]; 9] = [
            &[],
            &[1],
            &[7],
            &[3, 5],
            &[5, 129],
            &[2, 3, 7],
            &[4, 8],
            &[1, 4097],
            &[9, 1, 13],
        ];
        for shape in shapes {
            for g in [
                Granularity::Tensor,
                Granularity::Row,
                Granularity::Group(1),
                Granularity::Group(3),
                Granularity::Group(8),
                Granularity::Group(128),
                Granularity::Group(5000),
            ] {
                let geo = Geometry::new(shape, g).unwrap();
                let (rows, cols) = matrix_of(shape);
                assert_eq!(geo.numel, rows * cols);
                assert_eq!(
                    geo.n_scales(),
                    scale_count(rows, cols, g).unwrap(),
                    "{shape:?} {g}"
                );
                for i in 0..geo.numel {
                    let (r, c) = (i / cols, i % cols);
                    let want = match g {
                        Granularity::Tensor => 0,
                        Granularity::Row => r,
                        Granularity::Group(n) => r * cols.div_ceil(u64::from(n)) + c / u64::from(n),
                    };
                    assert_eq!(geo.group_of(i), want, "{shape:?} {g} element {i}");
                }
            }
        }
        assert_eq!(Geometry::new(&[0, 5], Granularity::Row), None);
        assert_eq!(Geometry::new(&[0, u64::MAX, 3], Granularity::Tensor), None);
    }

    #[test]
    fn launch_sizes() {
        let g = Geometry::new(&[32000, 4096], Granularity::Row).unwrap();
        assert_eq!(g.octets(), 32000 * 4096 / 8);
        assert_eq!(g.blocks(), (32000 * 4096 / 8 / 256) as u32);
        let one = Geometry::new(&[1], Granularity::Tensor).unwrap();
        assert_eq!((one.octets(), one.blocks()), (1, 1));
        // The largest tensor the format allows (2^40 bytes of f16): capped, the kernel loops.
        let huge = Geometry::new(&[1 << 20, 1 << 19], Granularity::Tensor).unwrap();
        assert_eq!(huge.blocks(), MAX_BLOCKS);
    }

    #[test]
    fn names_and_params() {
        assert_eq!(
            kernel_name(1, FloatType::Bf16, FloatType::F16).unwrap(),
            "zdn_reconstruct_b1_bf16_f16"
        );
        assert_eq!(kernel_name(3, FloatType::F32, FloatType::F32), None);
        assert_eq!(all_kernels().count(), 27);
        // The parameter block is eight 8-byte fields, as `struct ZdnParams`.
        assert_eq!(std::mem::size_of::<KernelParams>(), 64);
        let g = Geometry::new(&[2, 3], Granularity::Row).unwrap();
        assert!(KernelParams::new(&g, 256, 512, 1024, 1028).is_aligned());
        assert!(!KernelParams::new(&g, 8, 512, 1024, 1028).is_aligned());
        assert!(!KernelParams::new(&g, 256, 512, 1024, 1030).is_aligned());
    }

    /// The kernels never fuse the product and the sum (docs/spec/bitdelta.md § 4.1) and never flush
    /// subnormals: the PTX has no fused multiply-add of any kind and no `.ftz`; every f32 product and
    /// sum carries the explicit round-to-nearest-even modifier ptxas does not contract; and every
    /// kernel is there.
    #[test]
    fn ptx_has_no_fused_multiply_add() {
        let code: Vec<&str> = PTX
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with("//"))
            .collect();
        for l in &code {
            let op = l.split_whitespace().next().unwrap_or("");
            assert!(!op.starts_with("fma"), "fused multiply-add: {l}");
            assert!(!op.contains(".ftz"), "flush to zero: {l}");
            assert!(
                !(op.starts_with("mad") && op.contains(".f")),
                "float multiply-add: {l}"
            );
            for f in ["add", "sub", "mul"] {
                if op.starts_with(&format!("{f}.")) && op.ends_with(".f32") {
                    assert!(op.contains(".rn."), "f32 {f} without .rn: {l}");
                }
            }
        }
        let count = |op: &str| code.iter().filter(|l| l.starts_with(op)).count();
        // One product per 2- and 4-bit kernel's element (18 kernels × 8 lanes), one sum per element of
        // every kernel (27 × 8): the main path of each kernel, unrolled.
        assert!(count("mul.rn.f32") >= 18 * 8, "{}", count("mul.rn.f32"));
        assert!(count("add.rn.f32") >= 27 * 8, "{}", count("add.rn.f32"));
        assert!(PTX.contains(".target sm_70"));
        for (b, s, t) in all_kernels() {
            let name = kernel_name(b, s, t).unwrap();
            assert!(
                PTX.contains(&format!(".entry {name}(")),
                "{name} missing from the PTX"
            );
        }
    }
}
