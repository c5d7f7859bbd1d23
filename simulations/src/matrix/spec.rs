//! The matrix file (TOML) and its checked form: a grid of links and extra cells.
//!
//! ```toml
//! name = "satellite"
//! payload_seconds = 45          # each cell's payload: this many seconds of its link's rate
//! jobs = 4                      # cells run side by side (each in its own namespaces)
//! alone_from = "10mbit"         # cells at this rate or faster run with nothing beside them
//! transport = "tcp"             # what the nodes' libp2p connections use: tcp (default) or quic
//! [grid]
//! rates = ["64kbit", "1mbit"]
//! delays = ["20ms", "700ms"]    # one way
//! losses = [0.0, 0.05]
//! stated_rate = "absent"        # what the station is told: absent, exact or double
//! [[cell]]
//! name = "outage-10s"
//! rate = "1mbit"
//! delay = "300ms"
//! loss = 0.01
//! outages = ["20s-30s"]         # and/or rate_changes = ["20s:500kbit", "50s:1mbit"]; alone = true
//! ```

use std::time::Duration;

use serde::Deserialize;

use zdn_linkem::shaper::{validate_rate_changes, Outage, RateChange};
use zdn_linkem::units::{parse_bits_per_sec, parse_duration, parse_outage, parse_rate_change};

use super::cells::{Cell, StatedRate};
use super::error::MatrixError;
use crate::scenario::spec::Transport;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatrixFile {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default = "one")]
    seed: u64,
    payload_seconds: f64,
    #[serde(default = "one_usize")]
    jobs: usize,
    alone_from: Option<String>,
    #[serde(default)]
    transport: Transport,
    grid: Option<GridFile>,
    #[serde(rename = "cell", default)]
    cells: Vec<CellFile>,
}

fn one() -> u64 {
    1
}

fn one_usize() -> usize {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GridFile {
    rates: Vec<String>,
    delays: Vec<String>,
    losses: Vec<f64>,
    #[serde(default)]
    stated_rate: StatedRate,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CellFile {
    name: String,
    rate: String,
    delay: String,
    loss: f64,
    #[serde(default)]
    stated_rate: StatedRate,
    #[serde(default)]
    outages: Vec<String>,
    #[serde(default)]
    rate_changes: Vec<String>,
    #[serde(default)]
    alone: bool,
}

/// A checked matrix: every cell it will run, in order.
#[derive(Debug, Clone)]
pub struct Matrix {
    pub name: String,
    pub description: String,
    pub seed: u64,
    /// Each cell's payload is this much of its link's (initial) rate.
    pub payload_seconds: f64,
    /// Cells run side by side, at most this many.
    pub jobs: usize,
    pub cells: Vec<Cell>,
}

impl Matrix {
    /// Parses and checks a matrix file's text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Matrix, MatrixError> {
        let bad = |message: String| MatrixError::Invalid {
            file: file.to_owned(),
            message,
        };
        let f: MatrixFile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        if !(f.payload_seconds.is_finite() && (1.0..=3600.0).contains(&f.payload_seconds)) {
            return Err(bad(format!(
                "payload_seconds {} is not within 1..=3600",
                f.payload_seconds
            )));
        }
        if !(1..=16).contains(&f.jobs) {
            return Err(bad(format!("jobs {} is not within 1..=16", f.jobs)));
        }
        let alone_from = f
            .alone_from
            .as_deref()
            .map(parse_bits_per_sec)
            .transpose()
            .map_err(|e| bad(format!("alone_from: {e}")))?;
        let mut cells = Vec::new();
        if let Some(g) = &f.grid {
            cells.extend(grid_cells(g).map_err(|e| bad(format!("[grid]: {e}")))?);
        }
        for c in &f.cells {
            cells.push(extra_cell(c).map_err(|e| bad(format!("cell {:?}: {e}", c.name)))?);
        }
        if cells.is_empty() {
            return Err(bad("no cells: give a [grid] or [[cell]]s".into()));
        }
        for (i, c) in cells.iter().enumerate() {
            if cells[..i].iter().any(|x| x.name == c.name) {
                return Err(bad(format!("two cells named {:?}", c.name)));
            }
        }
        for c in &mut cells {
            c.alone |= alone_from.is_some_and(|a| c.rate_bps >= a);
            c.transport = f.transport;
        }
        Ok(Matrix {
            name: f.name,
            description: f.description,
            seed: f.seed,
            payload_seconds: f.payload_seconds,
            jobs: f.jobs,
            cells,
        })
    }
}

fn check_loss(loss: f64) -> Result<(), String> {
    if (0.0..1.0).contains(&loss) {
        Ok(())
    } else {
        Err(format!("loss {loss} is not a probability below 1"))
    }
}

/// Every (rate, delay, loss) of the grid, rates outermost.
fn grid_cells(g: &GridFile) -> Result<Vec<Cell>, String> {
    if g.rates.is_empty() || g.delays.is_empty() || g.losses.is_empty() {
        return Err("rates, delays and losses each need at least one value".into());
    }
    let rates = g
        .rates
        .iter()
        .map(|r| parse_bits_per_sec(r))
        .collect::<Result<Vec<_>, _>>()?;
    let delays = g
        .delays
        .iter()
        .map(|d| parse_duration(d))
        .collect::<Result<Vec<_>, _>>()?;
    g.losses.iter().try_for_each(|&l| check_loss(l))?;
    let mut cells = Vec::new();
    for &rate_bps in &rates {
        for &delay in &delays {
            for &loss in &g.losses {
                cells.push(Cell {
                    name: Cell::grid_name(rate_bps, delay, loss),
                    rate_bps,
                    delay,
                    loss,
                    stated_rate: g.stated_rate,
                    outages: Vec::new(),
                    rate_changes: Vec::new(),
                    alone: false,
                    transport: Transport::Tcp,
                });
            }
        }
    }
    Ok(cells)
}

fn extra_cell(c: &CellFile) -> Result<Cell, String> {
    let ok = !c.name.is_empty()
        && c.name.len() <= 40
        && c.name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !c.name.starts_with('.');
    if !ok {
        return Err("a cell's name is 1..40 of [A-Za-z0-9._-]".into());
    }
    check_loss(c.loss)?;
    let outages: Vec<Outage> = c
        .outages
        .iter()
        .map(|o| parse_outage(o))
        .collect::<Result<_, _>>()?;
    let rate_changes: Vec<RateChange> = c
        .rate_changes
        .iter()
        .map(|r| parse_rate_change(r))
        .collect::<Result<_, _>>()?;
    validate_rate_changes(&rate_changes)?;
    Ok(Cell {
        name: c.name.clone(),
        rate_bps: parse_bits_per_sec(&c.rate)?,
        delay: parse_duration(&c.delay)?,
        loss: c.loss,
        stated_rate: c.stated_rate,
        outages,
        rate_changes,
        alone: c.alone,
        transport: Transport::Tcp,
    })
}

/// Seconds of a cell's outages, for its timeout.
pub fn outage_seconds(outages: &[Outage]) -> f64 {
    outages
        .iter()
        .map(|o| o.to.saturating_sub(o.from))
        .sum::<Duration>()
        .as_secs_f64()
}
