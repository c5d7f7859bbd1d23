//! A family of small generated models for the soup tests: one base and fine-tunes of it, with
//! their deltas encoded by the real binary.

use std::path::{Path, PathBuf};

use zdn_protocol::DType;

use super::{ok, s, values, write_model, zdn_ok, T};

pub const ROWS: u64 = 16;
pub const COLS: u64 = 24;

pub fn base_tensors(seed: u32) -> Vec<T> {
    let pos: Vec<u8> = (0..7i64).flat_map(i64::to_le_bytes).collect();
    vec![
        T::f32(
            "layer.weight",
            &[ROWS, COLS],
            values((ROWS * COLS) as usize, seed, 0.2),
        ),
        T::f32("layer.bias", &[ROWS], values(ROWS as usize, seed + 1, 0.1)),
        T::f32(
            "word_embeddings.weight",
            &[20, 8],
            values(160, seed + 2, 0.1),
        ),
        T::f32("norm.weight", &[5], [1.0; 5]),
        T {
            name: "position_ids".into(),
            dtype: DType::I64,
            shape: vec![7],
            bytes: pos,
        },
    ]
}

pub fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// A fine-tune of `base` (seed 0 base tensors): every float tensor moved by `scale` × a pattern of
/// `seed`; `extra` adds a tensor the base lacks.
pub fn fine_tune(base: &[T], seed: u32, scale: f32, extra: Option<&[u64]>) -> Vec<T> {
    let mut out: Vec<T> = base
        .iter()
        .map(|t| {
            if t.dtype != DType::F32 || t.name == "norm.weight" {
                return T {
                    name: t.name.clone(),
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                    bytes: t.bytes.clone(),
                };
            }
            let v = floats(&t.bytes);
            let d = values(v.len(), seed * 31 + 7, 0.02 * scale);
            T::f32(&t.name, &t.shape, v.iter().zip(&d).map(|(a, b)| a + b))
        })
        .collect();
    if let Some(shape) = extra {
        out.push(T::f32("head.weight", shape, values(12, seed, 1.0)));
    }
    out
}

/// Writes the base (from `base_seed`) and encodes one delta per fine-tune spec (seed, scale, extra).
pub fn family(
    dir: &Path,
    tag: &str,
    base_seed: u32,
    fines: &[(u32, f32, Option<&[u64]>)],
) -> (PathBuf, Vec<PathBuf>) {
    let base_path = dir.join(format!("{tag}-base.safetensors"));
    let base = base_tensors(base_seed);
    write_model(&base_path, &base);
    let mut deltas = Vec::new();
    for (i, &(seed, scale, extra)) in fines.iter().enumerate() {
        let fine = dir.join(format!("{tag}-fine{i}.safetensors"));
        write_model(&fine, &fine_tune(&base, seed, scale, extra));
        let d = dir.join(format!("{tag}-d{i}.bitdelta"));
        zdn_ok(&[
            "delta",
            "encode",
            "--base",
            s(&base_path),
            "--finetuned",
            s(&fine),
            "-o",
            s(&d),
            "--scale",
            "row",
        ]);
        deltas.push(d);
    }
    (base_path, deltas)
}

/// Applies `delta` (a file, or a soup in the store of `home`) to `base`; returns the output path.
pub fn apply(home: &Path, base: &Path, delta: &str, out: &Path) -> PathBuf {
    ok(
        home,
        &[
            "delta",
            "apply",
            "--base",
            s(base),
            "--delta",
            delta,
            "-o",
            s(out),
        ],
    );
    out.to_path_buf()
}
