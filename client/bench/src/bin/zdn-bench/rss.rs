//! `rss`: the real `zdn delta encode` / `apply` on a generated multi-GiB model, peak RSS and wall time
//! of each child process.

use super::*;

// ---------------------------------------------------------------------------------------------------
// Child processes: wall time and peak RSS

#[derive(Debug, Clone, Serialize)]
pub(super) struct ChildRun {
    pub(super) command: String,
    pub(super) wall_s: f64,
    pub(super) peak_rss_bytes: u64,
    /// "gnu-time" (ru_maxrss via /usr/bin/time -v) or "poll-vmhwm" (VmHWM polled every 10 ms).
    pub(super) rss_method: &'static str,
    /// CPU time in user space and in the kernel (polling: as of the last reading before exit).
    pub(super) user_s: f64,
    pub(super) sys_s: f64,
}

pub(super) fn zdn_path(explicit: Option<&Path>) -> Result<PathBuf> {
    let p = match explicit {
        Some(p) => p.to_owned(),
        None => {
            std::env::current_exe()?.with_file_name(format!("zdn{}", std::env::consts::EXE_SUFFIX))
        }
    };
    ensure!(
        p.is_file(),
        "{} not found: build it with `cargo build --release -p zdn`",
        p.display()
    );
    Ok(p)
}

pub(super) fn gnu_time_works() -> bool {
    Command::new("/usr/bin/time")
        .args(["-v", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `prog args…` with stdout to `stdout_to`, and measures its wall time and peak RSS.
pub(super) fn run_child(
    prog: &Path,
    args: &[&std::ffi::OsStr],
    stdout_to: &Path,
    method: RssMethod,
) -> Result<ChildRun> {
    let use_time = match method {
        RssMethod::Auto => gnu_time_works(),
        RssMethod::Time => {
            ensure!(gnu_time_works(), "/usr/bin/time -v does not work here");
            true
        }
        RssMethod::Poll => false,
    };
    let shown = std::iter::once(prog.display().to_string())
        .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    let out = File::create(stdout_to)?;
    if use_time {
        run_under_gnu_time(prog, args, out, &stdout_to.with_extension("time"), shown)
    } else {
        run_polling_vmhwm(prog, args, out, shown)
    }
}

/// [`run_child`] under `/usr/bin/time -v`, which writes its report to `report` (removed after).
fn run_under_gnu_time(
    prog: &Path,
    args: &[&std::ffi::OsStr],
    out: File,
    report: &Path,
    shown: String,
) -> Result<ChildRun> {
    let mut cmd = Command::new("/usr/bin/time");
    cmd.arg("-v")
        .arg("-o")
        .arg(report)
        .arg(prog)
        .args(args)
        .stdout(out);
    let t = Instant::now();
    let status = cmd.status().with_context(|| format!("running {shown}"))?;
    let wall = t.elapsed().as_secs_f64();
    ensure!(status.success(), "{shown} failed: {status}");
    let text = std::fs::read_to_string(report)?;
    let kib = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .context("no maximum RSS in /usr/bin/time output")?;
    let secs = |key: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let (user_s, sys_s) = (secs("User time (seconds):"), secs("System time (seconds):"));
    let _ = std::fs::remove_file(report);
    Ok(ChildRun {
        command: shown,
        wall_s: wall,
        peak_rss_bytes: kib * 1024,
        rss_method: "gnu-time",
        user_s,
        sys_s,
    })
}

/// [`run_child`] polling the child's `/proc` files every 10 ms.
fn run_polling_vmhwm(
    prog: &Path,
    args: &[&std::ffi::OsStr],
    out: File,
    shown: String,
) -> Result<ChildRun> {
    let t = Instant::now();
    let mut child = Command::new(prog)
        .args(args)
        .stdout(out)
        .spawn()
        .with_context(|| format!("running {shown}"))?;
    let status_path = format!("/proc/{}/status", child.id());
    let stat_path = format!("/proc/{}/stat", child.id());
    let mut peak_kib = 0u64;
    let (mut user_s, mut sys_s) = (0.0, 0.0);
    let status = loop {
        // VmHWM is the kernel's high-water mark, so the last reading before exit is the peak up to
        // 10 ms before the end.
        if let Some(v) = read_vmhwm_kib(&status_path) {
            peak_kib = peak_kib.max(v);
        }
        if let Some((u, k)) = read_cpu_seconds(&stat_path) {
            (user_s, sys_s) = (u, k);
        }
        if let Some(st) = child.try_wait()? {
            break st;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let wall = t.elapsed().as_secs_f64();
    ensure!(status.success(), "{shown} failed: {status}");
    Ok(ChildRun {
        command: shown,
        wall_s: wall,
        peak_rss_bytes: peak_kib * 1024,
        rss_method: "poll-vmhwm",
        user_s,
        sys_s,
    })
}

/// VmHWM (KiB) from a `/proc/PID/status`, if it can be read.
pub(super) fn read_vmhwm_kib(status_path: &str) -> Option<u64> {
    std::fs::read_to_string(status_path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
}

/// (user, system) CPU seconds from a `/proc/PID/stat`, if it can be read: utime and stime, the 12th
/// and 13th fields after the command name, in USER_HZ = 100 ticks.
fn read_cpu_seconds(stat_path: &str) -> Option<(f64, f64)> {
    let s = std::fs::read_to_string(stat_path).ok()?;
    let f: Vec<&str> = s
        .rsplit_once(')')
        .map_or("", |(_, r)| r)
        .split_whitespace()
        .collect();
    let (u, k) = (f.get(11)?, f.get(12)?);
    Some((
        u.parse::<f64>().unwrap_or(0.0) / 100.0,
        k.parse::<f64>().unwrap_or(0.0) / 100.0,
    ))
}

/// Time to memcpy `n` bytes between two pre-touched buffers (best of 3).
pub(super) fn memcpy_time(n: usize) -> f64 {
    let src = vec![7u8; n];
    let mut dst = vec![1u8; n];
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let (d, ()) = time(|| dst.copy_from_slice(&src));
        black_box(&dst);
        best = best.min(d.as_secs_f64());
    }
    best
}

/// The I/O floor of an apply: read `src` (warm page cache) in 64 MiB pieces, write it to `dst` and fsync.
pub(super) fn file_copy_time(src: &Path, dst: &Path) -> Result<f64> {
    let t = Instant::now();
    let mut r = File::open(src)?;
    let mut w = File::create(dst)?;
    let mut buf = vec![0u8; 64 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        w.write_all(&buf[..n])?;
    }
    w.sync_all()?;
    let secs = t.elapsed().as_secs_f64();
    drop(w);
    std::fs::remove_file(dst)?;
    Ok(secs)
}

pub(super) fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

// ---------------------------------------------------------------------------------------------------
// rss

#[derive(Debug, Clone, Serialize)]
pub(super) struct RssReport {
    dtype: Dt,
    layers: u32,
    hidden: u64,
    intermediate: u64,
    vocab: u64,
    model_bytes: u64,
    largest_tensor: String,
    largest_tensor_bytes: u64,
    generate_s: f64,
    delta_bytes: u64,
    output_bytes: u64,
    encode: ChildRun,
    apply: ChildRun,
    /// 2 × largest tensor + 64 MiB.
    goal_rss_bytes: u64,
    encode_goal_met: bool,
    apply_goal_met: bool,
    /// memcpy of the output's size between two pre-touched buffers.
    memcpy_output_s: f64,
    apply_over_memcpy: f64,
    /// Read the base file (warm cache), write a copy and fsync it: the I/O an apply cannot avoid.
    file_copy_fsync_s: f64,
    apply_over_file_copy: f64,
}

pub(super) fn bench_rss(a: &RssArgs, say: bool) -> Result<RssReport> {
    let zdn = zdn_path(a.zdn.as_deref())?;
    let spec = SyntheticSpec {
        dtype: a.dtype.dtype(),
        layers: a.layers,
        hidden: a.hidden,
        intermediate: a.intermediate,
        vocab: a.vocab,
        delta_scale: 0.01,
        seed: 42,
    };
    let layouts = spec.layouts();
    let size = spec.dtype.size() as u64;
    let tensor_bytes = |shape: &[u64]| shape.iter().product::<u64>() * size;
    let largest = layouts
        .iter()
        .max_by_key(|l| tensor_bytes(&l.shape))
        .context("no tensors")?;
    let largest_bytes = tensor_bytes(&largest.shape);
    let data_bytes: u64 = layouts.iter().map(|l| tensor_bytes(&l.shape)).sum();

    std::fs::create_dir_all(&a.dir)?;
    let base = a.dir.join("base.safetensors");
    let fine = a.dir.join("finetuned.safetensors");
    let delta = a.dir.join("delta.bitdelta");
    let output = a.dir.join("applied.safetensors");
    let generate_s = generate_pair(a, &spec, &base, &fine, data_bytes, say)?;
    let model_bytes = std::fs::metadata(&base)?.len();

    let (encode, apply) =
        encode_and_apply(&zdn, &a.dir, a.method, [&base, &fine, &delta, &output])?;
    let delta_bytes = std::fs::metadata(&delta)?.len();
    let output_bytes = std::fs::metadata(&output)?.len();
    ensure!(
        output_bytes == model_bytes,
        "applied model is {output_bytes} bytes, the base {model_bytes}"
    );
    // Nothing else needs the output: free its page cache before the references run.
    std::fs::remove_file(&output)?;
    let memcpy_output_s = memcpy_time(output_bytes as usize);
    let file_copy_fsync_s = file_copy_time(&base, &a.dir.join("copy.tmp"))?;
    if !a.keep {
        for p in [&base, &fine, &delta] {
            let _ = std::fs::remove_file(p);
        }
    }
    let _ = std::fs::remove_file(a.dir.join("encode.json"));
    let _ = std::fs::remove_file(a.dir.join("apply.json"));

    let goal_rss = 2 * largest_bytes + (64 << 20);
    let r = RssReport {
        dtype: a.dtype,
        layers: a.layers,
        hidden: a.hidden,
        intermediate: a.intermediate,
        vocab: a.vocab,
        model_bytes,
        largest_tensor: format!("{} {:?}", largest.name, largest.shape),
        largest_tensor_bytes: largest_bytes,
        generate_s,
        delta_bytes,
        output_bytes,
        goal_rss_bytes: goal_rss,
        encode_goal_met: encode.peak_rss_bytes <= goal_rss,
        apply_goal_met: apply.peak_rss_bytes <= goal_rss,
        apply_over_memcpy: apply.wall_s / memcpy_output_s,
        apply_over_file_copy: apply.wall_s / file_copy_fsync_s,
        memcpy_output_s,
        file_copy_fsync_s,
        encode,
        apply,
    };
    if say {
        print_rss(&r);
    }
    Ok(r)
}

/// Writes the base + fine-tune pair of `spec` to `base` and `fine` (`data_bytes` of tensors),
/// unless `--keep` left exactly this spec's pair there. Returns the seconds it took (0 when kept).
fn generate_pair(
    a: &RssArgs,
    spec: &SyntheticSpec,
    base: &Path,
    fine: &Path,
    data_bytes: u64,
    say: bool,
) -> Result<f64> {
    let layouts = spec.layouts();
    // Reuse a kept pair only if both files hold exactly this spec's tensors.
    let same = |p: &Path| {
        zdn::model::file::ModelFile::open(p).is_ok_and(|m| {
            m.header.tensors.len() == layouts.len()
                && m.header
                    .tensors
                    .iter()
                    .zip(&layouts)
                    .all(|(t, l)| t.name == l.name && t.dtype == l.dtype && t.shape == l.shape)
        })
    };
    if a.keep && same(base) && same(fine) {
        return Ok(0.0);
    }
    if say {
        println!(
            "rss: generating a {:.2} GiB {} pair in {} …",
            data_bytes as f64 / (1u64 << 30) as f64,
            a.dtype.name(),
            a.dir.display()
        );
    }
    let (d, r) = time(|| write_pair(spec, base, fine));
    r.context("generating the model pair")?;
    Ok(d.as_secs_f64())
}

/// Runs `zdn delta encode` (base, fine → delta) then `zdn delta apply` (base, delta → output) as
/// child processes, their stdout to `encode.json` and `apply.json` in `dir`; `files` is
/// [base, fine, delta, output].
pub(super) fn encode_and_apply(
    zdn: &Path,
    dir: &Path,
    method: RssMethod,
    files: [&Path; 4],
) -> Result<(ChildRun, ChildRun)> {
    let [base, fine, delta, output] = files;
    let encode = run_child(
        zdn,
        &[
            os("delta"),
            os("encode"),
            os("--base"),
            base.as_os_str(),
            os("--finetuned"),
            fine.as_os_str(),
            os("-o"),
            delta.as_os_str(),
            os("--json"),
        ],
        &dir.join("encode.json"),
        method,
    )?;
    let apply = run_child(
        zdn,
        &[
            os("delta"),
            os("apply"),
            os("--base"),
            base.as_os_str(),
            os("--delta"),
            delta.as_os_str(),
            os("-o"),
            output.as_os_str(),
            os("--json"),
        ],
        &dir.join("apply.json"),
        method,
    )?;
    Ok((encode, apply))
}

fn print_rss(r: &RssReport) {
    println!(
        "rss: {} model, {} layers, hidden {}, intermediate {}, vocab {}: {:.1} MiB; largest tensor {} = {:.1} MiB",
        r.dtype.name(),
        r.layers,
        r.hidden,
        r.intermediate,
        r.vocab,
        mib(r.model_bytes),
        r.largest_tensor,
        mib(r.largest_tensor_bytes)
    );
    println!(
        "     delta {:.1} MiB; goal: peak RSS ≤ 2 × largest + 64 MiB = {:.1} MiB; RSS method {}",
        mib(r.delta_bytes),
        mib(r.goal_rss_bytes),
        r.encode.rss_method
    );
    println!(
        "{:<14} {:>9} {:>7} {:>7} {:>14}  goal",
        "command", "wall s", "user s", "sys s", "peak RSS MiB"
    );
    for (name, c, met) in [
        ("delta encode", &r.encode, r.encode_goal_met),
        ("delta apply", &r.apply, r.apply_goal_met),
    ] {
        println!(
            "{:<14} {:>9.2} {:>7.2} {:>7.2} {:>14.1}  {}",
            name,
            c.wall_s,
            c.user_s,
            c.sys_s,
            mib(c.peak_rss_bytes),
            goal(met)
        );
    }
    println!(
        "     apply ÷ memcpy of the output size ({:.3} s) = {:.1}; apply ÷ copy-file+fsync of the base ({:.2} s) = {:.2}",
        r.memcpy_output_s, r.apply_over_memcpy, r.file_copy_fsync_s, r.apply_over_file_copy
    );
    println!();
}
