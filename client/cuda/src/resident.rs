//! Tensors held in device memory: a model's base uploaded once and kept there, one tensor after
//! another in one allocation (each at a multiple of `DEVICE_ALIGN`).

use std::collections::HashMap;

use zdn_protocol::DType;

use crate::gpu::{DeviceBuffer, Gpu, GpuError};
use crate::plan::{ArenaLayout, BaseLayout, PlanError};

/// One tensor's place in a [`ResidentModel`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResidentTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub offset: u64,
    pub len: u64,
}

/// Named tensors in one device allocation.
#[derive(Debug)]
pub struct ResidentModel {
    buffer: DeviceBuffer,
    tensors: Vec<ResidentTensor>,
    index: HashMap<String, usize>,
    filled: Vec<bool>,
}

impl ResidentModel {
    /// Allocates room for `tensors` (name, dtype, shape), in that order; fill each with
    /// [`ResidentModel::put`].
    pub fn allocate(
        gpu: &Gpu,
        tensors: impl IntoIterator<Item = (String, DType, Vec<u64>)>,
    ) -> Result<ResidentModel, GpuError> {
        let mut arena = ArenaLayout::default();
        let mut placed = Vec::new();
        let mut index = HashMap::new();
        for (name, dtype, shape) in tensors {
            let overflow = || GpuError::Plan(PlanError::Overflow(name.clone()));
            let len = shape
                .iter()
                .try_fold(dtype.size() as u64, |a, &d| a.checked_mul(d))
                .ok_or_else(overflow)?;
            let offset = arena.place(len).ok_or_else(overflow)?;
            if index.insert(name.clone(), placed.len()).is_some() {
                return Err(GpuError::Plan(PlanError::Mismatch(name)));
            }
            placed.push(ResidentTensor {
                name,
                dtype,
                shape,
                offset,
                len,
            });
        }
        Ok(ResidentModel {
            buffer: gpu.alloc(arena.len())?,
            filled: vec![false; placed.len()],
            tensors: placed,
            index,
        })
    }

    /// Uploads tensor `i`'s bytes (exactly its length).
    pub fn put(&mut self, gpu: &Gpu, i: usize, bytes: &[u8]) -> Result<(), GpuError> {
        let t = self
            .tensors
            .get(i)
            .ok_or(GpuError::Plan(PlanError::BaseIndex(i)))?;
        if bytes.len() as u64 != t.len {
            return Err(GpuError::Range {
                len: t.len,
                offset: 0,
                bytes: bytes.len() as u64,
            });
        }
        gpu.upload(&mut self.buffer, t.offset, bytes)?;
        self.filled[i] = true;
        Ok(())
    }

    /// Whether every tensor was put.
    pub fn is_complete(&self) -> bool {
        self.filled.iter().all(|&f| f)
    }

    pub fn tensors(&self) -> &[ResidentTensor] {
        &self.tensors
    }

    /// The allocation itself (for device-side copies of the whole model).
    pub fn buffer(&self) -> &crate::gpu::DeviceBuffer {
        &self.buffer
    }

    /// Bytes of device memory held.
    pub fn device_bytes(&self) -> u64 {
        self.buffer.len()
    }

    /// Each tensor's (device address, length), by index.
    pub fn addrs(&self, gpu: &Gpu) -> Vec<(u64, u64)> {
        let base = gpu.addr(&self.buffer);
        self.tensors
            .iter()
            .map(|t| (base + t.offset, t.len))
            .collect()
    }

    /// A copy of tensor `name` in host memory.
    pub fn download(&self, gpu: &Gpu, name: &str) -> Result<Option<Vec<u8>>, GpuError> {
        match self.index.get(name) {
            Some(&i) => {
                let t = &self.tensors[i];
                gpu.download(&self.buffer, t.offset, t.len).map(Some)
            }
            None => Ok(None),
        }
    }
}

impl BaseLayout for ResidentModel {
    fn find(&self, name: &str) -> Option<(usize, DType, &[u64])> {
        let &i = self.index.get(name)?;
        let t = &self.tensors[i];
        Some((i, t.dtype, &t.shape))
    }
}
