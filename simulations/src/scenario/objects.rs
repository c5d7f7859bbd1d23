//! The scenario's objects, published at the datacenter before the links start: files as they are,
//! generated objects written first (a safetensors file of one U8 tensor of pseudo-random bytes:
//! zdn publishes models, and random bytes do not compress), deltas encoded by `zdn
//! delta encode` when given a fine-tune. A delta's base is carried to every other node as a
//! bundle, the way a station gets its base model on a disk.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::error::ScenarioError;
use super::spec::{DeltaSource, ObjectSource, Scenario};
use super::zdn::{AddReport, Zdn};

/// An object in the datacenter's store.
#[derive(Debug, Clone)]
pub struct Published {
    pub name: String,
    /// "file", "generated" or "delta".
    pub kind: &'static str,
    /// The bytes the object is: a fetched copy must equal this file.
    pub file: PathBuf,
    pub add: AddReport,
    /// A delta's base (carried beforehand).
    pub base: Option<AddReport>,
}

/// Publishes every object into `homes[datacenter]` and carries delta bases to the other homes.
pub fn publish(
    zdn: &Zdn,
    s: &Scenario,
    homes: &[PathBuf],
    dir: &Path,
) -> Result<Vec<Published>, ScenarioError> {
    std::fs::create_dir_all(dir).map_err(|e| ScenarioError::io("creating", dir, e))?;
    let dc = &homes[s.datacenter()];
    let mut out = Vec::new();
    for (i, o) in s.objects.iter().enumerate() {
        let p = match &o.source {
            ObjectSource::File(f) => Published {
                name: o.name.clone(),
                kind: "file",
                file: f.clone(),
                add: zdn.add(dc, f, &o.name, None)?,
                base: None,
            },
            ObjectSource::Generated(len) => {
                let f = dir.join(format!("{}.bin", o.name));
                generate(
                    &f,
                    *len,
                    s.seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                )?;
                Published {
                    name: o.name.clone(),
                    kind: "generated",
                    add: zdn.add(dc, &f, &o.name, None)?,
                    file: f,
                    base: None,
                }
            }
            ObjectSource::Delta { base, delta } => {
                let base_name = format!("{}-base", o.name);
                let base_add = zdn.add(dc, base, &base_name, None)?;
                let file = match delta {
                    DeltaSource::File(f) => f.clone(),
                    DeltaSource::Finetuned(ft) => {
                        let f = dir.join(format!("{}.bitdelta", o.name));
                        let args: Vec<&std::ffi::OsStr> = vec![
                            "delta".as_ref(),
                            "encode".as_ref(),
                            "--base".as_ref(),
                            base.as_os_str(),
                            "--finetuned".as_ref(),
                            ft.as_os_str(),
                            "-o".as_ref(),
                            f.as_os_str(),
                        ];
                        zdn.run(dc, &args)?;
                        f
                    }
                };
                let add = zdn.add(dc, &file, &o.name, Some(&base_name))?;
                let bundle = dir.join(format!("{base_name}.zdnb"));
                let args: Vec<&std::ffi::OsStr> = vec![
                    "export".as_ref(),
                    base_name.as_ref(),
                    "-o".as_ref(),
                    bundle.as_os_str(),
                ];
                zdn.run(dc, &args)?;
                for (j, h) in homes.iter().enumerate() {
                    if j != s.datacenter() {
                        let args: Vec<&std::ffi::OsStr> = vec![
                            "import".as_ref(),
                            bundle.as_os_str(),
                            "--trust-any".as_ref(),
                        ];
                        zdn.run(h, &args)?;
                    }
                }
                Published {
                    name: o.name.clone(),
                    kind: "delta",
                    file,
                    add,
                    base: Some(base_add),
                }
            }
        };
        out.push(p);
    }
    Ok(out)
}

/// Writes a safetensors file whose one tensor is `len` pseudo-random bytes (splitmix64 from
/// `seed`).
fn generate(path: &Path, len: u64, seed: u64) -> Result<(), ScenarioError> {
    let err = |e| ScenarioError::io("writing", path, e);
    let mut w = BufWriter::new(File::create(path).map_err(err)?);
    let mut header =
        format!("{{\"random\":{{\"dtype\":\"U8\",\"shape\":[{len}],\"data_offsets\":[0,{len}]}}}}");
    // Spaces so the data starts 8-aligned after the 8-byte length prefix, as writers do.
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    w.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(err)?;
    w.write_all(header.as_bytes()).map_err(err)?;
    let mut state = seed;
    let mut left = len;
    let mut block = vec![0u8; 1 << 20];
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            word.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        w.write_all(&block[..n]).map_err(err)?;
        left -= n as u64;
    }
    w.flush().map_err(err)
}

/// Whether two files hold the same bytes.
pub fn same_bytes(a: &Path, b: &Path) -> Result<bool, ScenarioError> {
    let open = |p: &Path| File::open(p).map_err(|e| ScenarioError::io("reading", p, e));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let na = read_full(&mut fa, &mut ba).map_err(|e| ScenarioError::io("reading", a, e))?;
        let nb = read_full(&mut fb, &mut bb).map_err(|e| ScenarioError::io("reading", b, e))?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

/// Reads until `buf` is full or the file ends.
fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
