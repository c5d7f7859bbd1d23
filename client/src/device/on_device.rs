//! `zdn delta apply --device`: the same output file, its quantized tensors reconstructed on the
//! chosen device (the others are copies and lossless blocks, decoded on the host either way).

use crate::delta::apply::{apply, ApplyJob, ApplyReport, DeltaApplyError};
use crate::device::compute::{ComputeDevice, DeviceError};

#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceApplyReport {
    #[serde(flatten)]
    pub apply: ApplyReport,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// The GPU's name, when one was used.
    pub device_name: Option<String>,
    /// Tensors the device reconstructed (0 on the CPU, where the reference did everything).
    pub tensors_on_device: usize,
}

/// [`apply`] on `device`.
pub fn apply_on(
    job: &ApplyJob,
    device: ComputeDevice,
) -> Result<DeviceApplyReport, DeltaApplyError> {
    match device {
        ComputeDevice::Cpu => Ok(DeviceApplyReport {
            apply: apply(job)?,
            device: device.to_string(),
            device_name: None,
            tensors_on_device: 0,
        }),
        ComputeDevice::Cuda(_) => on_gpu(job, device),
    }
}

#[cfg(feature = "cuda")]
fn on_gpu(job: &ApplyJob, device: ComputeDevice) -> Result<DeviceApplyReport, DeltaApplyError> {
    use zdn_cuda::tensor_apply::TensorApplyError;
    use zdn_cuda::TensorReconstructor;

    // Opened first: without a GPU, nothing is read or written.
    let gpu = device.open_gpu()?;
    let device_name = gpu.name().to_owned();
    let mut gpu = TensorReconstructor::new(gpu);
    let report = crate::delta::apply::apply_with(job, &mut |e, block, base, out| {
        gpu.reconstruct(e, block, base, out).map_err(|x| match x {
            TensorApplyError::Reconstruct(r) => DeltaApplyError::Reconstruct(r),
            TensorApplyError::Gpu(source) => DeviceError::Gpu { device, source }.into(),
        })
    })?;
    Ok(DeviceApplyReport {
        apply: report,
        device: device.to_string(),
        device_name: Some(device_name),
        tensors_on_device: gpu.tensors_on_gpu(),
    })
}

#[cfg(not(feature = "cuda"))]
fn on_gpu(_: &ApplyJob, device: ComputeDevice) -> Result<DeviceApplyReport, DeltaApplyError> {
    Err(DeviceError::NotBuilt(device).into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::soup::build::fixture::deltas_of_one_base;

    /// `--device cpu` is `apply`; a GPU device on a machine without one (or in a build without the
    /// feature) fails before the output exists.
    #[test]
    fn cpu_is_apply_and_a_missing_gpu_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (base, deltas) = deltas_of_one_base(dir.path(), 1);
        let job = |out: &str| ApplyJob {
            base: base.clone(),
            delta: deltas[0].clone(),
            output: dir.path().join(out),
            force: false,
            progress: false,
        };
        let r = apply_on(&job("cpu.st"), ComputeDevice::Cpu).unwrap();
        assert_eq!((r.device.as_str(), r.tensors_on_device), ("cpu", 0));
        apply(&job("ref.st")).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("cpu.st")).unwrap(),
            std::fs::read(dir.path().join("ref.st")).unwrap()
        );
        #[cfg(feature = "cuda")]
        if zdn_cuda::gpu::driver_present() {
            // A GPU machine: the same bytes from the GPU (scripts/gpu-check.sh runs this build).
            let r = apply_on(&job("gpu.st"), ComputeDevice::Cuda(0)).unwrap();
            assert!(r.tensors_on_device > 0);
            assert_eq!(
                std::fs::read(dir.path().join("gpu.st")).unwrap(),
                std::fs::read(dir.path().join("ref.st")).unwrap()
            );
            return;
        }
        let e = apply_on(&job("gpu.st"), ComputeDevice::Cuda(0)).unwrap_err();
        let msg = e.to_string();
        #[cfg(feature = "cuda")]
        assert!(msg.contains("no CUDA driver found"), "{msg}");
        #[cfg(not(feature = "cuda"))]
        assert!(msg.contains("built without GPU support"), "{msg}");
        assert!(!dir.path().join("gpu.st").exists());
    }
}
