//! The matrix's summary: per cell what its report says (goodput, the TCP reference, bytes on the
//! link) against the goals, written as `matrix.json` and a markdown table `matrix.md`, both made
//! from the cells' reports by this code.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use super::cells::{rate_text, Cell};
use super::error::MatrixError;
use super::midway::mid_transfer_use;
use super::run::CellRun;
use super::spec::Matrix;

/// The goals a cell is held to (issue 22).
#[derive(Debug, Clone, Serialize)]
pub struct Goals {
    /// Goodput while the link is up, at loss ≤ `lossy_above`.
    pub goodput: f64,
    /// Goodput at loss above `lossy_above`.
    pub goodput_lossy: f64,
    pub lossy_above: f64,
    /// zdn's goodput ÷ the TCP reference's, at least.
    pub over_tcp: f64,
    /// IP bytes the link delivered to the station ÷ payload, at most.
    pub down_bytes_per_payload: f64,
}

impl Default for Goals {
    fn default() -> Self {
        Goals {
            goodput: 0.90,
            goodput_lossy: 0.80,
            lossy_above: 0.02,
            over_tcp: 1.0,
            down_bytes_per_payload: 1.05,
        }
    }
}

impl Goals {
    pub fn goodput_for(&self, loss: f64) -> f64 {
        if loss > self.lossy_above + 1e-9 {
            self.goodput_lossy
        } else {
            self.goodput
        }
    }
}

/// One cell's line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Row {
    pub cell: String,
    pub rate_bps: u64,
    pub delay_ms: u64,
    pub loss: f64,
    pub stated_rate: String,
    /// Outages and rate changes, in words.
    pub events: String,
    /// A report exists.
    pub ran: bool,
    pub completed: bool,
    pub verified: bool,
    pub attempts: Option<u64>,
    pub payload_bytes: Option<u64>,
    pub seconds: Option<f64>,
    pub link_up_seconds: Option<f64>,
    pub goodput: Option<f64>,
    pub tcp_goodput: Option<f64>,
    pub tcp_completed: Option<bool>,
    pub tcp_seconds: Option<f64>,
    pub zdn_over_tcp: Option<f64>,
    pub down_bytes_per_payload: Option<f64>,
    pub up_bytes_per_payload: Option<f64>,
    /// The share of the link zdn's and the TCP reference's bytes used between 10 % and 90 % of
    /// their transfer ([`mid_transfer_use`]).
    pub mid_use: Option<f64>,
    pub tcp_mid_use: Option<f64>,
    /// The TCP reference's IP bytes delivered to its receiver ÷ the same payload.
    pub tcp_down_bytes_per_payload: Option<f64>,
    /// The most other cells that ran beside this one (none known: not run here).
    pub most_beside: Option<usize>,
    /// The goodput this cell is held to.
    pub goodput_goal: f64,
    pub meets_goodput: bool,
    pub meets_tcp: bool,
    pub meets_bytes: bool,
    pub meets_all: bool,
    pub error: Option<String>,
}

/// How many cells meet each goal.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub cells: usize,
    pub ran: usize,
    pub completed_verified: usize,
    pub goodput: usize,
    pub tcp: usize,
    pub bytes: usize,
    pub all: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub matrix: String,
    pub description: String,
    pub payload_seconds: f64,
    pub goals: Goals,
    pub counts: Counts,
    pub rows: Vec<Row>,
    /// How each cell was run (absent for a summary of reports run elsewhere).
    pub runs: Vec<CellRun>,
}

fn events(c: &Cell) -> String {
    let mut v: Vec<String> = c
        .outages
        .iter()
        .map(|o| format!("outage {}–{} s", o.from.as_secs_f64(), o.to.as_secs_f64()))
        .collect();
    v.extend(
        c.rate_changes
            .iter()
            .map(|r| format!("{} kbit/s from {} s", r.rate_bps / 1000, r.at.as_secs_f64())),
    );
    v.join("; ")
}

fn f64_at(v: &Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_f64()
}

fn as_f64s(v: &Value) -> Option<Vec<f64>> {
    v.as_array()?.iter().map(Value::as_f64).collect()
}

fn as_u64s(v: &Value) -> Option<Vec<u64>> {
    v.as_array()?.iter().map(Value::as_u64).collect()
}

/// The byte curve `(times, bytes)` under keys `t` and `b` of `v`.
fn curve(v: &Value, t: &str, b: &str) -> Option<(Vec<f64>, Vec<u64>)> {
    Some((as_f64s(v.get(t)?)?, as_u64s(v.get(b)?)?))
}

/// A cell's row from its report (`None`: not run).
pub fn row(c: &Cell, report: Option<&Value>, goals: &Goals) -> Row {
    let mut r = Row {
        cell: c.name.clone(),
        rate_bps: c.rate_bps,
        delay_ms: u64::try_from(c.delay.as_millis()).unwrap_or(u64::MAX),
        loss: c.loss,
        stated_rate: c.stated_rate.as_str().to_owned(),
        events: events(c),
        goodput_goal: goals.goodput_for(c.loss),
        ..Row::default()
    };
    let Some(rep) = report else {
        r.error = Some("not run".into());
        return r;
    };
    r.ran = true;
    let fetch = rep.get("fetches").and_then(|f| f.get(0));
    let sat = rep.get("satellite").and_then(|s| s.get(0));
    let flag = |v: Option<&Value>, k: &str| v.and_then(|v| v.get(k)).and_then(Value::as_bool);
    r.completed = flag(fetch, "completed").unwrap_or(false);
    r.verified = flag(fetch, "verified").unwrap_or(false);
    r.attempts = fetch
        .and_then(|f| f.get("attempts"))
        .and_then(Value::as_u64);
    r.seconds = fetch.and_then(|f| f64_at(f, &["seconds"]));
    r.link_up_seconds = fetch.and_then(|f| f64_at(f, &["link_up_seconds"]));
    r.payload_bytes = fetch
        .and_then(|f| f.get("payload_bytes"))
        .and_then(Value::as_u64);
    r.error = rep
        .get("error")
        .and_then(Value::as_str)
        .or_else(|| fetch.and_then(|f| f.get("error")).and_then(Value::as_str))
        .map(str::to_owned);
    if let Some(s) = sat {
        r.goodput = f64_at(s, &["goodput"]);
        r.tcp_goodput = f64_at(s, &["reference", "goodput"]);
        r.tcp_seconds = f64_at(s, &["reference", "seconds"]);
        r.tcp_completed = flag(s.get("reference"), "completed");
        r.zdn_over_tcp = f64_at(s, &["zdn_over_tcp"]);
        r.down_bytes_per_payload = f64_at(s, &["down_ip_bytes_per_payload"]);
        let payload = s.get("payload_bytes").and_then(Value::as_u64).unwrap_or(0);
        let up = s.get("up_ip_bytes").and_then(Value::as_u64);
        r.up_bytes_per_payload = up
            .filter(|_| payload > 0)
            .map(|u| u as f64 / payload as f64);
        let tcp_down = s
            .get("reference")
            .and_then(|x| x.get("down_ip_bytes"))
            .and_then(Value::as_u64);
        if let Some(rf) = s.get("reference") {
            r.tcp_mid_use = curve(rf, "t", "received")
                .and_then(|(t, b)| mid_transfer_use(&t, &b, f64_at(rf, &["started_s"])?, c));
        }
        r.tcp_down_bytes_per_payload = tcp_down
            .filter(|_| payload > 0)
            .map(|d| d as f64 / payload as f64);
    }
    let station = rep
        .get("series")
        .zip(fetch.and_then(|f| f.get("node")).and_then(Value::as_str));
    if let Some((series, node)) = station {
        let nodes = series.get("nodes").and_then(Value::as_array);
        let mine = nodes.and_then(|n| {
            n.iter()
                .find(|x| x.get("name").and_then(Value::as_str) == Some(node))
        });
        let t = series.get("t").and_then(as_f64s);
        let b = mine.and_then(|m| m.get("received")).and_then(as_u64s);
        let from = fetch.and_then(|f| f64_at(f, &["started_s"]));
        if let (Some(t), Some(b), Some(from)) = (t, b, from) {
            r.mid_use = mid_transfer_use(&t, &b, from, c);
        }
    }
    let done = r.completed && r.verified && r.attempts == Some(1);
    r.meets_goodput = done && r.goodput.is_some_and(|g| g >= r.goodput_goal);
    // A reference that did not finish is beaten by a zdn fetch that did.
    r.meets_tcp = done
        && match (r.zdn_over_tcp, r.tcp_completed) {
            (Some(x), _) => x >= goals.over_tcp,
            (None, Some(false)) => true,
            _ => false,
        };
    r.meets_bytes = done
        && r.down_bytes_per_payload
            .is_some_and(|b| b <= goals.down_bytes_per_payload);
    r.meets_all = r.meets_goodput && r.meets_tcp && r.meets_bytes;
    r
}

/// Reads each cell's report in `out`, writes `out/matrix.json` and `out/matrix.md`.
pub fn summarise(m: &Matrix, out: &Path, runs: Vec<CellRun>) -> Result<Summary, MatrixError> {
    let goals = Goals::default();
    let mut rows = Vec::new();
    for c in &m.cells {
        let path = out.join(format!("{}.json", c.name));
        let report: Option<Value> = match std::fs::read_to_string(&path) {
            Ok(t) => Some(serde_json::from_str(&t).map_err(|e| MatrixError::Cell {
                cell: c.name.clone(),
                message: format!("{}: {e}", path.display()),
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(MatrixError::io("reading", &path, e)),
        };
        let mut r = row(c, report.as_ref(), &goals);
        r.most_beside = runs
            .iter()
            .find(|x| x.cell == c.name && x.started_unix_s.is_some())
            .map(|x| x.most_beside);
        rows.push(r);
    }
    let count = |f: &dyn Fn(&Row) -> bool| rows.iter().filter(|r| f(r)).count();
    let counts = Counts {
        cells: rows.len(),
        ran: count(&|r| r.ran),
        completed_verified: count(&|r| r.completed && r.verified),
        goodput: count(&|r| r.meets_goodput),
        tcp: count(&|r| r.meets_tcp),
        bytes: count(&|r| r.meets_bytes),
        all: count(&|r| r.meets_all),
    };
    let summary = Summary {
        matrix: m.name.clone(),
        description: m.description.clone(),
        payload_seconds: m.payload_seconds,
        goals,
        counts,
        rows,
        runs,
    };
    let json = out.join("matrix.json");
    let text =
        serde_json::to_string_pretty(&summary).map_err(|e| MatrixError::Encode(e.to_string()))?;
    std::fs::write(&json, text + "\n").map_err(|e| MatrixError::io("writing", &json, e))?;
    let md = out.join("matrix.md");
    std::fs::write(&md, markdown(&summary)).map_err(|e| MatrixError::io("writing", &md, e))?;
    Ok(summary)
}

fn num(v: Option<f64>) -> String {
    v.map_or("–".to_owned(), |x| format!("{x:.3}"))
}

fn mark(ok: bool, ran: bool) -> &'static str {
    match (ran, ok) {
        (false, _) => "–",
        (true, true) => "yes",
        (true, false) => "**no**",
    }
}

/// The markdown table: every cell, then the counts.
pub fn markdown(s: &Summary) -> String {
    let g = &s.goals;
    let c = &s.counts;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "Generated by `zdn-sim matrix` from the cells' reports (matrix `{}`, payload ≈ {} s of each link's rate). \
         Goals: goodput ≥ {} while the link is up at loss ≤ {} % and ≥ {} above; zdn ÷ TCP ≥ {}; \
         IP bytes delivered to the station ÷ payload ≤ {}; one `zdn fetch`, verified. \
         `beside`: the most other cells that ran at the same time; `zdn s (up)`: the fetch's seconds \
         (of them with the link up); link use mid-transfer: \
         IP bytes between the moments 10 % and 90 % of the transfer's bytes had arrived ÷ what the link \
         could carry in between (start-up and tail left out); in brackets: the TCP reference's.\n",
        s.matrix,
        s.payload_seconds,
        g.goodput,
        g.lossy_above * 100.0,
        g.goodput_lossy,
        g.over_tcp,
        g.down_bytes_per_payload
    );
    let _ = writeln!(
        t,
        "Cells: {} ({} run, {} completed and verified). Goodput goal met: {}; ≥ TCP: {}; bytes ≤ {}: {}; all three: {}.\n",
        c.cells, c.ran, c.completed_verified, c.goodput, c.tcp, g.down_bytes_per_payload, c.bytes, c.all
    );
    t.push_str(
        "| cell | rate | delay (one way) | loss | `--link-rate` | events | beside | zdn s (up) | goodput | goal | TCP goodput (s) | zdn ÷ TCP | link use mid-transfer, zdn (TCP) | down ÷ payload (TCP's) | up ÷ payload | goodput goal | ≥ TCP | bytes goal | note |\n",
    );
    t.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in &s.rows {
        let secs = match (r.seconds, r.link_up_seconds) {
            (Some(a), Some(b)) if (a - b).abs() > 0.05 => format!("{a:.1} ({b:.1})"),
            (Some(a), _) => format!("{a:.1}"),
            _ => "–".into(),
        };
        let tcp = match (r.tcp_goodput, r.tcp_seconds, r.tcp_completed) {
            (_, _, Some(false)) => "did not finish".to_owned(),
            (Some(x), Some(sec), _) => format!("{x:.3} ({sec:.1})"),
            (x, _, _) => num(x),
        };
        let _ = writeln!(
            t,
            "| {} | {} | {} ms | {} % | {} | {} | {} | {} | {} | {} | {} | {} | {} ({}) | {} ({}) | {} | {} | {} | {} | {} |",
            r.cell,
            rate_text(r.rate_bps),
            r.delay_ms,
            r.loss * 100.0,
            r.stated_rate,
            if r.events.is_empty() { "–" } else { &r.events },
            r.most_beside.map_or("–".to_owned(), |b| b.to_string()),
            secs,
            num(r.goodput),
            r.goodput_goal,
            tcp,
            num(r.zdn_over_tcp),
            num(r.mid_use),
            num(r.tcp_mid_use),
            num(r.down_bytes_per_payload),
            num(r.tcp_down_bytes_per_payload),
            num(r.up_bytes_per_payload),
            mark(r.meets_goodput, r.ran),
            mark(r.meets_tcp, r.ran),
            mark(r.meets_bytes, r.ran),
            r.error.as_deref().unwrap_or("")
        );
    }
    t
}
