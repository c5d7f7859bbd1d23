//! The kernels' own source built for the host (kernels/emulate.cpp, by build.rs), run against the
//! Rust reference: the GPU-independent part of the bit-exactness proof. Everything but the f32
//! product and sum (IEEE `mul.rn`/`add.rn` on the GPU, the same operations here) and the f16
//! conversions (hardware `cvt` on the GPU, the reference's integer code here) is the code the GPU
//! runs: octets, code extraction, group indexing, bf16 rounding, canonical NaNs, tails. zdn-gpu-check
//! runs the same cases on the GPU.

use zdn_protocol::bitdelta::{quantized_block, IndexEntry, ReconstructError, TensorData};

use crate::kernel::{FloatType, Geometry, KernelParams};
use crate::plan::{DeltaPlan, PlanError, Step};

extern "C" {
    /// kernels/emulate.cpp: runs kernel (bits, base, target) over `p`. 0, or -1 for no such kernel.
    fn zdn_emulate(bits: u32, base_dtype: u32, out_dtype: u32, p: *const KernelParams) -> i32;
}

/// Runs one launch on the host.
///
/// # Safety
/// The addresses in `params` are host addresses of buffers that hold the tensor's `numel` base
/// elements, its scales and codes, and `numel` output elements.
unsafe fn launch(bits: u32, base: FloatType, target: FloatType, params: &KernelParams) -> bool {
    // SAFETY: the caller guarantees the buffers; the function reads and writes only within them.
    unsafe { zdn_emulate(bits, base.code(), target.code(), params) == 0 }
}

/// One quantized tensor through the host build of the kernel.
pub(crate) fn reconstruct(
    entry: &IndexEntry,
    block: &[u8],
    base: &TensorData<'_>,
    out: &mut [u8],
) -> Result<(), ReconstructError> {
    let q = quantized_block(entry, block)?.ok_or(ReconstructError::BaseMissing(String::new()))?;
    let Some(g) = Geometry::new(&entry.shape, entry.granularity) else {
        return Ok(());
    };
    let (bt, tt) = (
        FloatType::of(base.dtype).ok_or(ReconstructError::BaseMissing(String::new()))?,
        FloatType::of(entry.dtype).ok_or(ReconstructError::BaseMissing(String::new()))?,
    );
    assert_eq!(base.bytes.len() as u64, g.numel * base.dtype.size() as u64);
    assert_eq!(out.len() as u64, g.numel * entry.dtype.size() as u64);
    let p = KernelParams::new(
        &g,
        out.as_mut_ptr() as u64,
        base.bytes.as_ptr() as u64,
        q.scale_bytes.as_ptr() as u64,
        q.packed.as_ptr() as u64,
    );
    // SAFETY: base, out (lengths asserted), scales and codes (checked by quantized_block for this
    // shape) are live host buffers for the call.
    assert!(unsafe { launch(q.bits, bt, tt, &p) });
    Ok(())
}

/// A plan's steps run on the host: `base` the base tensors, `upload` and `weights` buffers of the
/// plan's sizes.
pub(crate) fn run_steps(
    plan: &DeltaPlan,
    base: &[&[u8]],
    upload: &[u8],
    weights: &mut [u8],
) -> Result<(), PlanError> {
    assert_eq!(upload.len() as u64, plan.upload_len);
    assert_eq!(weights.len() as u64, plan.weights_len);
    let addrs: Vec<(u64, u64)> = base
        .iter()
        .map(|b| (b.as_ptr() as u64, b.len() as u64))
        .collect();
    let steps = plan.steps(&addrs, upload.as_ptr() as u64, weights.as_mut_ptr() as u64)?;
    for s in steps {
        match s {
            Step::Launch {
                bits,
                base,
                target,
                params,
                ..
            } => {
                // SAFETY: steps() checked every range against the buffers' lengths given above.
                assert!(unsafe { launch(bits, base, target, &params) });
            }
            Step::Copy { src, dst, len } => {
                // SAFETY: as above; source (base or upload) and destination (weights) are distinct
                // buffers.
                unsafe {
                    std::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, len as usize)
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::cases::{grid, sweeps, Case};
    use crate::plan::HostBase;
    use zdn_protocol::bitdelta::{
        decode_model, encode_model, reconstruct as reference, BitDeltaFile, EmbeddingPolicy,
        EncodeOptions, Granularity, Metadata, ModelTensor, QuantSpec, Selection,
    };
    use zdn_protocol::{DType, Hash};

    fn check(c: &Case) {
        let base = TensorData::new(c.base_dtype, &c.entry.shape, &c.base).unwrap();
        let n = c.entry.byte_len() as usize;
        let mut want = vec![0u8; n];
        reference(&c.entry, &c.block, Some(&base), &mut want).unwrap();
        // Start from bytes the kernel must overwrite.
        let mut got = vec![0xa5u8; n];
        reconstruct(&c.entry, &c.block, &base, &mut got).unwrap();
        if got != want {
            let size = c.entry.dtype.size();
            let i = (0..n / size)
                .find(|i| got[i * size..(i + 1) * size] != want[i * size..(i + 1) * size])
                .unwrap_or(0);
            panic!(
                "{}: element {i} is {:02x?}, the reference {:02x?}",
                c.label,
                &got[i * size..(i + 1) * size],
                &want[i * size..(i + 1) * size]
            );
        }
    }

    /// Every dtype pair × bits × granularity × odd shape, with NaN/Inf/subnormal/extreme inputs.
    #[test]
    fn kernel_source_matches_the_reference_on_the_grid() {
        let cases = grid(0x9e37_79b9_7f4a_7c15);
        assert_eq!(cases.len(), 9 * 3 * 7 * 11);
        for c in &cases {
            check(c);
        }
    }

    /// Every f16 and bf16 value, and f32 rounding boundaries, into every target dtype.
    #[test]
    fn kernel_source_matches_the_reference_on_the_sweeps() {
        let cases = sweeps();
        assert_eq!(cases.len(), 9);
        for c in &cases {
            check(c);
        }
    }

    struct Tensors<'a>(&'a [ModelTensor<'a>]);

    impl HostBase for Tensors<'_> {
        fn tensor(&self, name: &str) -> Option<TensorData<'_>> {
            self.0.iter().find(|t| t.name == name).map(|t| t.data)
        }
    }

    impl crate::plan::BaseLayout for Tensors<'_> {
        fn find(&self, name: &str) -> Option<(usize, DType, &[u64])> {
            let i = self.0.iter().position(|t| t.name == name)?;
            Some((i, self.0[i].data.dtype, self.0[i].data.shape))
        }
    }

    /// A whole model: planned, uploaded (blocks and lossless tensors, as the GPU path does), and its
    /// steps run on the host, gives `decode_model`'s bytes for every tensor — quantized in every
    /// bits × granularity, embeddings quantized, norms lossless (`xor`), untouched tensors
    /// `unchanged`, a fine-tune-only tensor `raw`, a 0-D tensor and an empty one.
    #[test]
    fn planned_switch_matches_decode_model() {
        let (base_owned, target_owned) = crate::cases::small_model(1);
        let base: Vec<ModelTensor> = base_owned.iter().map(|t| t.view()).collect();
        let target: Vec<ModelTensor> = target_owned.iter().map(|t| t.view()).collect();
        let meta = Metadata {
            base_hash: Hash::ZERO,
            n_params: 0,
            n_quantized: 0,
            bits: 1,
            granularity: Granularity::Tensor,
            clip_sigma: 0.0,
            embeddings: 1,
            model_name: "m".into(),
        };
        let selection = Selection {
            embeddings: EmbeddingPolicy::Quantize,
            ..Selection::default()
        };
        for bits in [1, 2, 4] {
            for granularity in [
                Granularity::Tensor,
                Granularity::Row,
                Granularity::Group(5),
                Granularity::Group(128),
            ] {
                let opts = EncodeOptions {
                    spec: QuantSpec {
                        bits,
                        granularity,
                        clip_sigma: None,
                    },
                    ..EncodeOptions::default()
                };
                let bytes = encode_model(meta.clone(), &base, &target, &selection, &opts).unwrap();
                let want = decode_model(&bytes, &base).unwrap();
                let file = BitDeltaFile::parse(&bytes).unwrap();
                let plan = DeltaPlan::new(&file, &Tensors(&base)).unwrap();
                let kinds: Vec<&str> = plan
                    .tensors
                    .iter()
                    .map(|t| match t.op {
                        crate::plan::TensorOp::Empty => "empty",
                        crate::plan::TensorOp::Quantized { .. } => "quantized",
                        crate::plan::TensorOp::CopyBase { .. } => "base",
                        crate::plan::TensorOp::CopyUpload { .. } => "upload",
                    })
                    .collect();
                assert_eq!(
                    kinds,
                    [
                        "quantized",
                        "quantized",
                        "quantized",
                        "upload",
                        "quantized",
                        "upload",
                        "empty",
                        "base",
                        "upload"
                    ]
                );
                let mut upload = vec![0u8; plan.upload_len as usize];
                plan.upload_pieces(&file, &Tensors(&base), |offset, bytes| {
                    upload[offset as usize..offset as usize + bytes.len()].copy_from_slice(bytes);
                    Ok::<(), PlanError>(())
                })
                .unwrap();
                let base_refs: Vec<&[u8]> = base_owned.iter().map(|t| t.bytes.as_slice()).collect();
                let mut weights = vec![0x5au8; plan.weights_len as usize];
                run_steps(&plan, &base_refs, &upload, &mut weights).unwrap();
                for (t, (name, bytes)) in plan.tensors.iter().zip(&want) {
                    assert_eq!(&t.name, name);
                    let got = &weights[t.out_offset as usize..(t.out_offset + t.out_len) as usize];
                    assert_eq!(got, bytes.as_slice(), "{name}, {bits} bits, {granularity}");
                }
            }
        }
    }
}
