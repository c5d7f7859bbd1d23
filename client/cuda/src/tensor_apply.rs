//! One tensor at a time on the GPU, for `zdn delta apply --device cuda:N`: the base tensor and the
//! block are uploaded, the kernel writes the output on the device, and it comes back to be written
//! to the file. Device buffers grow to the largest tensor and are reused: memory is bounded by the
//! largest tensor, not the model. Tensors without codes (copies, lossless blocks) are reconstructed on
//! the host by the reference: there is nothing for a GPU to compute in them.

use zdn_protocol::bitdelta::{
    check_inputs, check_output, quantized_block, reconstruct, IndexEntry, ReconstructError,
    TensorData,
};

use crate::gpu::{DeviceBuffer, Gpu, GpuError};
use crate::kernel::{FloatType, Geometry, KernelParams};

#[derive(Debug, thiserror::Error)]
pub enum TensorApplyError {
    #[error(transparent)]
    Reconstruct(#[from] ReconstructError),
    #[error(transparent)]
    Gpu(#[from] GpuError),
}

/// Reusable device buffers for one tensor at a time.
#[derive(Debug)]
pub struct TensorReconstructor {
    gpu: Gpu,
    base: Option<DeviceBuffer>,
    block: Option<DeviceBuffer>,
    out: Option<DeviceBuffer>,
    on_gpu: usize,
}

/// A buffer of at least `len` bytes, reallocated only to grow.
fn at_least<'a>(
    gpu: &Gpu,
    slot: &'a mut Option<DeviceBuffer>,
    len: u64,
) -> Result<&'a mut DeviceBuffer, GpuError> {
    if slot.as_ref().is_none_or(|b| b.len() < len) {
        *slot = None;
        *slot = Some(gpu.alloc(len)?);
    }
    slot.as_mut().ok_or(GpuError::Range {
        len: 0,
        offset: 0,
        bytes: len,
    })
}

impl TensorReconstructor {
    pub fn new(gpu: Gpu) -> TensorReconstructor {
        TensorReconstructor {
            gpu,
            base: None,
            block: None,
            out: None,
            on_gpu: 0,
        }
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Tensors the GPU reconstructed so far.
    pub fn tensors_on_gpu(&self) -> usize {
        self.on_gpu
    }

    /// [`zdn_protocol::bitdelta::reconstruct`] with quantized tensors computed on the GPU: the same
    /// checks, errors and output bytes.
    pub fn reconstruct(
        &mut self,
        entry: &IndexEntry,
        block: &[u8],
        base: Option<&TensorData<'_>>,
        out: &mut [u8],
    ) -> Result<(), TensorApplyError> {
        let name = || entry.name.clone();
        check_output(entry, out)?;
        let base = check_inputs(entry, block, base)?;
        let (Some(q), Some(b)) = (quantized_block(entry, block)?, base) else {
            reconstruct(entry, block, base, out)?;
            return Ok(());
        };
        let Some(geometry) = Geometry::new(&entry.shape, entry.granularity) else {
            return Ok(()); // empty
        };
        let missing = |d| ReconstructError::BaseDtype {
            name: name(),
            base: d,
            target: entry.dtype,
            encoding: entry.encoding.name(),
        };
        let base_type = FloatType::of(b.dtype).ok_or_else(|| missing(b.dtype))?;
        let target = FloatType::of(entry.dtype).ok_or_else(|| missing(entry.dtype))?;
        let gpu = &self.gpu;
        let base_buf = at_least(gpu, &mut self.base, b.bytes.len() as u64)?;
        gpu.upload(base_buf, 0, b.bytes)?;
        let base_addr = gpu.addr(base_buf);
        let block_buf = at_least(gpu, &mut self.block, block.len() as u64)?;
        gpu.upload(block_buf, 0, block)?;
        let block_addr = gpu.addr(block_buf);
        let out_buf = at_least(gpu, &mut self.out, out.len() as u64)?;
        let params = KernelParams::new(
            &geometry,
            gpu.addr(out_buf),
            base_addr,
            block_addr,
            block_addr + q.scale_bytes.len() as u64,
        );
        // SAFETY: the base buffer holds the tensor's numel base elements (check_inputs: same shape,
        // TensorData: bytes = numel × size), the block buffer the whole checked block (scales, then
        // codes for numel elements), the output buffer at least numel target elements; three
        // distinct live allocations, kept until the download below has waited for the kernel.
        unsafe {
            gpu.launch(q.bits, base_type, target, geometry.blocks(), &params)?;
        }
        gpu.download_into(out_buf, 0, out)?;
        self.on_gpu += 1;
        Ok(())
    }
}
