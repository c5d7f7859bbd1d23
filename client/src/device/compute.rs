//! Where a command computes: `--device cpu` or `--device cuda:N` (an NVIDIA GPU, in a zdn built with
//! the `cuda` feature). Parsing works in every build; a GPU device in a build without the feature,
//! or on a machine without a driver or that device, is a clear error.

use std::fmt;
use std::str::FromStr;

/// A compute device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ComputeDevice {
    #[default]
    Cpu,
    /// CUDA device ordinal N.
    Cuda(usize),
}

impl FromStr for ComputeDevice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(ComputeDevice::Cpu),
            "cuda" => Ok(ComputeDevice::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| {
                    // Digits only: no sign, no spaces.
                    n.bytes()
                        .all(|b| b.is_ascii_digit())
                        .then(|| n.parse().ok())
                        .flatten()
                })
                .map(ComputeDevice::Cuda)
                .ok_or_else(|| format!("expected cpu or cuda:N (N a GPU number), got {s:?}")),
        }
    }
}

impl fmt::Display for ComputeDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ComputeDevice::Cpu => f.write_str("cpu"),
            ComputeDevice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Why a device cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(
        "--device {0}: this zdn was built without GPU support (build it with \
         `cargo build --release -p zdn --features cuda`)"
    )]
    NotBuilt(ComputeDevice),
    #[error("--device {0}: this needs a GPU device (cuda:N)")]
    NotAGpu(ComputeDevice),
    #[cfg(feature = "cuda")]
    #[error("--device {device}: {source}")]
    Gpu {
        device: ComputeDevice,
        source: zdn_cuda::GpuError,
    },
}

impl ComputeDevice {
    /// The GPU this device names, opened (its kernels loaded).
    #[cfg(feature = "cuda")]
    pub fn open_gpu(self) -> Result<zdn_cuda::Gpu, DeviceError> {
        match self {
            ComputeDevice::Cpu => Err(DeviceError::NotAGpu(self)),
            ComputeDevice::Cuda(n) => zdn_cuda::Gpu::open(n).map_err(|source| DeviceError::Gpu {
                device: self,
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn parses_and_prints() {
        for (s, d) in [
            ("cpu", ComputeDevice::Cpu),
            ("cuda", ComputeDevice::Cuda(0)),
            ("cuda:0", ComputeDevice::Cuda(0)),
            ("cuda:7", ComputeDevice::Cuda(7)),
        ] {
            assert_eq!(s.parse::<ComputeDevice>().unwrap(), d, "{s}");
        }
        assert_eq!(ComputeDevice::Cuda(3).to_string(), "cuda:3");
        assert_eq!(ComputeDevice::Cpu.to_string(), "cpu");
        for bad in [
            "",
            "gpu",
            "cuda:",
            "cuda:-1",
            "cuda:+1",
            "cuda: 1",
            "cuda:x",
            "CPU",
            "cuda:1:2",
            "cuda:99999999999999999999999",
        ] {
            let e = bad.parse::<ComputeDevice>().unwrap_err();
            assert!(e.contains("expected cpu or cuda:N"), "{bad}: {e}");
        }
    }

    /// Without the feature, a GPU device is refused with the way to get one; with it, on a machine
    /// without a CUDA driver (this one, in CI), opening it says so. Never a panic.
    #[test]
    fn gpu_device_errors_are_clear() {
        #[cfg(not(feature = "cuda"))]
        {
            let e = DeviceError::NotBuilt(ComputeDevice::Cuda(0)).to_string();
            assert!(e.contains("--features cuda"), "{e}");
        }
        #[cfg(feature = "cuda")]
        {
            assert!(matches!(
                ComputeDevice::Cpu.open_gpu(),
                Err(DeviceError::NotAGpu(_))
            ));
            match ComputeDevice::Cuda(usize::MAX).open_gpu() {
                Err(DeviceError::Gpu { source, .. }) => {
                    let msg = source.to_string();
                    if zdn_cuda::gpu::driver_present() {
                        assert!(msg.contains("does not exist"), "{msg}");
                    } else {
                        assert!(msg.contains("no CUDA driver found"), "{msg}");
                    }
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
