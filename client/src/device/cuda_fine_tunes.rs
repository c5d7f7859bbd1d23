//! `CudaFineTuneSet`: [`ProfileSet`](crate::device::fine_tunes::ProfileSet) on an NVIDIA GPU. The base
//! model is uploaded once and stays resident in GPU memory; each fine-tune's `.bitdelta` is uploaded
//! packed (its quantized blocks as stored, about 1 bit a weight, plus the few lossless tensors
//! decoded); switching fine-tune reconstructs every tensor of the live weights in place on the GPU
//! (kernel launches and device copies, no host round trip), bit-exactly the bytes `zdn delta apply`
//! writes. The weights stay at the same device addresses across switches between fine-tunes of the
//! base ([`CudaFineTuneSet::weight_range`]).
//!
//! GPU memory: the base, the live weights (one model), and the uploaded deltas within `budget`
//! bytes: adding a fine-tune past it is refused (remove one first).

use std::path::{Path, PathBuf};

use zdn_cuda::plan::HostBase;
use zdn_cuda::{DeviceFineTunes, FineTunesError, ResidentModel, SwitchReport};
use zdn_protocol::bitdelta::{BitDeltaFile, FormatError, TensorData};
use zdn_protocol::Hash;

use crate::delta::apply::{check_base, DeltaApplyError};
use crate::device::compute::{ComputeDevice, DeviceError};
use crate::model::file::{ModelFile, ModelFileError};

#[derive(Debug, thiserror::Error)]
pub enum CudaFineTuneSetError {
    #[error(transparent)]
    Base(#[from] ModelFileError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid .bitdelta file: {cause}")]
    Format { path: PathBuf, cause: FormatError },
    #[error(transparent)]
    WrongBase(#[from] DeltaApplyError),
    #[error(transparent)]
    Profiles(#[from] FineTunesError),
}

/// The base's bytes on the host, for the lossless tensors of a delta.
struct HostModel<'a>(&'a ModelFile);

impl HostBase for HostModel<'_> {
    fn tensor(&self, name: &str) -> Option<TensorData<'_>> {
        self.0.get(name).map(|t| self.0.data(t))
    }
}

/// Profiles of one base on one GPU.
#[derive(Debug)]
pub struct CudaFineTuneSet {
    base: ModelFile,
    fine_tunes: DeviceFineTunes,
    force: bool,
    hashes: Vec<(String, Hash)>,
}

impl CudaFineTuneSet {
    /// Uploads the base at `base` to `device` (`cuda:N`); deltas uploaded later are kept within
    /// `budget` bytes of GPU memory. With `force`, deltas made for another base are accepted.
    pub fn new(
        base: &Path,
        device: ComputeDevice,
        budget: u64,
        force: bool,
    ) -> Result<Self, CudaFineTuneSetError> {
        let gpu = device.open_gpu()?;
        let model = ModelFile::open(base)?;
        let gpu_err = |source| DeviceError::Gpu { device, source };
        let mut resident = ResidentModel::allocate(
            &gpu,
            model
                .header
                .tensors
                .iter()
                .map(|t| (t.name.clone(), t.dtype, t.shape.clone())),
        )
        .map_err(gpu_err)?;
        for (i, t) in model.header.tensors.iter().enumerate() {
            resident
                .put(&gpu, i, model.data(t).bytes)
                .map_err(gpu_err)?;
            model.release(t);
        }
        Ok(CudaFineTuneSet {
            base: model,
            fine_tunes: DeviceFineTunes::new(gpu, resident, budget)?,
            force,
            hashes: Vec::new(),
        })
    }

    /// Adds fine-tune `name` from a `.bitdelta` file: read, checked against the base (its recorded
    /// BLAKE3 and every entry), uploaded.
    pub fn add(&mut self, name: &str, delta: &Path) -> Result<(), CudaFineTuneSetError> {
        let bytes = std::fs::read(delta).map_err(|source| CudaFineTuneSetError::Read {
            path: delta.to_path_buf(),
            source,
        })?;
        let f = BitDeltaFile::parse(&bytes).map_err(|cause| CudaFineTuneSetError::Format {
            path: delta.to_path_buf(),
            cause,
        })?;
        check_base(&f, &self.base, self.force)?;
        self.fine_tunes.add(name, &bytes, &HostModel(&self.base))?;
        self.hashes.push((name.to_owned(), Hash::of(&bytes)));
        Ok(())
    }

    /// Drops fine-tune `name`'s upload.
    pub fn remove(&mut self, name: &str) -> Result<(), CudaFineTuneSetError> {
        self.fine_tunes.remove(name)?;
        self.hashes.retain(|(n, _)| n != name);
        Ok(())
    }

    /// Makes `name` the live weights, reconstructed on the GPU; complete when this returns.
    pub fn switch(&mut self, name: &str) -> Result<SwitchReport, CudaFineTuneSetError> {
        Ok(self.fine_tunes.switch(name)?)
    }

    pub fn active(&self) -> Option<&str> {
        self.fine_tunes.active()
    }

    /// The live weights' tensor `name`: (device address, bytes).
    pub fn weight_range(&self, name: &str) -> Option<(u64, u64)> {
        self.fine_tunes.weight_range(name)
    }

    /// A copy of the live tensor `name` in host memory.
    pub fn download_weight(&self, name: &str) -> Result<Option<Vec<u8>>, CudaFineTuneSetError> {
        Ok(self.fine_tunes.download_weight(name)?)
    }

    /// The live weights' tensor names, in the active delta's order.
    pub fn weight_names(&self) -> Vec<String> {
        self.fine_tunes.weight_names()
    }

    /// The BLAKE3 of each fine-tune's delta, as added.
    pub fn hash(&self, name: &str) -> Option<Hash> {
        self.hashes.iter().find(|(n, _)| n == name).map(|(_, h)| *h)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.fine_tunes.names()
    }

    /// The GPU's name.
    pub fn device_name(&self) -> &str {
        self.fine_tunes.gpu().name()
    }

    /// GPU bytes held: (base, live weights, uploaded deltas).
    pub fn device_bytes(&self) -> (u64, u64, u64) {
        (
            self.fine_tunes.base().device_bytes(),
            self.fine_tunes.weights_bytes(),
            self.fine_tunes.upload_bytes(),
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::delta::apply::{apply, ApplyJob};
    use crate::soup::build::fixture::deltas_of_one_base;

    /// On a GPU machine (scripts/gpu-check.sh runs this build there): three fine_tunes switched in
    /// turn give `zdn delta apply`'s bytes for every tensor, in place. Here, without a driver: the
    /// clear error. Both branches assert.
    #[test]
    fn switch_matches_apply_or_no_driver() {
        let dir = tempfile::tempdir().unwrap();
        let (base, deltas) = deltas_of_one_base(dir.path(), 3);
        let set = CudaFineTuneSet::new(&base, ComputeDevice::Cuda(0), 1 << 30, false);
        if !zdn_cuda::gpu::driver_present() {
            let msg = set.unwrap_err().to_string();
            assert!(msg.contains("no CUDA driver found"), "{msg}");
            return;
        }
        let mut set = set.unwrap();
        for (i, d) in deltas.iter().enumerate() {
            set.add(&format!("p{i}"), d).unwrap();
        }
        for (n, i) in [0usize, 2, 1, 0].into_iter().enumerate() {
            let sw = set.switch(&format!("p{i}")).unwrap();
            assert_eq!(sw.in_place, n > 0);
            let out = dir.path().join(format!("ref{i}.st"));
            apply(&ApplyJob {
                base: base.clone(),
                delta: deltas[i].clone(),
                output: out.clone(),
                force: false,
                progress: false,
            })
            .unwrap();
            let reference = ModelFile::open(&out).unwrap();
            for name in set.weight_names() {
                let t = reference.get(&name).unwrap();
                let want = reference.data(t).bytes.to_vec();
                assert_eq!(set.download_weight(&name).unwrap().unwrap(), want, "{name}");
            }
        }
        assert!(matches!(
            set.switch("nope"),
            Err(CudaFineTuneSetError::Profiles(FineTunesError::Unknown(_)))
        ));
    }
}
