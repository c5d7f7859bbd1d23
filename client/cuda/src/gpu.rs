//! The GPU: the CUDA driver loaded at run time, one context and stream on one device, the kernels
//! loaded from the PTX, device buffers, and the execution of a plan's steps.
//!
//! Nothing here panics on a machine without a GPU: [`Gpu::open`] first checks that `libcuda.so`
//! can be loaded (cudarc would panic on the first call otherwise) and returns [`GpuError::NoDriver`].

use std::sync::Arc;

use cudarc::driver::{
    result, sys, CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr,
    DriverError, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use crate::kernel::{all_kernels, kernel_name, FloatType, KernelParams, PTX, THREADS_PER_BLOCK};
use crate::plan::{PlanError, Step};

/// Why the GPU could not do something.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error(
        "no CUDA driver found: libcuda.so could not be loaded (a CUDA device needs an NVIDIA GPU and \
         its driver)"
    )]
    NoDriver,
    #[error("CUDA device {ordinal} does not exist: the driver sees {count} device(s)")]
    NoDevice { ordinal: usize, count: i32 },
    #[error("CUDA, {during}: {source}")]
    Driver {
        during: &'static str,
        source: DriverError,
    },
    #[error("no kernel for {bits}-bit codes from {base:?} to {target:?}")]
    NoKernel {
        bits: u32,
        base: FloatType,
        target: FloatType,
    },
    #[error("a launch's addresses are not aligned as the kernels need: {0:?}")]
    Misaligned(KernelParams),
    #[error("device buffer of {len} bytes: no range {offset}..+{bytes}")]
    Range { len: u64, offset: u64, bytes: u64 },
    #[error(transparent)]
    Plan(#[from] PlanError),
}

fn driver(during: &'static str) -> impl FnOnce(DriverError) -> GpuError {
    move |source| GpuError::Driver { during, source }
}

// SAFETY: KernelParams is #[repr(C)], eight u64 fields, no padding, no pointers the Rust side owns:
// exactly the kernels' `struct ZdnParams`, passed by value.
unsafe impl DeviceRepr for KernelParams {}

/// Whether the CUDA driver library can be loaded on this machine.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the driver library by its usual names and closes it again.
    unsafe { sys::is_culib_present() }
}

/// Device memory: one allocation of `len` bytes (at least one, the driver allocates no less).
#[derive(Debug)]
pub struct DeviceBuffer {
    slice: CudaSlice<u8>,
    len: u64,
}

impl DeviceBuffer {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, offset: u64, bytes: u64) -> Result<(), GpuError> {
        match offset.checked_add(bytes) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(GpuError::Range {
                len: self.len,
                offset,
                bytes,
            }),
        }
    }
}

/// One GPU, its kernels loaded. Clones share the context, stream and kernels.
#[derive(Clone)]
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    kernels: Vec<((u32, FloatType, FloatType), CudaFunction)>,
    name: String,
    ordinal: usize,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("ordinal", &self.ordinal)
            .field("name", &self.name)
            .finish()
    }
}

impl Gpu {
    /// Opens CUDA device `ordinal` and loads the kernels (the driver compiles the PTX for it).
    pub fn open(ordinal: usize) -> Result<Gpu, GpuError> {
        if !driver_present() {
            return Err(GpuError::NoDriver);
        }
        result::init().map_err(driver("initialising the driver"))?;
        let count = result::device::get_count().map_err(driver("counting devices"))?;
        if i64::try_from(ordinal).map_or(true, |o| o >= i64::from(count)) {
            return Err(GpuError::NoDevice { ordinal, count });
        }
        let ctx = CudaContext::new(ordinal).map_err(driver("creating a context"))?;
        let name = ctx.name().map_err(driver("reading the device name"))?;
        let stream = ctx.default_stream();
        let module = ctx
            .load_module(Ptx::from_src(PTX))
            .map_err(driver("loading the kernels (PTX)"))?;
        let mut kernels = Vec::new();
        for (b, s, t) in all_kernels() {
            let Some(n) = kernel_name(b, s, t) else {
                continue;
            };
            let f = module
                .load_function(&n)
                .map_err(driver("finding a kernel in the PTX"))?;
            kernels.push(((b, s, t), f));
        }
        Ok(Gpu {
            ctx,
            stream,
            kernels,
            name,
            ordinal,
        })
    }

    /// The device's name, as the driver gives it (e.g. "NVIDIA H100 80GB HBM3").
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The device's compute capability (major, minor), e.g. (9, 0) for Hopper.
    pub fn compute_capability(&self) -> Result<(i32, i32), GpuError> {
        self.ctx
            .compute_capability()
            .map_err(driver("reading the compute capability"))
    }

    /// The CUDA version the driver supports, e.g. 12040 for 12.4.
    pub fn driver_version(&self) -> Result<i32, GpuError> {
        let mut v = 0i32;
        // SAFETY: the driver is loaded (open succeeded); the call writes one int.
        unsafe { sys::cuDriverGetVersion(&mut v) }
            .result()
            .map_err(driver("reading the driver version"))?;
        Ok(v)
    }

    /// (free, total) device memory in bytes.
    pub fn memory(&self) -> Result<(u64, u64), GpuError> {
        let (free, total) = self
            .ctx
            .mem_get_info()
            .map_err(driver("reading free memory"))?;
        Ok((free as u64, total as u64))
    }

    /// A device buffer of `len` bytes, contents unset.
    pub fn alloc(&self, len: u64) -> Result<DeviceBuffer, GpuError> {
        let n = usize::try_from(len.max(1)).map_err(|_| GpuError::Range {
            len,
            offset: 0,
            bytes: len,
        })?;
        // SAFETY: the bytes are unset, and nothing reads them before they are written: every reader
        // (download, a plan's steps) reads only ranges its writer filled first.
        let slice = unsafe { self.stream.alloc::<u8>(n) }.map_err(driver("allocating"))?;
        Ok(DeviceBuffer { slice, len })
    }

    /// The device address of `buf`'s first byte.
    pub fn addr(&self, buf: &DeviceBuffer) -> u64 {
        let (ptr, _sync) = buf.slice.device_ptr(&self.stream);
        ptr
    }

    /// Copies `bytes` to `buf` at `offset`; complete when this returns.
    pub fn upload(
        &self,
        buf: &mut DeviceBuffer,
        offset: u64,
        bytes: &[u8],
    ) -> Result<(), GpuError> {
        buf.check(offset, bytes.len() as u64)?;
        if bytes.is_empty() {
            return Ok(());
        }
        let start = offset as usize;
        let mut view = buf.slice.slice_mut(start..start + bytes.len());
        self.stream
            .memcpy_htod(bytes, &mut view)
            .map_err(driver("copying to the device"))?;
        self.sync()
    }

    /// `len` bytes of `buf` from `offset`, after everything queued before.
    pub fn download(&self, buf: &DeviceBuffer, offset: u64, len: u64) -> Result<Vec<u8>, GpuError> {
        let mut out = vec![0u8; len as usize];
        self.download_into(buf, offset, &mut out)?;
        Ok(out)
    }

    /// Fills `out` from `buf` at `offset`, after everything queued before.
    pub fn download_into(
        &self,
        buf: &DeviceBuffer,
        offset: u64,
        out: &mut [u8],
    ) -> Result<(), GpuError> {
        buf.check(offset, out.len() as u64)?;
        if !out.is_empty() {
            let start = offset as usize;
            let view = buf.slice.slice(start..start + out.len());
            self.stream
                .memcpy_dtoh(&view, out)
                .map_err(driver("copying from the device"))?;
        }
        self.sync()
    }

    /// Copies `len` bytes from `src` at `src_offset` to `dst` at `dst_offset`, on the device
    /// (queued: complete at the next [`Gpu::sync`]).
    pub fn copy(
        &self,
        src: &DeviceBuffer,
        src_offset: u64,
        dst: &mut DeviceBuffer,
        dst_offset: u64,
        len: u64,
    ) -> Result<(), GpuError> {
        src.check(src_offset, len)?;
        dst.check(dst_offset, len)?;
        let s = self.addr(src) + src_offset;
        let d = self.addr(dst) + dst_offset;
        // SAFETY: both ranges were checked against their live allocations, which are distinct
        // (one is borrowed mutably).
        unsafe { result::memcpy_dtod_async(d, s, len as usize, self.stream.cu_stream()) }
            .map_err(driver("copying on the device"))
    }

    /// Queues a plan's steps (complete at the next [`Gpu::sync`]).
    ///
    /// # Safety
    /// Every address range the steps name (each launch's base, scales, codes and output for its
    /// tensor's size; each copy's source and destination) lies in live device allocations of this
    /// GPU that stay alive until the work completes, and outputs do not overlap inputs.
    /// [`crate::plan::DeltaPlan::steps`] checks this for addresses and lengths of real buffers.
    pub unsafe fn run(&self, steps: &[Step]) -> Result<(), GpuError> {
        for s in steps {
            match *s {
                Step::Launch {
                    bits,
                    base,
                    target,
                    blocks,
                    params,
                } => {
                    // SAFETY: the caller's guarantee, passed on.
                    unsafe { self.launch(bits, base, target, blocks, &params) }?
                }
                Step::Copy { src, dst, len } => {
                    // SAFETY: the caller guarantees both ranges.
                    unsafe {
                        result::memcpy_dtod_async(dst, src, len as usize, self.stream.cu_stream())
                    }
                    .map_err(driver("copying on the device"))?
                }
            }
        }
        Ok(())
    }

    /// Queues one kernel launch.
    ///
    /// # Safety
    /// `params` names live device ranges: `numel` base elements of `base`'s type, the tensor's
    /// scales and packed codes, and `numel` output elements of `target`'s type, the output not
    /// overlapping the others.
    pub unsafe fn launch(
        &self,
        bits: u32,
        base: FloatType,
        target: FloatType,
        blocks: u32,
        params: &KernelParams,
    ) -> Result<(), GpuError> {
        let f = self
            .kernels
            .iter()
            .find(|(k, _)| *k == (bits, base, target))
            .map(|(_, f)| f)
            .ok_or(GpuError::NoKernel { bits, base, target })?;
        if !params.is_aligned() {
            return Err(GpuError::Misaligned(*params));
        }
        let cfg = LaunchConfig {
            grid_dim: (blocks.max(1), 1, 1),
            block_dim: (THREADS_PER_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = self.stream.launch_builder(f);
        launch.arg(params);
        // SAFETY: the kernel takes one `struct ZdnParams` by value, which KernelParams is; it reads
        // and writes only the ranges the caller guarantees (its loop stops at numel).
        unsafe { launch.launch(cfg) }.map_err(driver("launching a kernel"))?;
        Ok(())
    }

    /// Waits for everything queued.
    pub fn sync(&self) -> Result<(), GpuError> {
        self.stream
            .synchronize()
            .map_err(driver("waiting for the device"))
    }

    /// Milliseconds of device time that the work `f` queues takes (CUDA events around it).
    pub fn time_ms(&self, f: impl FnOnce() -> Result<(), GpuError>) -> Result<f64, GpuError> {
        let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = self
            .stream
            .record_event(flags)
            .map_err(driver("recording an event"))?;
        f()?;
        let end = self
            .stream
            .record_event(flags)
            .map_err(driver("recording an event"))?;
        let ms = start
            .elapsed_ms(&end)
            .map_err(driver("timing with events"))?;
        Ok(f64::from(ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a driver, opening a device is a clear error, not a panic; with one, a device that does
    /// not exist is.
    #[test]
    fn open_fails_cleanly() {
        let e = Gpu::open(usize::MAX).err();
        if driver_present() {
            assert!(
                matches!(
                    e,
                    Some(GpuError::NoDevice {
                        ordinal: usize::MAX,
                        ..
                    })
                ),
                "{e:?}"
            );
        } else {
            assert!(matches!(e, Some(GpuError::NoDriver)), "{e:?}");
            let msg = e.map(|e| e.to_string()).unwrap_or_default();
            assert!(msg.contains("no CUDA driver found"), "{msg}");
            assert!(matches!(Gpu::open(0), Err(GpuError::NoDriver)));
        }
    }
}
