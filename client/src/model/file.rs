//! `ModelFile`: a memory-mapped safetensors model with its validated header.

use std::path::Path;

use zdn_protocol::bitdelta::TensorData;
use zdn_protocol::safetensors::{self, SafetensorsError, SafetensorsHeader, TensorInfo};

use crate::fs::mapped_file::{MappedFile, OpenError};

#[derive(Debug, thiserror::Error)]
pub enum ModelFileError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("{path} is not a valid safetensors file: {cause}")]
    Parse {
        path: String,
        cause: SafetensorsError,
    },
}

#[derive(Debug)]
pub struct ModelFile {
    pub file: MappedFile,
    pub header: SafetensorsHeader,
}

impl ModelFile {
    pub fn open(path: &Path) -> Result<Self, ModelFileError> {
        let file = MappedFile::open(path)?;
        let header = safetensors::parse(file.bytes()).map_err(|cause| ModelFileError::Parse {
            path: path.display().to_string(),
            cause,
        })?;
        Ok(ModelFile { file, header })
    }

    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.header.get(name)
    }

    /// The bytes of a tensor of this file (its range was validated by the parser).
    pub fn data<'a>(&'a self, t: &'a TensorInfo) -> TensorData<'a> {
        TensorData {
            dtype: t.dtype,
            shape: &t.shape,
            bytes: &self.file.bytes()[t.range.clone()],
        }
    }

    /// Drops the resident pages of a tensor once it has been used.
    pub fn release(&self, t: &TensorInfo) {
        self.file.release(t.range.clone());
    }

    /// Total elements over all tensors.
    pub fn n_params(&self) -> u64 {
        self.header.tensors.iter().map(TensorInfo::numel).sum()
    }
}
