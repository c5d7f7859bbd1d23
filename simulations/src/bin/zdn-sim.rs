//! `zdn-sim`: runs scenario files — real `zdn` nodes behind emulated satellite and site links —
//! and writes what they measured as JSON and a PNG plot.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use zdn_linkem::bulk;
use zdn_linkem::units::parse_duration;
use zdn_simulations::matrix::{self, run::MatrixOptions, Matrix};
use zdn_simulations::scenario::{self, RunOptions, Scenario};

/// Scenario runner for zdn's field conditions: starts real `zdn` nodes in network
/// namespaces joined by emulated links (rate, delay, jitter, loss, outages, queue), publishes
/// objects at a datacenter node, fetches them at stations and site devices, and measures every
/// link's bytes over time. Needs root, `ip` (iproute2) and /dev/net/tun.
#[derive(Parser, Debug)]
#[command(name = "zdn-sim", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a scenario file; write OUT/NAME.json (bytes per node over time, fetch times,
    /// goodput, the plain-TCP reference) and OUT/NAME.png (cumulative bytes per node,
    /// outages shaded). Exit status: 0 every fetch completed and verified, 2 one did not (the
    /// report says which), 1 the scenario could not run. Example:
    ///
    ///   sudo target/debug/zdn-sim scenario simulations/scenarios/one-station.toml --out docs/plots
    ///
    /// Goodput = payload ÷ (link rate × seconds the link was up during the transfer); the
    /// payload is the object's stored chunk bytes. The TCP reference sends the same number of
    /// bytes over one connection through a fresh link with the same settings, starting at the
    /// same offset from the link's start, so the same outages hit it.
    #[command(verbatim_doc_comment)]
    Scenario {
        /// The scenario (TOML; see simulations/scenarios/*.toml and docs/field.md).
        file: PathBuf,
        /// The zdn binary to run (default: the `zdn` next to this executable).
        #[arg(long, value_name = "PATH")]
        zdn: Option<PathBuf>,
        /// Where to write the report and the plot.
        #[arg(long, value_name = "DIR", default_value = "zdn-sim-reports")]
        out: PathBuf,
        /// Scratch directory for node homes, objects and logs (default: a new one under the
        /// system's temporary directory, removed at the end).
        #[arg(long, value_name = "DIR")]
        work: Option<PathBuf>,
        /// Keep the scratch directory (node logs, stores) after the run.
        #[arg(long)]
        keep_work: bool,
    },
    /// Run a matrix file: one scenario per cell (a grid of link rates × one-way delays × losses,
    /// and extra cells), each by `zdn-sim scenario` with its TCP reference, up to `jobs` at once;
    /// then OUT/matrix.json and OUT/matrix.md, the table of every cell against the goals. Each
    /// cell's report is OUT/CELL.json and .png, its scenario file OUT/scenarios/CELL.toml. Example:
    ///
    ///   sudo target/debug/zdn-sim matrix simulations/matrices/satellite.toml --out docs/plots/matrix
    ///
    /// Exit status: 0 when every cell ran, 1 when the matrix could not run or was stopped.
    #[command(verbatim_doc_comment)]
    Matrix {
        /// The matrix (TOML; see simulations/matrices/*.toml).
        file: PathBuf,
        /// Where to write the reports, scenario files and the summary.
        #[arg(long, value_name = "DIR", default_value = "zdn-sim-matrix")]
        out: PathBuf,
        /// The zdn binary each cell runs (default: the `zdn` next to this executable).
        #[arg(long, value_name = "PATH")]
        zdn: Option<PathBuf>,
        /// Where each cell's `zdn-sim scenario` output goes (default: OUT/../matrix-logs).
        #[arg(long, value_name = "DIR")]
        logs: Option<PathBuf>,
        /// Keep cells whose report is already in OUT instead of running them again.
        #[arg(long)]
        keep_done: bool,
        /// Run nothing: write the summary from the reports already in OUT.
        #[arg(long)]
        table_only: bool,
    },
    /// Check scenario files without running them: print what each describes.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// The TCP reference's receiving end: accept one connection, print bytes and seconds.
    #[command(hide = true)]
    TcpSink {
        bind: String,
        #[arg(long, value_parser = parse_duration, default_value = "1h")]
        accept_within: Duration,
    },
    /// The TCP reference's sending end: send BYTES zero bytes over one connection.
    #[command(hide = true)]
    TcpSend { to: String, bytes: u64 },
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn read(file: &Path) -> anyhow::Result<Scenario> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    Ok(Scenario::parse(&file.display().to_string(), &text)?)
}

fn describe(s: &Scenario) -> String {
    let names = |f: &dyn Fn(&scenario::spec::NodeSpec) -> bool| {
        s.nodes
            .iter()
            .filter(|n| f(n))
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    use scenario::spec::Place;
    format!(
        "{}: link {} bit/s, {:?} each way, loss {}, {} outage(s); datacenter {}; stations {}; lan {}; {} object(s), {} fetch(es)",
        s.name,
        s.link.rate_bps,
        s.link.delay,
        s.link.loss,
        s.link.outages.len(),
        names(&|n| n.place == Place::Datacenter),
        names(&|n| n.place == Place::Station),
        names(&|n| n.place == Place::Lan),
        s.objects.len(),
        s.fetches.len()
    )
}

fn run_scenario(
    file: PathBuf,
    zdn: Option<PathBuf>,
    out: PathBuf,
    work: Option<PathBuf>,
    keep_work: bool,
) -> anyhow::Result<ExitCode> {
    let s = read(&file)?;
    // SAFETY: installing an async-signal-safe handler (it only stores to an atomic).
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
    let opts = RunOptions {
        file: file.display().to_string(),
        zdn,
        helper: std::env::current_exe().context("finding this executable")?,
        work,
        keep_work,
        stop: &STOP,
    };
    let mut report = scenario::run(&s, &opts)?;
    let (json, png) = scenario::write(&mut report, &out)?;
    println!("report {}", json.display());
    println!("plot   {}", png.display());
    let g = |v: Option<f64>| v.map_or("-".to_owned(), |g| format!("{g:.3}"));
    for f in &report.fetches {
        println!(
            "fetch  {} <- {} {}: {}{}",
            f.node,
            f.from.join(","),
            f.object,
            match f.seconds {
                Some(t) if f.completed && f.verified => format!("{t:.1} s, verified"),
                _ => "FAILED".to_owned(),
            },
            f.error
                .as_ref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
    }
    for sat in report.satellite.iter().filter(|s| s.payload_bytes > 0) {
        println!(
            "satellite {}: payload {} B; goodput zdn {}, TCP {}, zdn/TCP {}; down IP bytes / payload {}",
            sat.station,
            sat.payload_bytes,
            g(sat.goodput),
            g(sat.reference.as_ref().and_then(|r| r.goodput)),
            g(sat.zdn_over_tcp),
            g(sat.down_ip_bytes_per_payload)
        );
    }
    for i in &report.idle {
        println!(
            "idle   {}: {:.0} B/day received, {:.0} B/day sent",
            i.node, i.received_bytes_per_day, i.sent_bytes_per_day
        );
    }
    if let Some(e) = &report.error {
        eprintln!("zdn-sim: {e}");
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn read_matrix(file: &Path) -> anyhow::Result<Matrix> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    Ok(Matrix::parse(&file.display().to_string(), &text)?)
}

/// The runs recorded by an earlier `zdn-sim matrix` in `out` (for `--table-only` and kept cells).
fn earlier_runs(out: &Path) -> Vec<matrix::run::CellRun> {
    std::fs::read_to_string(out.join("matrix-runs.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

fn run_matrix(
    file: PathBuf,
    out: PathBuf,
    zdn: Option<PathBuf>,
    logs: Option<PathBuf>,
    keep_done: bool,
    table_only: bool,
) -> anyhow::Result<ExitCode> {
    let m = read_matrix(&file)?;
    let earlier = earlier_runs(&out);
    let mut complete = true;
    let runs = if table_only {
        earlier
    } else {
        scenario::check_available()?;
        // SAFETY: installing an async-signal-safe handler (it only stores to an atomic).
        unsafe {
            libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
            libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        }
        let logs =
            logs.unwrap_or_else(|| out.parent().unwrap_or(Path::new(".")).join("matrix-logs"));
        let opts = MatrixOptions {
            out: out.clone(),
            logs,
            exe: std::env::current_exe().context("finding this executable")?,
            zdn,
            keep_done,
            stop: &STOP,
        };
        let mut runs = matrix::run::run(&m, &opts)?;
        for r in runs.iter_mut().filter(|r| r.kept) {
            if let Some(e) = earlier.iter().find(|e| e.cell == r.cell) {
                *r = matrix::run::CellRun {
                    kept: true,
                    ..e.clone()
                };
            }
        }
        complete = !STOP.load(Ordering::Relaxed);
        let path = out.join("matrix-runs.json");
        std::fs::write(&path, serde_json::to_string_pretty(&runs)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        runs
    };
    let summary = matrix::table::summarise(&m, &out, runs)?;
    let c = &summary.counts;
    println!("summary {}", out.join("matrix.md").display());
    println!(
        "cells {}: run {}, completed and verified {}; goodput goal {}, >= TCP {}, bytes goal {}, all {}",
        c.cells, c.ran, c.completed_verified, c.goodput, c.tcp, c.bytes, c.all
    );
    Ok(if complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Scenario {
            file,
            zdn,
            out,
            work,
            keep_work,
        } => run_scenario(file, zdn, out, work, keep_work),
        Command::Matrix {
            file,
            out,
            zdn,
            logs,
            keep_done,
            table_only,
        } => run_matrix(file, out, zdn, logs, keep_done, table_only),
        Command::Check { files } => files
            .iter()
            .try_for_each(|f| {
                println!("{}", describe(&read(f)?));
                anyhow::Ok(())
            })
            .map(|()| ExitCode::SUCCESS),
        Command::TcpSink {
            bind,
            accept_within,
        } => bulk::tcp_sink(&bind, accept_within)
            .map(|r| {
                println!("{}", r.to_json());
                ExitCode::SUCCESS
            })
            .map_err(Into::into),
        Command::TcpSend { to, bytes } => bulk::tcp_send(&to, bytes)
            .map(|()| ExitCode::SUCCESS)
            .map_err(Into::into),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
