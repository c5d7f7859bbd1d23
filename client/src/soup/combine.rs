//! Combining several `.bitdelta` files made against one base into one `.bitdelta`, streamed tensor by
//! tensor: each input's delta is reconstructed in f32, the deltas are combined by a [`Method`] (a
//! soup's weighted sum or a robust aggregation), and the result is encoded again — quantized (1-bit
//! row scales by default) where any input quantized the tensor, losslessly otherwise. Used by
//! `zdn soup mix -o`, `zdn soup aggregate` and `zdn delta apply` of a soup recipe.
//!
//! Memory: for the tensor being processed, every input's reconstructed bytes and f32 delta.

use std::path::PathBuf;

use zdn_protocol::bitdelta::{
    assign_offsets, encode_prelude, encode_tensor, prelude_len, BitDeltaFile, Choice, EncodeError,
    EncodeOptions, Encoding, FormatError, Granularity, IndexEntry, Metadata, TensorData,
};
use zdn_protocol::soup::{KrumAccumulator, SoupError};
use zdn_protocol::Hash;

use crate::fs::atomic_file::{AtomicFile, AtomicFileError};
use crate::fs::mapped_file::{MappedFile, OpenError};
use crate::fs::progress::Progress;
use crate::model::file::{ModelFile, ModelFileError};
use crate::soup::method::Method;
use crate::soup::tensor::{target_bytes, tensor_deltas, TensorDeltas, TensorError};

/// One input delta file and how errors name it.
#[derive(Debug, Clone)]
pub struct CombineInput {
    pub path: PathBuf,
    pub label: String,
}

#[derive(Debug, Clone)]
pub struct CombineJob {
    /// The base model (safetensors) every input was made against.
    pub base: PathBuf,
    pub inputs: Vec<CombineInput>,
    pub method: Method,
    /// Quantizer of the output's quantized tensors, and the zstd level of its lossless ones.
    pub options: EncodeOptions,
    pub model_name: String,
    pub output: PathBuf,
    /// Refuse a base whose BLAKE3 differs from the one the inputs record (off: `--force`).
    pub verify_base: bool,
    pub progress: bool,
}

/// What a combination did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CombineReport {
    pub output: PathBuf,
    pub method: String,
    pub inputs: usize,
    pub file_bytes: u64,
    /// BLAKE3 of the base file recorded in the output.
    pub base_hash: Hash,
    pub tensors: usize,
    /// Tensors re-quantized / stored losslessly (xor, raw) / bit-identical to the base.
    pub quantized: usize,
    pub lossless: usize,
    pub unchanged: usize,
    pub n_params: u64,
    pub n_quantized: u64,
    pub bits_per_param: f64,
    /// Krum / multi-Krum: the inputs selected (indices into the inputs, ascending).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selected: Option<Vec<usize>>,
}

#[derive(Debug, thiserror::Error)]
pub enum CombineError {
    #[error("no input deltas: at least one is needed")]
    NoInputs,
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Base(#[from] ModelFileError),
    #[error("input {input} is not a valid .bitdelta file: {cause}")]
    Format { input: String, cause: FormatError },
    #[error("the inputs are deltas of different bases: {input} records base BLAKE3 {found}, {first} records {expected}")]
    DifferentBases {
        first: String,
        input: String,
        expected: Hash,
        found: Hash,
    },
    #[error("the inputs were made against base BLAKE3 {recorded}, but {path} has BLAKE3 {actual}")]
    WrongBase {
        path: PathBuf,
        recorded: Hash,
        actual: Hash,
    },
    #[error("input {input} does not match input {first}: {problem}")]
    IndexMismatch {
        first: String,
        input: String,
        problem: String,
    },
    #[error("{0}")]
    Method(#[source] SoupError),
    #[error("tensor {name:?}: {cause}")]
    Combine { name: String, cause: SoupError },
    #[error(transparent)]
    Tensor(#[from] TensorError),
    #[error("tensor {0:?}: the combined delta cannot be written in the tensor's dtype")]
    Target(String),
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error(transparent)]
    Output(#[from] AtomicFileError),
}

/// Same tensor names, dtypes and shapes in the same order as `first`.
fn check_index(first: &[IndexEntry], other: &[IndexEntry]) -> Result<(), String> {
    if first.len() != other.len() {
        return Err(format!("{} tensors against {}", other.len(), first.len()));
    }
    for (a, b) in first.iter().zip(other) {
        if a.name != b.name {
            return Err(format!(
                "tensor {:?} where {:?} was expected",
                b.name, a.name
            ));
        }
        if a.shape != b.shape {
            return Err(format!(
                "tensor {:?} has shape {:?}, not {:?}",
                a.name, b.shape, a.shape
            ));
        }
        if a.dtype != b.dtype {
            return Err(format!(
                "tensor {:?} has dtype {}, not {}",
                a.name, b.dtype, a.dtype
            ));
        }
    }
    Ok(())
}

/// The inputs, mapped and parsed, with the labels that name them in errors.
struct Inputs<'a> {
    maps: &'a [MappedFile],
    files: Vec<BitDeltaFile<'a>>,
    labels: &'a [String],
}

impl<'a> Inputs<'a> {
    /// Parses every mapped input; `labels[i]` names input `i`.
    fn parse(maps: &'a [MappedFile], labels: &'a [String]) -> Result<Self, CombineError> {
        let mut files = Vec::with_capacity(maps.len());
        for (m, label) in maps.iter().zip(labels) {
            files.push(
                BitDeltaFile::parse(m.bytes()).map_err(|cause| CombineError::Format {
                    input: label.clone(),
                    cause,
                })?,
            );
        }
        Ok(Inputs {
            maps,
            files,
            labels,
        })
    }

    fn first(&self) -> &BitDeltaFile<'a> {
        &self.files[0]
    }

    /// Checks that every input records the first one's base and has its index; returns the base
    /// BLAKE3 they record.
    fn check_agree(&self) -> Result<Hash, CombineError> {
        let labels = self.labels;
        let recorded = self.first().meta.base_hash;
        for (f, label) in self.files.iter().zip(labels).skip(1) {
            if f.meta.base_hash != recorded {
                return Err(CombineError::DifferentBases {
                    first: labels[0].clone(),
                    input: label.clone(),
                    expected: recorded,
                    found: f.meta.base_hash,
                });
            }
            check_index(&self.first().entries, &f.entries).map_err(|problem| {
                CombineError::IndexMismatch {
                    first: labels[0].clone(),
                    input: label.clone(),
                    problem,
                }
            })?;
        }
        Ok(recorded)
    }

    /// Every input's delta of tensor `index` (see [`tensor_deltas`]).
    fn deltas(
        &self,
        index: usize,
        base: Option<&TensorData<'_>>,
    ) -> Result<TensorDeltas, TensorError> {
        tensor_deltas(&self.files, self.labels, index, base)
    }

    /// Lets the OS drop every input's mapped pages of tensor `index`.
    fn release(&self, index: usize) {
        for (m, f) in self.maps.iter().zip(&self.files) {
            let e = &f.entries[index];
            m.release(e.offset as usize..(e.offset + e.length) as usize);
        }
    }
}

/// The base's tensor `name`, if it has one.
fn base_tensor<'a>(base: &'a ModelFile, name: &str) -> Option<TensorData<'a>> {
    base.get(name).map(|t| base.data(t))
}

/// Runs the combination. Every check on the inputs (bases, indexes, method parameters) happens
/// before the output is created; the output is written to a temporary file and renamed into place
/// only when complete, so a failure leaves no output.
pub fn combine(job: &CombineJob) -> Result<CombineReport, CombineError> {
    let n = job.inputs.len();
    if n == 0 {
        return Err(CombineError::NoInputs);
    }
    job.method.check(n).map_err(CombineError::Method)?;
    let labels: Vec<String> = job.inputs.iter().map(|i| i.label.clone()).collect();
    let maps = job
        .inputs
        .iter()
        .map(|i| MappedFile::open(&i.path))
        .collect::<Result<Vec<_>, _>>()?;
    let inputs = Inputs::parse(&maps, &labels)?;
    let recorded = inputs.check_agree()?;
    let base = ModelFile::open(&job.base)?;
    let base_hash = base.file.blake3();
    if job.verify_base && !recorded.is_zero() && recorded != base_hash {
        return Err(CombineError::WrongBase {
            path: job.base.clone(),
            recorded,
            actual: base_hash,
        });
    }

    let entries_total: u64 = inputs
        .first()
        .entries
        .iter()
        .map(IndexEntry::byte_len)
        .sum();
    let passes = if job.method.is_krum() { 2 } else { 1 };
    let progress = Progress::new(entries_total * passes, "soup", job.progress);
    let selected = match job.method {
        Method::Krum { f, m } => krum_select(&inputs, &base, f, m, &progress)?,
        _ => Vec::new(),
    };
    let mut output = Output {
        meta: output_metadata(job, inputs.first(), recorded, base_hash),
        entries: unchanged_entries(inputs.first()),
    };
    let reserved = output.write(job, &inputs, &base, &selected, &progress)?;
    progress.finish();
    Ok(output.report(job, n, reserved, selected))
}

/// Krum: pass 1 over every combinable tensor for the pairwise distances; returns the inputs
/// selected.
fn krum_select(
    inputs: &Inputs<'_>,
    base: &ModelFile,
    f: usize,
    m: usize,
    progress: &Progress,
) -> Result<Vec<usize>, CombineError> {
    let mut acc = KrumAccumulator::new(inputs.files.len(), f, m).map_err(CombineError::Method)?;
    for (i, e) in inputs.first().entries.iter().enumerate() {
        let b = base_tensor(base, &e.name);
        if let TensorDeltas::Float { deltas, .. } = inputs.deltas(i, b.as_ref())? {
            let refs: Vec<&[f32]> = deltas.iter().map(Vec::as_slice).collect();
            acc.add_tensor(&refs)
                .map_err(|cause| CombineError::Combine {
                    name: e.name.clone(),
                    cause,
                })?;
        }
        progress.inc(e.byte_len());
    }
    acc.select().map_err(CombineError::Method)
}

/// The output's metadata before any tensor is encoded (`n_quantized` counts up as they are).
fn output_metadata(
    job: &CombineJob,
    first: &BitDeltaFile<'_>,
    recorded: Hash,
    base_hash: Hash,
) -> Metadata {
    let spec = job.options.spec;
    Metadata {
        base_hash: if recorded.is_zero() {
            base_hash
        } else {
            recorded
        },
        n_params: first.entries.iter().map(IndexEntry::numel).sum(),
        n_quantized: 0,
        bits: spec.bits as u8,
        granularity: spec.granularity,
        clip_sigma: 0.0,
        embeddings: first.meta.embeddings,
        model_name: job.model_name.clone(),
    }
}

/// The first input's index with every encoding, offset and length still to be decided.
fn unchanged_entries(first: &BitDeltaFile<'_>) -> Vec<IndexEntry> {
    first
        .entries
        .iter()
        .map(|e| IndexEntry {
            encoding: Encoding::Unchanged,
            granularity: Granularity::Tensor,
            offset: 0,
            length: 0,
            ..e.clone()
        })
        .collect()
}

/// The output file's prelude, filled in as its tensors are encoded.
struct Output {
    meta: Metadata,
    entries: Vec<IndexEntry>,
}

impl Output {
    /// Writes the output file: a reserved prelude, every tensor's block, then the prelude over the
    /// reserved bytes; renamed into place when complete. Returns the prelude's length.
    fn write(
        &mut self,
        job: &CombineJob,
        inputs: &Inputs<'_>,
        base: &ModelFile,
        selected: &[usize],
        progress: &Progress,
    ) -> Result<usize, CombineError> {
        let mut out = AtomicFile::create(&job.output)?;
        let reserved = prelude_len(&self.meta, &self.entries);
        out.write_all(&vec![0u8; reserved])?;
        for (i, entry) in self.entries.iter_mut().enumerate() {
            let name = entry.name.clone();
            let b = base_tensor(base, &name);
            let (choice, target) = combined_tensor(job, inputs, i, entry, b.as_ref(), selected)?;
            let target = TensorData {
                dtype: entry.dtype,
                shape: &entry.shape,
                bytes: &target,
            };
            let enc = encode_tensor(&name, choice, b.as_ref(), &target, &job.options, None)?;
            out.write_all(&enc.block)?;
            entry.encoding = enc.encoding;
            entry.granularity = enc.granularity;
            entry.length = enc.block.len() as u64;
            if enc.encoding.bits().is_some() {
                self.meta.n_quantized += entry.numel();
            }
            if let Some(t) = base.get(&name) {
                base.release(t);
            }
            inputs.release(i);
            progress.inc(entry.byte_len());
        }
        assign_offsets(&self.meta, &mut self.entries);
        let prelude = encode_prelude(&self.meta, &self.entries).map_err(EncodeError::from)?;
        out.write_at(0, &prelude)?;
        out.commit()?;
        Ok(reserved)
    }

    /// The report of the written output; `reserved` is its prelude's length.
    fn report(
        &self,
        job: &CombineJob,
        n: usize,
        reserved: usize,
        selected: Vec<usize>,
    ) -> CombineReport {
        let (meta, entries) = (&self.meta, &self.entries);
        let file_bytes = reserved as u64 + entries.iter().map(|e| e.length).sum::<u64>();
        let count = |f: fn(Encoding) -> bool| entries.iter().filter(|e| f(e.encoding)).count();
        CombineReport {
            output: job.output.clone(),
            method: job.method.to_string(),
            inputs: n,
            file_bytes,
            base_hash: meta.base_hash,
            tensors: entries.len(),
            quantized: count(|e| e.bits().is_some()),
            lossless: count(|e| matches!(e, Encoding::Raw | Encoding::Xor)),
            unchanged: count(|e| matches!(e, Encoding::Unchanged | Encoding::Base)),
            n_params: meta.n_params,
            n_quantized: meta.n_quantized,
            bits_per_param: crate::delta::encode::ratio(
                file_bytes as f64 * 8.0,
                meta.n_params as f64,
            ),
            selected: job.method.is_krum().then_some(selected),
        }
    }
}

/// Tensor `index` of the output: how to encode it and its bytes — the inputs' deltas combined by
/// the job's method and added to the base (quantized where any input quantized it), or the one
/// value every input shares.
fn combined_tensor(
    job: &CombineJob,
    inputs: &Inputs<'_>,
    index: usize,
    entry: &IndexEntry,
    base: Option<&TensorData<'_>>,
    selected: &[usize],
) -> Result<(Choice, Vec<u8>), CombineError> {
    let name = &entry.name;
    Ok(match inputs.deltas(index, base)? {
        TensorDeltas::Fixed(bytes) => (Choice::Exact, bytes),
        TensorDeltas::Float { deltas, quantized } => {
            let refs: Vec<&[f32]> = deltas.iter().map(Vec::as_slice).collect();
            let combined =
                job.method
                    .combine(&refs, selected)
                    .map_err(|cause| CombineError::Combine {
                        name: name.clone(),
                        cause,
                    })?;
            drop(deltas);
            let bt = base.ok_or_else(|| CombineError::Target(name.clone()))?;
            let t = target_bytes(entry.dtype, bt, &combined)
                .ok_or_else(|| CombineError::Target(name.clone()))?;
            let choice = if quantized {
                Choice::Quantize
            } else {
                Choice::Exact
            };
            (choice, t)
        }
    })
}
