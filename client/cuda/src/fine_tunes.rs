//! Profiles on the GPU: one base resident in device memory, each fine-tune's delta uploaded packed (its
//! quantized blocks as stored: about 1 bit a weight), and a switch that reconstructs every tensor of
//! the weights in place from the resident base: kernel launches and device copies, no host round
//! trip. The weights stay at the same device addresses from one switch to the next whenever the two
//! fine_tunes have the same tensors (names, dtypes, shapes), which fine-tunes of one base do.
//!
//! Device memory: the base, the weights (one model's size in the deltas' dtypes), and the uploaded
//! deltas within a budget (adding a fine-tune beyond it is refused; remove one first).

use zdn_protocol::bitdelta::{BitDeltaFile, FormatError};

use crate::gpu::{DeviceBuffer, Gpu, GpuError};
use crate::plan::{DeltaPlan, HostBase, PlanError, Step};
use crate::resident::ResidentModel;

#[derive(Debug, thiserror::Error)]
pub enum FineTunesError {
    #[error("fine-tune {name:?} is not a valid .bitdelta file: {cause}")]
    Format { name: String, cause: FormatError },
    #[error("fine-tune {name:?}: {cause}")]
    Plan { name: String, cause: PlanError },
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error("no fine-tune {0:?}")]
    Unknown(String),
    #[error("a fine-tune named {0:?} is already in the set")]
    Duplicate(String),
    #[error(
        "fine-tune {name:?} needs {need} bytes of device memory; {resident} of the {budget}-byte \
         budget are in use"
    )]
    OverBudget {
        name: String,
        need: u64,
        resident: u64,
        budget: u64,
    },
    #[error("the base was not completely uploaded")]
    IncompleteBase,
}

#[derive(Debug)]
struct Profile {
    name: String,
    plan: DeltaPlan,
    upload: DeviceBuffer,
}

#[derive(Debug)]
struct Weights {
    buffer: DeviceBuffer,
    /// The plan whose layout the buffer has, and the fine-tune it holds now.
    layout: DeltaPlan,
    active: String,
}

/// What a switch did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SwitchReport {
    pub tensors: usize,
    pub launches: usize,
    pub copies: usize,
    /// Bytes read and written in device memory ([`DeltaPlan::bytes_moved`]).
    pub bytes_moved: u64,
    /// False when the weights had to be (re)allocated: the first switch, or another tensor layout.
    pub in_place: bool,
    /// Device time from the first launch to the end of the last operation (CUDA events).
    pub device_ms: f64,
}

/// A base resident on one GPU and the fine_tunes uploaded next to it.
#[derive(Debug)]
pub struct DeviceFineTunes {
    gpu: Gpu,
    base: ResidentModel,
    budget: u64,
    resident: u64,
    fine_tunes: Vec<Profile>,
    weights: Option<Weights>,
}

impl DeviceFineTunes {
    /// Profiles over `base` (completely uploaded), their uploads kept within `budget` bytes.
    pub fn new(
        gpu: Gpu,
        base: ResidentModel,
        budget: u64,
    ) -> Result<DeviceFineTunes, FineTunesError> {
        if !base.is_complete() {
            return Err(FineTunesError::IncompleteBase);
        }
        Ok(DeviceFineTunes {
            gpu,
            base,
            budget,
            resident: 0,
            fine_tunes: Vec::new(),
            weights: None,
        })
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    pub fn base(&self) -> &ResidentModel {
        &self.base
    }

    /// Adds fine-tune `name` from the bytes of a `.bitdelta` file: parsed, planned on the resident base
    /// (every entry checked), and uploaded. `host` has the base's bytes for lossless tensors.
    pub fn add(
        &mut self,
        name: &str,
        delta: &[u8],
        host: &dyn HostBase,
    ) -> Result<(), FineTunesError> {
        if self.fine_tunes.iter().any(|p| p.name == name) {
            return Err(FineTunesError::Duplicate(name.to_owned()));
        }
        let plan_err = |cause| FineTunesError::Plan {
            name: name.to_owned(),
            cause,
        };
        let file = BitDeltaFile::parse(delta).map_err(|cause| FineTunesError::Format {
            name: name.to_owned(),
            cause,
        })?;
        let plan = DeltaPlan::new(&file, &self.base).map_err(plan_err)?;
        let need = plan.upload_len;
        if need > self.budget.saturating_sub(self.resident) {
            return Err(FineTunesError::OverBudget {
                name: name.to_owned(),
                need,
                resident: self.resident,
                budget: self.budget,
            });
        }
        let mut upload = self.gpu.alloc(need)?;
        let gpu = &self.gpu;
        plan.upload_pieces(&file, host, |offset, bytes| {
            gpu.upload(&mut upload, offset, bytes)
        })?;
        self.resident += need;
        self.fine_tunes.push(Profile {
            name: name.to_owned(),
            plan,
            upload,
        });
        Ok(())
    }

    /// Drops fine-tune `name`'s upload (not the weights, if it is the active one).
    pub fn remove(&mut self, name: &str) -> Result<(), FineTunesError> {
        let k = self.position(name)?;
        let p = self.fine_tunes.remove(k);
        self.resident -= p.plan.upload_len;
        Ok(())
    }

    fn position(&self, name: &str) -> Result<usize, FineTunesError> {
        self.fine_tunes
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| FineTunesError::Unknown(name.to_owned()))
    }

    /// Makes `name` the active fine-tune: every tensor of the weights reconstructed from the resident
    /// base and the fine-tune's upload, on the device; complete when this returns.
    pub fn switch(&mut self, name: &str) -> Result<SwitchReport, FineTunesError> {
        let k = self.position(name)?;
        let plan = &self.fine_tunes[k].plan;
        let in_place = self
            .weights
            .as_ref()
            .is_some_and(|w| w.layout.same_weights_layout(plan));
        if !in_place {
            // Free the old weights before allocating the new ones.
            self.weights = None;
            let buffer = self.gpu.alloc(plan.weights_len)?;
            self.weights = Some(Weights {
                buffer,
                layout: plan.clone(),
                active: String::new(),
            });
        }
        let Some(weights) = self.weights.as_mut() else {
            return Err(FineTunesError::Unknown(name.to_owned()));
        };
        let fine_tune = &self.fine_tunes[k];
        let steps = fine_tune
            .plan
            .steps(
                &self.base.addrs(&self.gpu),
                self.gpu.addr(&fine_tune.upload),
                self.gpu.addr(&weights.buffer),
            )
            .map_err(|cause| FineTunesError::Plan {
                name: name.to_owned(),
                cause,
            })?;
        let gpu = &self.gpu;
        // SAFETY: the steps name ranges of the resident base (each tensor's address and length),
        // the fine-tune's upload (allocated with the plan's upload_len) and the weights (allocated
        // with a plan of the same layout, weights_len bytes), checked by steps(); the three are
        // distinct allocations that live through the switch (time_ms waits for its end).
        let device_ms = gpu.time_ms(|| unsafe { gpu.run(&steps) })?;
        gpu.sync()?;
        weights.active = name.to_owned();
        Ok(SwitchReport {
            tensors: fine_tune.plan.tensors.len(),
            launches: steps
                .iter()
                .filter(|s| matches!(s, Step::Launch { .. }))
                .count(),
            copies: steps
                .iter()
                .filter(|s| matches!(s, Step::Copy { .. }))
                .count(),
            bytes_moved: fine_tune.plan.bytes_moved(),
            in_place,
            device_ms,
        })
    }

    /// The active fine-tune.
    pub fn active(&self) -> Option<&str> {
        self.weights.as_ref().map(|w| w.active.as_str())
    }

    /// Tensor `name` of the active fine-tune's weights: (device address, bytes). An inference engine
    /// reads the weights there; they stay put across in-place switches.
    pub fn weight_range(&self, name: &str) -> Option<(u64, u64)> {
        let w = self.weights.as_ref()?;
        let t = w.layout.tensors.iter().find(|t| t.name == name)?;
        Some((self.gpu.addr(&w.buffer) + t.out_offset, t.out_len))
    }

    /// A copy of the active fine-tune's tensor `name` in host memory.
    pub fn download_weight(&self, name: &str) -> Result<Option<Vec<u8>>, FineTunesError> {
        let Some(w) = self.weights.as_ref() else {
            return Ok(None);
        };
        let Some(t) = w.layout.tensors.iter().find(|t| t.name == name) else {
            return Ok(None);
        };
        Ok(Some(self.gpu.download(
            &w.buffer,
            t.out_offset,
            t.out_len,
        )?))
    }

    /// The active weights' tensors in order: (name, offset within the weights, bytes).
    pub fn weight_names(&self) -> Vec<String> {
        self.weights
            .as_ref()
            .map(|w| w.layout.tensors.iter().map(|t| t.name.clone()).collect())
            .unwrap_or_default()
    }

    /// Device bytes held by uploaded deltas.
    pub fn upload_bytes(&self) -> u64 {
        self.resident
    }

    /// Device bytes of the weights (0 before the first switch).
    pub fn weights_bytes(&self) -> u64 {
        self.weights.as_ref().map_or(0, |w| w.buffer.len())
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.fine_tunes.iter().map(|p| p.name.as_str())
    }
}
