//! Apply on candle tensors: the base loaded onto a candle device, a `.bitdelta` applied tensor by
//! tensor, the result kept in memory (for serving and evaluation) or written as safetensors.
//!
//! The arithmetic is not redefined here: every tensor goes through the protocol's `reconstruct` (the one
//! definition, docs/spec/bitdelta.md) and only then becomes a candle tensor, so the bytes are those of
//! `zdn delta apply` on every device. The GPU path (the `cuda` feature) moves the same bytes.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use zdn_protocol::bitdelta::{check_inputs, reconstruct, BitDeltaFile, ReconstructError};
use zdn_protocol::safetensors::{encode_header, SafetensorsError, TensorLayout};
use zdn_protocol::DType;

use crate::delta::apply::{check_base, BaseCheck, DeltaApplyError};
use crate::fs::atomic_file::{AtomicFile, AtomicFileError};
use crate::model::file::ModelFile;

#[derive(Debug, thiserror::Error)]
pub enum CandleApplyError {
    #[error(transparent)]
    Delta(#[from] DeltaApplyError),
    #[error(transparent)]
    Reconstruct(#[from] ReconstructError),
    #[error("tensor {name:?}: {dtype} has no candle equivalent")]
    Dtype { name: String, dtype: DType },
    #[error("tensor {name:?}: {source}")]
    Candle {
        name: String,
        source: candle_core::Error,
    },
    #[error("output header: {0}")]
    Header(#[from] SafetensorsError),
    #[error(transparent)]
    Output(#[from] AtomicFileError),
}

/// Named tensors in file order.
pub type NamedTensors = Vec<(String, Tensor)>;

/// The candle dtype of a safetensors dtype, where candle has one.
pub fn candle_dtype(d: DType) -> Option<candle_core::DType> {
    use candle_core::DType as C;
    Some(match d {
        DType::U8 => C::U8,
        DType::U32 => C::U32,
        DType::I64 => C::I64,
        DType::F16 => C::F16,
        DType::BF16 => C::BF16,
        DType::F32 => C::F32,
        DType::F64 => C::F64,
        _ => return None,
    })
}

fn zdn_dtype(d: candle_core::DType) -> Option<DType> {
    [
        DType::U8,
        DType::U32,
        DType::I64,
        DType::F16,
        DType::BF16,
        DType::F32,
        DType::F64,
    ]
    .into_iter()
    .find(|z| candle_dtype(*z) == Some(d))
}

/// A candle tensor over little-endian `bytes` of `dtype` and `shape` (lengths already validated by the
/// safetensors or `.bitdelta` parser).
pub fn tensor_from_bytes(
    name: &str,
    dtype: DType,
    shape: &[u64],
    bytes: &[u8],
    device: &Device,
) -> Result<Tensor, CandleApplyError> {
    let cd = candle_dtype(dtype).ok_or_else(|| CandleApplyError::Dtype {
        name: name.to_owned(),
        dtype,
    })?;
    let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    Tensor::from_raw_buffer(bytes, cd, &dims, device).map_err(|source| CandleApplyError::Candle {
        name: name.to_owned(),
        source,
    })
}

/// Every tensor of a safetensors model on `device` (tensors of dtypes candle lacks are skipped and
/// named in the second value).
pub fn load_model(
    model: &ModelFile,
    device: &Device,
) -> Result<(NamedTensors, Vec<String>), CandleApplyError> {
    let mut out = Vec::with_capacity(model.header.tensors.len());
    let mut skipped = Vec::new();
    for t in &model.header.tensors {
        if candle_dtype(t.dtype).is_none() {
            skipped.push(t.name.clone());
            continue;
        }
        let d = model.data(t);
        out.push((
            t.name.clone(),
            tensor_from_bytes(&t.name, t.dtype, &t.shape, d.bytes, device)?,
        ));
        model.release(t);
    }
    Ok((out, skipped))
}

/// The fine-tuned weights as candle tensors: `base` + `delta`, tensor by tensor.
#[derive(Debug)]
pub struct AppliedModel {
    /// In the delta's index order.
    pub tensors: NamedTensors,
    pub base: BaseCheck,
}

/// Applies `delta` to `base` (refusing another base unless `force`), each tensor reconstructed by the
/// protocol's `reconstruct` and placed on `device`.
pub fn apply_delta(
    base: &ModelFile,
    delta: &BitDeltaFile<'_>,
    device: &Device,
    force: bool,
) -> Result<AppliedModel, CandleApplyError> {
    let check = check_base(delta, base, force)?;
    let mut tensors = Vec::with_capacity(delta.entries.len());
    let mut buf = Vec::new();
    for i in 0..delta.entries.len() {
        let t = applied_tensor(base, delta, i, device, &mut buf)?;
        tensors.push((delta.entries[i].name.clone(), t));
    }
    Ok(AppliedModel {
        tensors,
        base: check,
    })
}

/// [`apply_delta`] into the weights of `live` (another fine-tune of the same base, say), tensor by
/// tensor: each new tensor replaces the old one of the same name and place, which is freed before
/// the next is made, so memory holds one model and one tensor, not two models. Where `live` does
/// not have the delta's tensors in the delta's order it is emptied first. On error `live` is left
/// empty (no half-switched model stays in use).
pub fn apply_delta_into(
    base: &ModelFile,
    delta: &BitDeltaFile<'_>,
    device: &Device,
    force: bool,
    live: &mut AppliedModel,
) -> Result<(), CandleApplyError> {
    let applied = replace_tensors(base, delta, device, force, live);
    if applied.is_err() {
        live.tensors.clear();
    }
    applied
}

fn replace_tensors(
    base: &ModelFile,
    delta: &BitDeltaFile<'_>,
    device: &Device,
    force: bool,
    live: &mut AppliedModel,
) -> Result<(), CandleApplyError> {
    let same_layout = live.tensors.len() == delta.entries.len()
        && live.tensors.iter().zip(&delta.entries).all(|((n, t), e)| {
            n == &e.name
                && t.dims()
                    .iter()
                    .map(|&d| d as u64)
                    .eq(e.shape.iter().copied())
        });
    live.base = check_base(delta, base, force)?;
    if !same_layout {
        live.tensors.clear();
    }
    let mut buf = Vec::new();
    for (i, e) in delta.entries.iter().enumerate() {
        let t = applied_tensor(base, delta, i, device, &mut buf)?;
        if same_layout {
            live.tensors[i].1 = t;
        } else {
            live.tensors.push((e.name.clone(), t));
        }
    }
    Ok(())
}

/// Tensor `i` of `delta` reconstructed onto `base`, on `device` (`buf`: scratch for the dtypes and
/// devices that cannot be written in place).
fn applied_tensor(
    base: &ModelFile,
    delta: &BitDeltaFile<'_>,
    i: usize,
    device: &Device,
    buf: &mut Vec<u8>,
) -> Result<Tensor, CandleApplyError> {
    let e = &delta.entries[i];
    let b = base.get(&e.name);
    let bdata = b.map(|b| base.data(b));
    // Checked before the output is allocated (byte_len is capped by the parser).
    check_inputs(e, delta.block(i), bdata.as_ref())?;
    let dims: Vec<usize> = e.shape.iter().map(|&d| d as usize).collect();
    // Float tensors on the CPU are reconstructed straight into the vector the tensor takes
    // over: one write of every byte instead of three (zero-fill, reconstruct, copy).
    let mut fill = |out: &mut [u8]| reconstruct(e, delta.block(i), bdata.as_ref(), out);
    Ok(match (e.dtype, device) {
        (DType::F32, Device::Cpu) if LITTLE_ENDIAN => {
            in_place(&e.name, 0f32, e.numel(), dims, &mut fill)?
        }
        (DType::F16, Device::Cpu) if LITTLE_ENDIAN => {
            in_place(&e.name, half::f16::ZERO, e.numel(), dims, &mut fill)?
        }
        (DType::BF16, Device::Cpu) if LITTLE_ENDIAN => {
            in_place(&e.name, half::bf16::ZERO, e.numel(), dims, &mut fill)?
        }
        _ => {
            buf.clear();
            buf.resize(e.byte_len() as usize, 0);
            fill(buf)?;
            tensor_from_bytes(&e.name, e.dtype, &e.shape, buf, device)?
        }
    })
}

/// A CPU tensor of `numel` floats that `fill` writes in place (the vector becomes the tensor's storage).
fn in_place<T: PlainFloat + candle_core::WithDType>(
    name: &str,
    zero: T,
    numel: u64,
    dims: Vec<usize>,
    fill: &mut dyn FnMut(&mut [u8]) -> Result<(), ReconstructError>,
) -> Result<Tensor, CandleApplyError> {
    let mut v = vec![zero; numel as usize];
    fill(as_bytes_mut(&mut v))?;
    Tensor::from_vec(v, dims, &Device::Cpu).map_err(|source| CandleApplyError::Candle {
        name: name.to_owned(),
        source,
    })
}

/// Plain floats whose every bit pattern is a valid value and whose bytes can be written directly.
trait PlainFloat: Copy {}
impl PlainFloat for f32 {}
impl PlainFloat for half::f16 {}
impl PlainFloat for half::bf16 {}

/// The in-place path writes little-endian bytes over native floats: little-endian targets only.
const LITTLE_ENDIAN: bool = cfg!(target_endian = "little");

/// The bytes of a float vector, for `reconstruct` to write little-endian values into (used only where
/// the target is little-endian).
fn as_bytes_mut<T: PlainFloat>(v: &mut [T]) -> &mut [u8] {
    // SAFETY: T is f32, f16 or bf16: no padding and every bit pattern is a valid value, so any bytes
    // written through the slice leave valid Ts; u8 has alignment 1; the length in bytes is exactly
    // the vector's (size_of::<T>() × len, which fits in isize because the allocation exists); the
    // returned slice borrows `v` mutably, so nothing else can touch it meanwhile.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

/// The little-endian bytes of a tensor (copied to the CPU first when it lives elsewhere).
pub fn tensor_bytes(name: &str, t: &Tensor) -> Result<Vec<u8>, CandleApplyError> {
    use candle_core::DType as C;
    let err = |source| CandleApplyError::Candle {
        name: name.to_owned(),
        source,
    };
    let flat = t
        .flatten_all()
        .and_then(|f| f.to_device(&Device::Cpu))
        .map_err(err)?;
    fn le<T: Copy, const N: usize>(v: Vec<T>, f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
        v.into_iter().flat_map(f).collect()
    }
    Ok(match t.dtype() {
        C::U8 => flat.to_vec1::<u8>().map_err(err)?,
        C::U32 => le(flat.to_vec1::<u32>().map_err(err)?, u32::to_le_bytes),
        C::I64 => le(flat.to_vec1::<i64>().map_err(err)?, i64::to_le_bytes),
        C::F16 => le(flat.to_vec1::<half::f16>().map_err(err)?, |x| {
            x.to_le_bytes()
        }),
        C::BF16 => le(flat.to_vec1::<half::bf16>().map_err(err)?, |x| {
            x.to_le_bytes()
        }),
        C::F32 => le(flat.to_vec1::<f32>().map_err(err)?, f32::to_le_bytes),
        C::F64 => le(flat.to_vec1::<f64>().map_err(err)?, f64::to_le_bytes),
        other => {
            return Err(CandleApplyError::Candle {
                name: name.to_owned(),
                source: candle_core::Error::Msg(format!("dtype {other:?} is not written")),
            })
        }
    })
}

/// Writes tensors as a safetensors file (atomically), in the given order, with the header
/// `zdn delta apply` writes: the same tensors give the same bytes. Returns the bytes written.
pub fn write_safetensors(
    tensors: &[(String, Tensor)],
    path: &Path,
) -> Result<u64, CandleApplyError> {
    let mut layouts = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let dtype = zdn_dtype(t.dtype()).ok_or_else(|| CandleApplyError::Candle {
            name: name.clone(),
            source: candle_core::Error::Msg(format!("dtype {:?} is not written", t.dtype())),
        })?;
        layouts.push(TensorLayout {
            name: name.clone(),
            dtype,
            shape: t.dims().iter().map(|&d| d as u64).collect(),
        });
    }
    let (header, _) = encode_header(&layouts, &BTreeMap::new())?;
    let mut out = AtomicFile::create(path)?;
    out.write_all(&header)?;
    let mut total = header.len() as u64;
    for (name, t) in tensors {
        let bytes = tensor_bytes(name, t)?;
        out.write_all(&bytes)?;
        total += bytes.len() as u64;
    }
    out.commit()?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::apply::{apply, ApplyJob};
    use crate::delta::encode::{encode, EncodeJob};
    use crate::fs::mapped_file::MappedFile;
    use crate::model::synthetic::{write_pair, SyntheticSpec};
    use zdn_protocol::bitdelta::{EncodeOptions, Granularity, QuantSpec, Selection};

    fn small(dtype: DType) -> SyntheticSpec {
        SyntheticSpec {
            dtype,
            layers: 2,
            hidden: 32,
            intermediate: 64,
            vocab: 50,
            delta_scale: 0.02,
            seed: 11,
        }
    }

    /// Output bytes of the candle path equal `zdn delta apply`'s, for every float dtype and bit width.
    #[test]
    fn same_bytes_as_delta_apply() {
        let dir = tempfile::tempdir().unwrap();
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            for (bits, granularity) in [
                (1, Granularity::Tensor),
                (2, Granularity::Row),
                (4, Granularity::Group(8)),
            ] {
                let (b, f) = (dir.path().join("b.st"), dir.path().join("f.st"));
                write_pair(&small(dtype), &b, &f).unwrap();
                let d = dir.path().join("d.bitdelta");
                let opts = EncodeOptions {
                    spec: QuantSpec {
                        bits,
                        granularity,
                        clip_sigma: None,
                    },
                    ..EncodeOptions::default()
                };
                encode(&EncodeJob {
                    base: b.clone(),
                    finetuned: f.clone(),
                    output: d.clone(),
                    options: opts,
                    selection: Selection::default(),
                    model_name: None,
                    progress: false,
                })
                .unwrap();
                let cli_out = dir.path().join("cli.st");
                apply(&ApplyJob {
                    base: b.clone(),
                    delta: d.clone(),
                    output: cli_out.clone(),
                    force: false,
                    progress: false,
                })
                .unwrap();
                let base = ModelFile::open(&b).unwrap();
                let dm = MappedFile::open(&d).unwrap();
                let delta = BitDeltaFile::parse(dm.bytes()).unwrap();
                let applied = apply_delta(&base, &delta, &Device::Cpu, false).unwrap();
                assert!(applied.base.verified);
                let candle_out = dir.path().join("candle.st");
                write_safetensors(&applied.tensors, &candle_out).unwrap();
                assert_eq!(
                    std::fs::read(&cli_out).unwrap(),
                    std::fs::read(&candle_out).unwrap(),
                    "{dtype} {bits}-bit {granularity:?}"
                );
            }
        }
    }

    #[test]
    fn wrong_base_is_refused_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let (b, f) = (dir.path().join("b.st"), dir.path().join("f.st"));
        write_pair(&small(DType::F32), &b, &f).unwrap();
        let d = dir.path().join("d.bitdelta");
        encode(&EncodeJob {
            base: b.clone(),
            finetuned: f.clone(),
            output: d.clone(),
            options: EncodeOptions::default(),
            selection: Selection::default(),
            model_name: None,
            progress: false,
        })
        .unwrap();
        let other = ModelFile::open(&f).unwrap(); // same layout, different bytes
        let dm = MappedFile::open(&d).unwrap();
        let delta = BitDeltaFile::parse(dm.bytes()).unwrap();
        let e = apply_delta(&other, &delta, &Device::Cpu, false).unwrap_err();
        assert!(e.to_string().contains("was made for base"), "{e}");
        let forced = apply_delta(&other, &delta, &Device::Cpu, true).unwrap();
        assert!(!forced.base.verified);
    }
}
