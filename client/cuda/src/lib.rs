//! zdn on NVIDIA GPUs: the reconstruction of quantized `.bitdelta` tensors (docs/spec/bitdelta.md § 4.1) as
//! CUDA kernels, byte for byte the CPU's output, and what uses them: a model base kept resident in
//! GPU memory with packed deltas uploaded next to it, and a fine-tune switch that reconstructs every
//! tensor in place ([`DeviceFineTunes`]); a tensor-at-a-time path for `zdn delta apply --device`
//! ([`TensorReconstructor`]).
//!
//! The kernels are written once (`kernels/reconstruct.cuh`) and built by clang into PTX at build time
//! (build.rs), so this crate builds without a CUDA toolkit; the driver (`libcuda.so`) is loaded at run
//! time by [`Gpu::open`], which fails with [`GpuError::NoDriver`] where there is none. The same source
//! built for the host is what the unit tests run against the Rust reference (src/emulate.rs).
//!
//! Layout: [`kernel`] (the PTX, kernel names, parameters and the group geometry they take), [`plan`]
//! (where a delta's tensors go on the device and what each needs: pure, tested without a GPU),
//! [`gpu`] (the driver), [`resident`] (tensors held in device memory), [`fine_tunes`] (the switch),
//! [`tensor_apply`] (one tensor at a time).

pub mod fine_tunes;
pub mod gpu;
pub mod kernel;
pub mod plan;
pub mod resident;
pub mod tensor_apply;

#[cfg(test)]
#[path = "bin/zdn-gpu-check/cases.rs"]
mod cases;
#[cfg(test)]
mod emulate;

pub use fine_tunes::{DeviceFineTunes, FineTunesError, SwitchReport};
pub use gpu::{Gpu, GpuError};
pub use plan::{BaseLayout, DeltaPlan, HostBase, PlanError, TensorOp, TensorPlan};
pub use resident::ResidentModel;
pub use tensor_apply::TensorReconstructor;
