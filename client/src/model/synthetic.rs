//! `SyntheticPair`: a generated base model and fine-tune (BERT-like names and shapes, deterministic
//! pseudo-random weights), for the demo when the real pair cannot be installed, for benchmarks and for
//! tests. Written tensor by tensor, so a multi-GiB model needs little memory.

use std::collections::BTreeMap;
use std::path::Path;

use half::{bf16, f16};
use zdn_protocol::safetensors::{encode_header, SafetensorsError, TensorLayout};
use zdn_protocol::DType;

use crate::fs::atomic_file::{AtomicFile, AtomicFileError};

/// splitmix64: small, fast, deterministic on every platform.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    /// Roughly normal (sum of 4 uniforms, variance 4/3 scaled to 1).
    pub fn normal(&mut self) -> f32 {
        (self.uniform() + self.uniform() + self.uniform() + self.uniform()) * 0.866
    }
}

/// Shape of a generated model.
#[derive(Debug, Clone)]
pub struct SyntheticSpec {
    pub dtype: DType,
    pub layers: u32,
    pub hidden: u64,
    pub intermediate: u64,
    pub vocab: u64,
    /// Relative size of the fine-tune's change of each linear weight.
    pub delta_scale: f32,
    pub seed: u64,
}

impl SyntheticSpec {
    /// A MiniLM-sized model (about 23 M parameters).
    pub fn small() -> Self {
        SyntheticSpec {
            dtype: DType::F32,
            layers: 6,
            hidden: 384,
            intermediate: 1536,
            vocab: 30522,
            delta_scale: 0.01,
            seed: 7,
        }
    }

    /// Tensors in file order.
    pub fn layouts(&self) -> Vec<TensorLayout> {
        let mut v = Vec::new();
        let mut t = |name: String, shape: Vec<u64>| {
            v.push(TensorLayout {
                name,
                dtype: self.dtype,
                shape,
            })
        };
        let (h, m) = (self.hidden, self.intermediate);
        t(
            "embeddings.word_embeddings.weight".into(),
            vec![self.vocab, h],
        );
        t("embeddings.LayerNorm.weight".into(), vec![h]);
        t("embeddings.LayerNorm.bias".into(), vec![h]);
        for l in 0..self.layers {
            let p = format!("encoder.layer.{l}");
            for (n, [out, inp]) in crate::quality::bert::layer_linears(h, m) {
                t(format!("{p}.{n}.weight"), vec![out, inp]);
                t(format!("{p}.{n}.bias"), vec![out]);
            }
        }
        v
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyntheticError {
    #[error(transparent)]
    Header(#[from] SafetensorsError),
    #[error(transparent)]
    Write(#[from] AtomicFileError),
    #[error("synthetic models are F32, F16 or BF16, not {0}")]
    Dtype(DType),
}

/// Writes the base to `base` and the fine-tune to `finetuned`. The fine-tune differs from the base in
/// every tensor: linear weights by `delta_scale` × a heavy-tailed noise, the rest a little.
pub fn write_pair(
    spec: &SyntheticSpec,
    base: &Path,
    finetuned: &Path,
) -> Result<(), SyntheticError> {
    if !spec.dtype.is_quantizable() {
        return Err(SyntheticError::Dtype(spec.dtype));
    }
    let layouts = spec.layouts();
    let (header, _) = encode_header(&layouts, &BTreeMap::new())?;
    let mut out_b = AtomicFile::create(base)?;
    let mut out_f = AtomicFile::create(finetuned)?;
    out_b.write_all(&header)?;
    out_f.write_all(&header)?;
    let mut rng = Rng::new(spec.seed);
    const STEP: usize = 1 << 16;
    let (mut bb, mut fb) = (Vec::new(), Vec::new());
    for l in &layouts {
        let numel: u64 = l.shape.iter().product();
        let is_matrix = l.shape.len() == 2;
        let embed = l.name.contains("embed");
        let (w_scale, d_scale) = match (is_matrix, embed) {
            (true, false) => (0.04, 0.04 * spec.delta_scale),
            (true, true) => (0.05, 0.05 * spec.delta_scale * 0.03),
            _ if l.name.ends_with("LayerNorm.weight") => (0.0, 0.02),
            _ => (0.02, 0.02 * spec.delta_scale),
        };
        let offset = if l.name.ends_with("LayerNorm.weight") {
            1.0
        } else {
            0.0
        };
        let mut left = numel as usize;
        while left > 0 {
            let n = left.min(STEP);
            bb.clear();
            fb.clear();
            for _ in 0..n {
                let w = offset + w_scale * rng.normal();
                // A heavy-tailed delta: normal times a random magnitude.
                let d = d_scale * rng.normal() * (1.0 + 3.0 * rng.uniform().abs().powi(4));
                push(spec.dtype, w, &mut bb);
                push(spec.dtype, w + d, &mut fb);
            }
            out_b.write_all(&bb)?;
            out_f.write_all(&fb)?;
            left -= n;
        }
    }
    out_b.commit()?;
    out_f.commit()?;
    Ok(())
}

fn push(dtype: DType, v: f32, out: &mut Vec<u8>) {
    match dtype {
        DType::F16 => out.extend_from_slice(&f16::from_f32(v).to_le_bytes()),
        DType::BF16 => out.extend_from_slice(&bf16::from_f32(v).to_le_bytes()),
        _ => out.extend_from_slice(&v.to_le_bytes()),
    }
}
