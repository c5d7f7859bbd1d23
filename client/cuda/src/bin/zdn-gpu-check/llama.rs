//! A Llama-2-7B-shaped model on the GPU: the fine-tune switch, every tensor reconstructed in place from
//! the resident base. The base is generated (random bf16 weights: the kernels' speed does not depend
//! on the values) and uploaded once; two fine_tunes are 1-bit row-scaled deltas of every matrix
//! (embedding and lm_head included, the norms `unchanged`), built as real `.bitdelta` files in
//! memory and added through the same path as any delta. Shapes: 32 layers of q/k/v/o 4096×4096,
//! gate/up 11008×4096, down 4096×11008, two norms of 4096; embed_tokens and lm_head 32000×4096; the
//! final norm. 6.74 G parameters, 13.5 GB in bf16.

use std::time::Instant;

use zdn_cuda::plan::HostBase;
use zdn_cuda::{DeviceFineTunes, Gpu, GpuError, ResidentModel};
use zdn_protocol::bitdelta::{
    assign_offsets, encode_prelude, reconstruct, BitDeltaFile, Encoding, Granularity, IndexEntry,
    Metadata, TensorData,
};
use zdn_protocol::{DType, Hash};

use crate::bench::{median, random_block};
use crate::cases::Rng;
use crate::exact::first_difference;

/// The tensors of Llama-2-7B (Hugging Face names), in file order.
pub fn llama2_7b() -> Vec<(String, Vec<u64>)> {
    let (d, ff, vocab) = (4096u64, 11008u64, 32000u64);
    let mut t = vec![("model.embed_tokens.weight".to_string(), vec![vocab, d])];
    for l in 0..32 {
        let p = format!("model.layers.{l}");
        for n in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            t.push((format!("{p}.self_attn.{n}.weight"), vec![d, d]));
        }
        t.push((format!("{p}.mlp.gate_proj.weight"), vec![ff, d]));
        t.push((format!("{p}.mlp.up_proj.weight"), vec![ff, d]));
        t.push((format!("{p}.mlp.down_proj.weight"), vec![d, ff]));
        t.push((format!("{p}.input_layernorm.weight"), vec![d]));
        t.push((format!("{p}.post_attention_layernorm.weight"), vec![d]));
    }
    t.push(("model.norm.weight".to_string(), vec![d]));
    t.push(("lm_head.weight".to_string(), vec![vocab, d]));
    t
}

/// Random bf16 weights, repeated from one pattern: tensor `i`'s bytes are the pattern from a
/// tensor-dependent offset (so the host can regenerate any tensor to check it).
struct Pattern(Vec<u8>);

impl Pattern {
    fn new() -> Pattern {
        let mut rng = Rng(7);
        Pattern(crate::bench::random_weights(&mut rng, DType::BF16, 1 << 23))
    }

    fn fill(&self, i: usize, out: &mut [u8]) {
        let start = (i * 4099 * 2) % self.0.len();
        let mut k = 0;
        let mut from = start;
        while k < out.len() {
            let n = (self.0.len() - from).min(out.len() - k);
            out[k..k + n].copy_from_slice(&self.0[from..from + n]);
            k += n;
            from = 0;
        }
    }
}

/// A `.bitdelta` file of 1-bit row-scaled blocks for every matrix and `unchanged` norms.
fn delta_file(shapes: &[(String, Vec<u64>)], seed: u64) -> Result<Vec<u8>, String> {
    let mut rng = Rng(seed);
    let mut entries = Vec::new();
    let mut blocks = Vec::new();
    for (name, shape) in shapes {
        if shape.len() == 2 {
            let (mut e, b) = random_block(&mut rng, DType::BF16, 1, Granularity::Row, shape)
                .ok_or("no block")?;
            e.name = name.clone();
            entries.push(e);
            blocks.push(b);
        } else {
            entries.push(IndexEntry {
                name: name.clone(),
                dtype: DType::BF16,
                shape: shape.clone(),
                encoding: Encoding::Unchanged,
                granularity: Granularity::Tensor,
                offset: 0,
                length: 0,
            });
            blocks.push(Vec::new());
        }
    }
    let meta = Metadata {
        base_hash: Hash::ZERO,
        n_params: shapes.iter().map(|(_, s)| s.iter().product::<u64>()).sum(),
        n_quantized: shapes
            .iter()
            .filter(|(_, s)| s.len() == 2)
            .map(|(_, s)| s.iter().product::<u64>())
            .sum(),
        bits: 1,
        granularity: Granularity::Row,
        clip_sigma: 0.0,
        embeddings: 1,
        model_name: "llama-2-7b-shaped".into(),
    };
    assign_offsets(&meta, &mut entries);
    let mut out = encode_prelude(&meta, &entries).map_err(|e| e.to_string())?;
    for b in blocks {
        out.extend_from_slice(&b);
    }
    Ok(out)
}

struct NoHostBase;

impl HostBase for NoHostBase {
    fn tensor(&self, _: &str) -> Option<TensorData<'_>> {
        None
    }
}

#[derive(Debug, Default)]
pub struct SwitchBench {
    pub params: u64,
    pub base_bytes: u64,
    pub upload_bytes: u64,
    pub bytes_moved: u64,
    pub launches: usize,
    pub copies: usize,
    pub device_ms: Vec<f64>,
    pub wall_ms: Vec<f64>,
    pub copy_ms: f64,
    pub setup_s: f64,
    pub sample_tensors: usize,
    pub sample_mismatches: usize,
    pub sample_first: Vec<String>,
}

impl SwitchBench {
    pub fn describe(&self) -> String {
        let (mut d, mut w) = (self.device_ms.clone(), self.wall_ms.clone());
        let (dm, wm) = (median(&mut d), median(&mut w));
        let dmax = d.last().copied().unwrap_or(f64::NAN);
        let rate = self.bytes_moved as f64 / (dm / 1e3);
        let copy_rate = 2.0 * self.base_bytes as f64 / (self.copy_ms / 1e3);
        format!(
            "{:.2} G params bf16 ({:.2} GB base, {:.3} GB packed delta uploaded): switch median {:.2} ms \
             device ({:.2} ms max), {:.2} ms wall incl. {} launches + {} copies queued, over {} \
             switches; {:.1} GB moved, {:.0} GB/s; copy of the base {:.2} ms, {:.0} GB/s; ratio {:.2}; \
             goal < 10 ms: {} (setup {:.0} s)",
            self.params as f64 / 1e9,
            self.base_bytes as f64 / 1e9,
            self.upload_bytes as f64 / 1e9,
            dm,
            dmax,
            wm,
            self.launches,
            self.copies,
            self.device_ms.len(),
            self.bytes_moved as f64 / 1e9,
            rate / 1e9,
            self.copy_ms,
            copy_rate / 1e9,
            rate / copy_rate,
            if dm < 10.0 { "met" } else { "NOT met" },
            self.setup_s
        )
    }

    pub fn sample_describe(&self) -> String {
        let mut s = format!(
            "{} tensors of the switched 7B weights against the CPU, {} mismatching",
            self.sample_tensors, self.sample_mismatches
        );
        for f in &self.sample_first {
            s.push_str("\n    ");
            s.push_str(f);
        }
        s
    }
}

/// The 7B switch benchmark.
pub fn switch_7b(gpu: &Gpu, quick: bool) -> Result<SwitchBench, String> {
    let t0 = Instant::now();
    let shapes = llama2_7b();
    let mut r = SwitchBench {
        params: shapes.iter().map(|(_, s)| s.iter().product::<u64>()).sum(),
        ..SwitchBench::default()
    };
    let pattern = Pattern::new();
    let base = upload_base(gpu, &shapes, &pattern)?;
    r.base_bytes = base.tensors().iter().map(|t| t.len).sum();
    // The copy baseline: the whole base copied on the device, in the same run.
    r.copy_ms = device_copy_ms(gpu, &base)?;

    let files = [delta_file(&shapes, 11)?, delta_file(&shapes, 12)?];
    let mut set = DeviceFineTunes::new(gpu.clone(), base, 4 << 30).map_err(|x| x.to_string())?;
    for (k, f) in files.iter().enumerate() {
        set.add(&format!("p{k}"), f, &NoHostBase)
            .map_err(|x| x.to_string())?;
    }
    r.upload_bytes = set.upload_bytes() / 2;
    r.setup_s = t0.elapsed().as_secs_f64();
    time_switches(&mut set, quick, &mut r)?;
    check_samples(&set, &files, &shapes, &pattern, &mut r)?;
    Ok(r)
}

/// Allocates the resident base of `shapes` on the device and uploads the pattern's weights.
fn upload_base(
    gpu: &Gpu,
    shapes: &[(String, Vec<u64>)],
    pattern: &Pattern,
) -> Result<ResidentModel, String> {
    let e = |e: GpuError| e.to_string();
    let mut base = ResidentModel::allocate(
        gpu,
        shapes
            .iter()
            .map(|(n, s)| (n.clone(), DType::BF16, s.clone())),
    )
    .map_err(e)?;
    let largest = shapes
        .iter()
        .map(|(_, s)| s.iter().product::<u64>() * 2)
        .max()
        .unwrap_or(0);
    let mut host = vec![0u8; largest as usize];
    for (i, (_, s)) in shapes.iter().enumerate() {
        let len = (s.iter().product::<u64>() * 2) as usize;
        pattern.fill(i, &mut host[..len]);
        base.put(gpu, i, &host[..len]).map_err(e)?;
    }
    Ok(base)
}

/// Median time (ms, of 3) of copying the whole base on the device.
fn device_copy_ms(gpu: &Gpu, base: &ResidentModel) -> Result<f64, String> {
    let e = |e: GpuError| e.to_string();
    let mut scratch = gpu.alloc(base.device_bytes()).map_err(e)?;
    let mut copy = Vec::new();
    for _ in 0..3 {
        copy.push(
            gpu.time_ms(|| gpu.copy(base.buffer(), 0, &mut scratch, 0, base.device_bytes()))
                .map_err(e)?,
        );
    }
    Ok(median(&mut copy))
}

/// Switches between the two fine-tunes (4 times when `quick`, else 10), every switch after the
/// first in place, and records the times and the work of each into `r`.
fn time_switches(
    set: &mut DeviceFineTunes,
    quick: bool,
    r: &mut SwitchBench,
) -> Result<(), String> {
    // The first switch allocates the weights; the ones timed are in place.
    set.switch("p0").map_err(|x| x.to_string())?;
    let reps = if quick { 4 } else { 10 };
    for k in 0..reps {
        let name = if k % 2 == 0 { "p1" } else { "p0" };
        let t = Instant::now();
        let sw = set.switch(name).map_err(|x| x.to_string())?;
        r.wall_ms.push(t.elapsed().as_secs_f64() * 1e3);
        if !sw.in_place {
            return Err(format!("switch {k} was not in place"));
        }
        r.device_ms.push(sw.device_ms);
        (r.bytes_moved, r.launches, r.copies) = (sw.bytes_moved, sw.launches, sw.copies);
    }
    Ok(())
}

/// The weights after the last switch, some tensors against the CPU reference (recorded in `r`).
fn check_samples(
    set: &DeviceFineTunes,
    files: &[Vec<u8>; 2],
    shapes: &[(String, Vec<u64>)],
    pattern: &Pattern,
    r: &mut SwitchBench,
) -> Result<(), String> {
    let active = set.active().unwrap_or("").to_string();
    let file = &files[usize::from(active == "p1")];
    let parsed = BitDeltaFile::parse(file).map_err(|x| x.to_string())?;
    for name in [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.17.mlp.gate_proj.weight",
        "model.layers.31.mlp.down_proj.weight",
        "model.layers.31.post_attention_layernorm.weight",
        "lm_head.weight",
    ] {
        let i = parsed.find(name).ok_or_else(|| format!("no {name}"))?;
        let entry = &parsed.entries[i];
        let bi = shapes
            .iter()
            .position(|(n, _)| n == name)
            .ok_or("no shape")?;
        let mut base_bytes = vec![0u8; entry.byte_len() as usize];
        pattern.fill(bi, &mut base_bytes);
        let b = TensorData::new(DType::BF16, &entry.shape, &base_bytes).ok_or("bad base")?;
        let mut want = vec![0u8; entry.byte_len() as usize];
        reconstruct(entry, parsed.block(i), Some(&b), &mut want).map_err(|x| x.to_string())?;
        let got = set
            .download_weight(name)
            .map_err(|x| x.to_string())?
            .ok_or("no weight")?;
        r.sample_tensors += 1;
        if let Some(d) = first_difference(&got, &want, 2) {
            r.sample_mismatches += 1;
            eprintln!("MISMATCH 7B {active} {name}: {d}");
            r.sample_first.push(format!("{active} {name}: {d}"));
        }
    }
    Ok(())
}
