//! Where a delta's tensors go in device memory and what reconstructing each one takes, worked out on
//! the host before anything is uploaded or launched. Pure: the unit tests run plans through the host
//! build of the kernels (src/emulate.rs) against the Rust reference.
//!
//! Three device allocations ("arenas") take part in a fine-tune switch: the resident base (one tensor
//! after another), the delta's upload, and the weights the switch writes. The upload holds only what
//! the host sends: each quantized block verbatim (its f32 scales, then its packed codes, exactly as in
//! the file), and the reconstructed bytes of the few lossless tensors (`raw`/`xor`: norms and biases,
//! decoded on the host where the base's bytes are). `unchanged`/`base` tensors are copied from the
//! resident base on the device. Every placement starts at a multiple of [`DEVICE_ALIGN`].

use zdn_protocol::bitdelta::{
    check_base_layout, check_inputs, quantized_block, reconstruct, BitDeltaFile, Encoding,
    ReconstructError, TensorData,
};
use zdn_protocol::DType;

use crate::kernel::{FloatType, Geometry, KernelParams, DEVICE_ALIGN};

/// Why a delta cannot be planned on a base.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Reconstruct(#[from] ReconstructError),
    #[error("tensor {0:?}: its device placement overflows 64 bits")]
    Overflow(String),
    #[error("tensor {name:?}: {dtype} cannot be reconstructed by the GPU kernels")]
    Dtype { name: String, dtype: DType },
    #[error("the {arena} arena is {have} bytes, the plan needs {need}")]
    ArenaSize {
        arena: &'static str,
        have: u64,
        need: u64,
    },
    #[error("base tensor #{0} has no device placement")]
    BaseIndex(usize),
    #[error("the plan was made for another delta (tensor {0:?})")]
    Mismatch(String),
}

/// Pieces placed one after another in one allocation, each at a multiple of [`DEVICE_ALIGN`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArenaLayout {
    len: u64,
}

impl ArenaLayout {
    /// The offset of a new piece of `bytes` bytes; `None` on overflow.
    pub fn place(&mut self, bytes: u64) -> Option<u64> {
        let offset = self.len.checked_next_multiple_of(DEVICE_ALIGN)?;
        self.len = offset.checked_add(bytes)?;
        Some(offset)
    }

    /// Bytes the allocation needs.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The base tensors as placed on the device: what a plan checks entries against.
pub trait BaseLayout {
    /// The index, dtype and shape of the base tensor `name`.
    fn find(&self, name: &str) -> Option<(usize, DType, &[u64])>;
}

/// The base tensors' bytes in host memory: what lossless (`xor`) tensors are decoded against.
pub trait HostBase {
    fn tensor(&self, name: &str) -> Option<TensorData<'_>>;
}

/// How one tensor of the weights is produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TensorOp {
    /// An empty tensor: nothing to do.
    Empty,
    /// The kernel: base tensor `base` + the block uploaded at `scales_offset` (scales) and
    /// `codes_offset` (codes).
    Quantized {
        bits: u32,
        base: usize,
        base_type: FloatType,
        target: FloatType,
        geometry: Geometry,
        scales_offset: u64,
        codes_offset: u64,
    },
    /// A copy of base tensor `base` (`unchanged` and `base` entries).
    CopyBase { base: usize },
    /// A copy of the bytes uploaded at `offset` (`raw`/`xor` entries, reconstructed on the host).
    CopyUpload { offset: u64 },
}

/// One tensor of the weights.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorPlan {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    /// Its place in the weights arena.
    pub out_offset: u64,
    pub out_len: u64,
    pub op: TensorOp,
}

/// A delta planned on a resident base: the tensors in the delta's index order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeltaPlan {
    pub tensors: Vec<TensorPlan>,
    /// Bytes of the upload arena.
    pub upload_len: u64,
    /// Bytes of the weights arena.
    pub weights_len: u64,
}

/// One device operation of a switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Launch {
        bits: u32,
        base: FloatType,
        target: FloatType,
        blocks: u32,
        params: KernelParams,
    },
    Copy {
        src: u64,
        dst: u64,
        len: u64,
    },
}

impl DeltaPlan {
    /// Plans `file` on `base`, checking every entry as a reader must before using it (docs/spec/bitdelta.md
    /// § 5, rules 7 and 9: base presence, shape and dtype; block length, finite scales, zero padding).
    /// Lossless blocks are checked when they are decoded for the upload.
    pub fn new(file: &BitDeltaFile<'_>, base: &impl BaseLayout) -> Result<DeltaPlan, PlanError> {
        let mut upload = ArenaLayout::default();
        let mut weights = ArenaLayout::default();
        let mut tensors = Vec::with_capacity(file.entries.len());
        for (i, e) in file.entries.iter().enumerate() {
            let overflow = || PlanError::Overflow(e.name.clone());
            let found = base.find(&e.name);
            check_base_layout(e, found.map(|(_, d, s)| (d, s)))?;
            let out_len = e.shape.iter().try_fold(e.dtype.size() as u64, |a, &d| {
                a.checked_mul(d).ok_or_else(overflow)
            })?;
            let out_offset = weights.place(out_len).ok_or_else(overflow)?;
            let block = file.block(i);
            let base_missing = || PlanError::from(ReconstructError::BaseMissing(e.name.clone()));
            // Checked whatever the size: an empty tensor's scale must be finite too.
            let quantized = quantized_block(e, block)?;
            let op = match (quantized, e.encoding) {
                _ if out_len == 0 => TensorOp::Empty,
                (Some(q), _) => {
                    let (b, bd, _) = found.ok_or_else(base_missing)?;
                    let dtype_err = |dtype| PlanError::Dtype {
                        name: e.name.clone(),
                        dtype,
                    };
                    let base_type = FloatType::of(bd).ok_or_else(|| dtype_err(bd))?;
                    let target = FloatType::of(e.dtype).ok_or_else(|| dtype_err(e.dtype))?;
                    let geometry = Geometry::new(&e.shape, e.granularity).ok_or_else(overflow)?;
                    let scales_offset = upload.place(block.len() as u64).ok_or_else(overflow)?;
                    TensorOp::Quantized {
                        bits: q.bits,
                        base: b,
                        base_type,
                        target,
                        geometry,
                        scales_offset,
                        codes_offset: scales_offset + q.scale_bytes.len() as u64,
                    }
                }
                (None, Encoding::Raw | Encoding::Xor) => TensorOp::CopyUpload {
                    offset: upload.place(out_len).ok_or_else(overflow)?,
                },
                (None, _) => TensorOp::CopyBase {
                    base: found.ok_or_else(base_missing)?.0,
                },
            };
            tensors.push(TensorPlan {
                name: e.name.clone(),
                dtype: e.dtype,
                shape: e.shape.clone(),
                out_offset,
                out_len,
                op,
            });
        }
        Ok(DeltaPlan {
            tensors,
            upload_len: upload.len(),
            weights_len: weights.len(),
        })
    }

    /// Whether the weights of `other` have the same layout (names, dtypes, shapes, hence offsets):
    /// switching between the two then rewrites the same buffer in place.
    pub fn same_weights_layout(&self, other: &DeltaPlan) -> bool {
        self.weights_len == other.weights_len
            && self.tensors.len() == other.tensors.len()
            && self.tensors.iter().zip(&other.tensors).all(|(a, b)| {
                a.name == b.name
                    && a.dtype == b.dtype
                    && a.shape == b.shape
                    && a.out_offset == b.out_offset
            })
    }

    /// The device operations of a switch: `base` holds each base tensor's (address, length) by
    /// index, `upload` and `weights` are the addresses of arenas of `upload_len` and `weights_len`
    /// bytes (checked by the caller against its allocations). Every range is checked against them.
    pub fn steps(
        &self,
        base: &[(u64, u64)],
        upload: u64,
        weights: u64,
    ) -> Result<Vec<Step>, PlanError> {
        let mut steps = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            let overflow = || PlanError::Overflow(t.name.clone());
            let dst = weights.checked_add(t.out_offset).ok_or_else(overflow)?;
            let base_of = |b: usize| base.get(b).copied().ok_or(PlanError::BaseIndex(b));
            match &t.op {
                TensorOp::Empty => {}
                TensorOp::Quantized {
                    bits,
                    base: b,
                    base_type,
                    target,
                    geometry,
                    scales_offset,
                    codes_offset,
                } => {
                    let (base_addr, base_len) = base_of(*b)?;
                    let need = geometry
                        .numel
                        .checked_mul(base_type.dtype().size() as u64)
                        .ok_or_else(overflow)?;
                    if base_len < need {
                        return Err(PlanError::ArenaSize {
                            arena: "base tensor",
                            have: base_len,
                            need,
                        });
                    }
                    let params = KernelParams::new(
                        geometry,
                        dst,
                        base_addr,
                        upload.checked_add(*scales_offset).ok_or_else(overflow)?,
                        upload.checked_add(*codes_offset).ok_or_else(overflow)?,
                    );
                    steps.push(Step::Launch {
                        bits: *bits,
                        base: *base_type,
                        target: *target,
                        blocks: geometry.blocks(),
                        params,
                    });
                }
                TensorOp::CopyBase { base: b } => {
                    let (src, len) = base_of(*b)?;
                    if len != t.out_len {
                        return Err(PlanError::ArenaSize {
                            arena: "base tensor",
                            have: len,
                            need: t.out_len,
                        });
                    }
                    steps.push(Step::Copy {
                        src,
                        dst,
                        len: t.out_len,
                    });
                }
                TensorOp::CopyUpload { offset } => steps.push(Step::Copy {
                    src: upload.checked_add(*offset).ok_or_else(overflow)?,
                    dst,
                    len: t.out_len,
                }),
            }
        }
        Ok(steps)
    }

    /// The upload's contents, piece by piece: `put(offset, bytes)` with each quantized block as the
    /// file stores it, and each lossless tensor reconstructed here by the reference against the
    /// host's base (its frame checked: docs/spec/bitdelta.md § 5, rules 8 and 10). Host memory: one lossless
    /// tensor at a time.
    pub fn upload_pieces<E: From<PlanError>>(
        &self,
        file: &BitDeltaFile<'_>,
        host: &dyn HostBase,
        mut put: impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        if file.entries.len() != self.tensors.len() {
            return Err(PlanError::Mismatch(String::new()).into());
        }
        let mut buf = Vec::new();
        for (i, (t, e)) in self.tensors.iter().zip(&file.entries).enumerate() {
            if t.name != e.name {
                return Err(PlanError::Mismatch(e.name.clone()).into());
            }
            let block = file.block(i);
            match (&t.op, e.encoding) {
                (TensorOp::Quantized { scales_offset, .. }, _) => put(*scales_offset, block)?,
                (TensorOp::CopyUpload { .. } | TensorOp::Empty, Encoding::Raw | Encoding::Xor) => {
                    let base = host.tensor(&e.name);
                    check_inputs(e, block, base.as_ref()).map_err(PlanError::from)?;
                    buf.clear();
                    buf.resize(t.out_len as usize, 0);
                    reconstruct(e, block, base.as_ref(), &mut buf).map_err(PlanError::from)?;
                    if let TensorOp::CopyUpload { offset } = t.op {
                        put(offset, &buf)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Bytes a switch moves through device memory: every base element and block byte read, every
    /// weight written (copies count their bytes read and written).
    pub fn bytes_moved(&self) -> u64 {
        self.tensors
            .iter()
            .map(|t| match &t.op {
                TensorOp::Empty => 0,
                TensorOp::Quantized {
                    bits,
                    base_type,
                    geometry,
                    scales_offset,
                    codes_offset,
                    ..
                } => {
                    geometry.numel * base_type.dtype().size() as u64
                        + (codes_offset - scales_offset)
                        + (geometry.numel * u64::from(*bits)).div_ceil(8)
                        + t.out_len
                }
                TensorOp::CopyBase { .. } | TensorOp::CopyUpload { .. } => 2 * t.out_len,
            })
            .sum()
    }
}

#[cfg(test)]
mod tests;
