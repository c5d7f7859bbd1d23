//! Runs a matrix: writes each cell's scenario file, runs `zdn-sim scenario` on it as a child
//! process (each child makes its own namespaces, named after its process id, so children run side
//! by side without meeting), at most `jobs` at once, and cells marked `alone` with nothing beside
//! them. What each run did (exit status, wall time, how many cells ran beside it) goes into the
//! summary ([`super::table`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::scenario::Scenario;

use super::cells::Cell;
use super::error::MatrixError;
use super::spec::Matrix;

/// How to run.
#[derive(Debug)]
pub struct MatrixOptions<'a> {
    /// Reports go to `out/<cell>.json` and `.png`, scenario files to `out/scenarios/`.
    pub out: PathBuf,
    /// Each cell's `zdn-sim scenario` output.
    pub logs: PathBuf,
    /// The executable with the `scenario` subcommand (zdn-sim itself).
    pub exe: PathBuf,
    /// Passed to `zdn-sim scenario --zdn`.
    pub zdn: Option<PathBuf>,
    /// Keep a cell whose report is already in `out` instead of running it again.
    pub keep_done: bool,
    pub stop: &'a AtomicBool,
}

/// What running one cell did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CellRun {
    pub cell: String,
    /// `zdn-sim scenario`'s exit status: 0 fetched and verified, 2 not, 1 could not run; none
    /// when it was not run here (`kept` or stopped before it).
    pub exit_code: Option<i32>,
    /// Its report was already in `out` (`--keep-done`).
    pub kept: bool,
    /// Unix seconds it started and ended.
    pub started_unix_s: Option<u64>,
    pub wall_seconds: Option<f64>,
    /// The most other cells that ran at any moment while this one ran.
    pub most_beside: usize,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Writes `out/scenarios/<cell>.toml` for every cell and checks each parses as a scenario.
pub fn write_scenarios(m: &Matrix, out: &Path) -> Result<Vec<PathBuf>, MatrixError> {
    let dir = out.join("scenarios");
    std::fs::create_dir_all(&dir).map_err(|e| MatrixError::io("creating", &dir, e))?;
    m.cells
        .iter()
        .map(|c| {
            let text = c.scenario_toml(&m.name, m.seed, m.payload_seconds);
            let path = dir.join(format!("{}.toml", c.name));
            Scenario::parse(&path.display().to_string(), &text).map_err(|e| MatrixError::Cell {
                cell: c.name.clone(),
                message: e.to_string(),
            })?;
            std::fs::write(&path, text).map_err(|e| MatrixError::io("writing", &path, e))?;
            Ok(path)
        })
        .collect()
}

struct Running {
    index: usize,
    child: Child,
    started: Instant,
}

/// The order cells run in: those that may run side by side first, then the `alone` ones.
pub fn run_order(cells: &[Cell]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..cells.len()).filter(|&i| !cells[i].alone).collect();
    order.extend((0..cells.len()).filter(|&i| cells[i].alone));
    order
}

/// Runs every cell; returns what each run did, in the matrix's order.
pub fn run(m: &Matrix, o: &MatrixOptions) -> Result<Vec<CellRun>, MatrixError> {
    let files = write_scenarios(m, &o.out)?;
    std::fs::create_dir_all(&o.logs).map_err(|e| MatrixError::io("creating", &o.logs, e))?;
    let mut runs: Vec<CellRun> = m
        .cells
        .iter()
        .map(|c| CellRun {
            cell: c.name.clone(),
            exit_code: None,
            kept: false,
            started_unix_s: None,
            wall_seconds: None,
            most_beside: 0,
        })
        .collect();
    let mut pending: std::collections::VecDeque<usize> = run_order(&m.cells).into();
    let mut running: Vec<Running> = Vec::new();
    let total = m.cells.len();
    let mut finished = 0usize;
    while !pending.is_empty() || !running.is_empty() {
        if o.stop.load(Ordering::Relaxed) {
            for r in &mut running {
                if let Ok(pid) = i32::try_from(r.child.id()) {
                    // SAFETY: signalling our own child by its id; it has not been reaped yet.
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                }
            }
            for r in &mut running {
                let _ = r.child.wait();
            }
            eprintln!("zdn-sim: matrix stopped; {} cell(s) not run", pending.len());
            break;
        }
        // Reap what ended.
        let mut still = Vec::new();
        for mut r in running.drain(..) {
            match r.child.try_wait() {
                Ok(Some(status)) => {
                    let run = &mut runs[r.index];
                    run.exit_code = status.code();
                    run.wall_seconds = Some(r.started.elapsed().as_secs_f64());
                    finished += 1;
                    eprintln!(
                        "zdn-sim: [{finished}/{total}] {} ended ({}) after {:.0} s",
                        run.cell,
                        status,
                        r.started.elapsed().as_secs_f64()
                    );
                }
                Ok(None) => still.push(r),
                Err(e) => return Err(MatrixError::io("waiting for", &files[r.index], e)),
            }
        }
        running = still;
        // Start what may start.
        while let Some(&next) = pending.front() {
            let cell = &m.cells[next];
            if o.keep_done && o.out.join(format!("{}.json", cell.name)).exists() {
                pending.pop_front();
                runs[next].kept = true;
                finished += 1;
                eprintln!("zdn-sim: [{finished}/{total}] {} kept", cell.name);
                continue;
            }
            let alone_running = running.iter().any(|r| m.cells[r.index].alone);
            let may = if cell.alone {
                running.is_empty()
            } else {
                running.len() < m.jobs && !alone_running
            };
            if !may {
                break;
            }
            pending.pop_front();
            running.push(Running {
                index: next,
                child: spawn_cell(o, &files[next], &cell.name)?,
                started: Instant::now(),
            });
            runs[next].started_unix_s = Some(unix_now());
            eprintln!("zdn-sim: {} started ({} running)", cell.name, running.len());
        }
        let beside = running.len().saturating_sub(1);
        for r in &running {
            let run = &mut runs[r.index];
            run.most_beside = run.most_beside.max(beside);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(runs)
}

fn spawn_cell(o: &MatrixOptions, file: &Path, name: &str) -> Result<Child, MatrixError> {
    let log = o.logs.join(format!("{name}.log"));
    let f = std::fs::File::create(&log).map_err(|e| MatrixError::io("creating", &log, e))?;
    let f2 = f
        .try_clone()
        .map_err(|e| MatrixError::io("opening", &log, e))?;
    let mut c = Command::new(&o.exe);
    c.arg("scenario").arg(file).arg("--out").arg(&o.out);
    if let Some(z) = &o.zdn {
        c.arg("--zdn").arg(z);
    }
    c.stdin(Stdio::null())
        .stdout(Stdio::from(f))
        .stderr(Stdio::from(f2))
        .spawn()
        .map_err(|e| MatrixError::io("starting zdn-sim scenario for", file, e))
}
