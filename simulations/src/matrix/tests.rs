//! The matrix file, its cells and the table: the shipped matrix covers exactly issue 22's cells,
//! bad files are refused with the reason, every cell's scenario parses, goals are judged right.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;

use super::cells::StatedRate;
use super::run::run_order;
use super::spec::Matrix;
use super::table::{row, Goals};
use crate::scenario::Scenario;

fn shipped() -> Matrix {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/matrices/satellite.toml");
    Matrix::parse(path, &std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn the_shipped_matrix_has_exactly_issue_22s_cells() {
    let m = shipped();
    // The grid: 4 rates × 3 one-way delays × 4 losses, the station told nothing.
    let grid: BTreeSet<(u64, u128, u64)> = m
        .cells
        .iter()
        .filter(|c| {
            c.outages.is_empty()
                && c.rate_changes.is_empty()
                && c.stated_rate == StatedRate::Absent
                && !c.name.ends_with("-alone")
        })
        .map(|c| {
            (
                c.rate_bps,
                c.delay.as_millis(),
                (c.loss * 100.0).round() as u64,
            )
        })
        .collect();
    let mut want = BTreeSet::new();
    for r in [64_000, 256_000, 1_000_000, 10_000_000] {
        for d in [20, 300, 700] {
            for l in [0, 1, 2, 5] {
                want.insert((r, d, l));
            }
        }
    }
    assert_eq!(grid, want);
    assert_eq!(m.cells.len(), 48 + 6);
    // The extras, all on the 1 Mbit/s, 300 ms, 1 % link.
    let extras: Vec<_> = m.cells[48..].iter().collect();
    for c in &extras {
        assert_eq!(
            (c.rate_bps, c.delay, c.loss),
            (1_000_000, Duration::from_millis(300), 0.01),
            "{}",
            c.name
        );
    }
    let stated: BTreeSet<&str> = extras.iter().map(|c| c.stated_rate.as_str()).collect();
    assert_eq!(stated, BTreeSet::from(["absent", "exact", "2x"]));
    let outages: BTreeSet<u64> = extras
        .iter()
        .flat_map(|c| c.outages.iter().map(|o| (o.to - o.from).as_secs()))
        .collect();
    assert_eq!(outages, BTreeSet::from([10, 120]));
    let halves = extras.iter().find(|c| !c.rate_changes.is_empty()).unwrap();
    let rates: Vec<u64> = halves.rate_changes.iter().map(|r| r.rate_bps).collect();
    assert_eq!(rates, vec![500_000, 1_000_000], "halves, then recovers");
    // 10 Mbit/s cells and the side-by-side check run alone; nothing else does.
    for c in &m.cells {
        assert_eq!(
            c.alone,
            c.rate_bps >= 10_000_000 || c.name == "1mbit-300ms-1pct-alone",
            "{}",
            c.name
        );
    }
}

#[test]
fn every_cell_is_a_valid_scenario_of_its_link() {
    let m = shipped();
    for c in &m.cells {
        let text = c.scenario_toml(&m.name, m.seed, m.payload_seconds);
        let s = Scenario::parse(&format!("{}.toml", c.name), &text)
            .unwrap_or_else(|e| panic!("{}: {e}\n{text}", c.name));
        assert_eq!(s.name, c.name);
        assert_eq!(s.link.rate_bps, c.rate_bps);
        assert_eq!(s.link.delay, c.delay);
        assert_eq!(s.link.loss, c.loss);
        assert_eq!(s.link.outages, c.outages);
        assert_eq!(s.rate_changes, c.rate_changes);
        assert!(s.reference_tcp, "every cell has its TCP reference");
        assert_eq!(s.fetches.len(), 1);
        assert_eq!(s.fetches[0].retries, 0);
        let station = &s.nodes[s.fetches[0].node];
        let want: Vec<String> = match c.stated_rate {
            StatedRate::Absent => vec![],
            StatedRate::Exact => vec!["--link-rate".into(), format!("{}bit", c.rate_bps)],
            StatedRate::Double => vec!["--link-rate".into(), format!("{}bit", 2 * c.rate_bps)],
        };
        assert_eq!(station.args, want, "{}", c.name);
        assert_eq!(station.profile, "field");
        // ≈ 45 s of the link's rate.
        let seconds = c.payload_bytes(m.payload_seconds) as f64 * 8.0 / c.rate_bps as f64;
        assert!((seconds - 45.0).abs() < 0.2, "{}: {seconds}", c.name);
        assert!(s.run.timeout >= Duration::from_secs(45 * 3) + outage_total(c));
    }
}

/// The QUIC matrix is the 700 ms row of the shipped one, every cell's nodes on QUIC; the shipped
/// matrix's cells stay on TCP (their scenarios name no transport).
#[test]
fn the_quic_matrix_is_the_700ms_row_over_quic() {
    use crate::scenario::spec::Transport;
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/matrices/satellite-700ms-quic.toml"
    );
    let q = Matrix::parse(path, &std::fs::read_to_string(path).unwrap()).unwrap();
    let tcp = shipped();
    let row: Vec<_> = tcp
        .cells
        .iter()
        .filter(|c| c.delay == Duration::from_millis(700))
        .map(|c| (c.name.clone(), c.rate_bps, c.loss))
        .collect();
    let quic: Vec<_> = q
        .cells
        .iter()
        .map(|c| (c.name.clone(), c.rate_bps, c.loss))
        .collect();
    assert_eq!(quic, row);
    for c in &q.cells {
        let text = c.scenario_toml(&q.name, q.seed, q.payload_seconds);
        let s = Scenario::parse("q.toml", &text).unwrap();
        assert_eq!(s.transport, Transport::Quic, "{text}");
    }
    for c in &tcp.cells {
        let text = c.scenario_toml(&tcp.name, tcp.seed, tcp.payload_seconds);
        assert!(!text.contains("transport"), "{text}");
        assert_eq!(
            Scenario::parse("t.toml", &text).unwrap().transport,
            Transport::Tcp
        );
    }
}

fn outage_total(c: &super::cells::Cell) -> Duration {
    c.outages.iter().map(|o| o.to - o.from).sum()
}

#[test]
fn alone_cells_run_last() {
    let m = shipped();
    let order = run_order(&m.cells);
    assert_eq!(order.len(), m.cells.len());
    let first_alone = order.iter().position(|&i| m.cells[i].alone).unwrap();
    assert!(order[first_alone..].iter().all(|&i| m.cells[i].alone));
    assert_eq!(order.iter().collect::<BTreeSet<_>>().len(), m.cells.len());
}

fn bad(text: &str) -> String {
    Matrix::parse("m.toml", text).unwrap_err().to_string()
}

const GRID: &str = "[grid]\nrates = [\"1mbit\"]\ndelays = [\"300ms\"]\nlosses = [0.01]\n";

#[test]
fn bad_matrix_files_are_refused_with_the_reason() {
    let head = "name = \"m\"\npayload_seconds = 45\n";
    assert!(Matrix::parse("m.toml", &format!("{head}{GRID}")).is_ok());
    let e = bad(&format!("name = \"m\"\npayload_seconds = 0\n{GRID}"));
    assert!(e.contains("payload_seconds"), "{e}");
    let e = bad(&format!("{head}jobs = 0\n{GRID}"));
    assert!(e.contains("jobs"), "{e}");
    let e = bad(head);
    assert!(e.contains("no cells"), "{e}");
    let e = bad(&format!(
        "{head}[grid]\nrates = []\ndelays = [\"1ms\"]\nlosses = [0.0]\n"
    ));
    assert!(e.contains("at least one"), "{e}");
    let e = bad(&format!(
        "{head}[grid]\nrates = [\"fast\"]\ndelays = [\"1ms\"]\nlosses = [0.0]\n"
    ));
    assert!(e.contains("fast"), "{e}");
    let e = bad(&format!(
        "{head}[grid]\nrates = [\"1mbit\"]\ndelays = [\"1ms\"]\nlosses = [1.0]\n"
    ));
    assert!(e.contains("probability"), "{e}");
    let e = bad(&format!("{head}{GRID}stated_rate = \"triple\"\n"));
    assert!(e.contains("triple"), "{e}");
    let cell = "[[cell]]\nname = \"x\"\nrate = \"1mbit\"\ndelay = \"300ms\"\nloss = 0.01\n";
    let e = bad(&format!("{head}{cell}{cell}"));
    assert!(e.contains("two cells named"), "{e}");
    let e = bad(&format!(
        "{head}{cell}rate_changes = [\"50s:1mbit\", \"20s:500kbit\"]\n"
    ));
    assert!(e.contains("out of order"), "{e}");
    let e = bad(&format!("{head}{cell}outages = [\"30s-20s\"]\n"));
    assert!(e.contains("30s-20s"), "{e}");
    let e = bad(&format!("{head}{cell}colour = \"red\"\n"));
    assert!(e.contains("colour"), "{e}");
    let e = bad(&format!(
        "{head}[[cell]]\nname = \"../x\"\nrate = \"1mbit\"\ndelay = \"1ms\"\nloss = 0.0\n"
    ));
    assert!(e.contains("name"), "{e}");
}

#[test]
fn goals_are_judged_from_the_report() {
    let m = shipped();
    let cell = |name: &str| m.cells.iter().find(|c| c.name == name).unwrap();
    let report = |goodput: f64, tcp: f64, down: f64, attempts: u64| {
        json!({
            "error": null,
            "fetches": [{"completed": true, "verified": true, "attempts": attempts,
                         "seconds": 50.0, "link_up_seconds": 50.0, "payload_bytes": 1000}],
            "satellite": [{"goodput": goodput, "zdn_over_tcp": goodput / tcp,
                           "down_ip_bytes_per_payload": down, "payload_bytes": 1000,
                           "up_ip_bytes": 20,
                           "reference": {"goodput": tcp, "completed": true, "seconds": 60.0}}]
        })
    };
    let g = Goals::default();
    let r = row(
        cell("1mbit-300ms-1pct"),
        Some(&report(0.91, 0.8, 1.03, 1)),
        &g,
    );
    assert!(r.meets_goodput && r.meets_tcp && r.meets_bytes && r.meets_all);
    assert_eq!(r.up_bytes_per_payload, Some(0.02));
    let r = row(
        cell("1mbit-300ms-1pct"),
        Some(&report(0.89, 0.8, 1.03, 1)),
        &g,
    );
    assert!(!r.meets_goodput && r.meets_tcp && !r.meets_all);
    // 5 % loss is held to 0.80.
    let r = row(
        cell("1mbit-300ms-5pct"),
        Some(&report(0.85, 0.9, 1.06, 1)),
        &g,
    );
    assert!(r.meets_goodput && !r.meets_tcp && !r.meets_bytes);
    // A second attempt fails every goal.
    let r = row(
        cell("1mbit-300ms-1pct"),
        Some(&report(0.95, 0.8, 1.03, 2)),
        &g,
    );
    assert!(!r.meets_goodput && !r.meets_tcp && !r.meets_bytes);
    let r = row(cell("1mbit-300ms-1pct"), None, &g);
    assert!(!r.ran && !r.meets_all && r.error.as_deref() == Some("not run"));
}
