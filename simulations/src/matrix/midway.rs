//! How full a transfer kept the link once under way: from a byte curve (cumulative IP bytes
//! received, sampled), the bytes between the moments 10 % and 90 % of the transfer's bytes had
//! arrived, over what the link could carry in between (its rate as it changes, outages not
//! counted). Start-up (dial, handshakes, rate discovery) and the tail are left out, so this
//! separates "the link was not kept full" from "the transfer is short for the round trip".

use zdn_linkem::shaper::LinkSpec;

use crate::scenario::report::capacity_bytes;

use super::cells::Cell;

/// The share of `cell`'s link used between 10 % and 90 % of the bytes received from `from_s` on;
/// none when too little arrived to tell.
pub fn mid_transfer_use(t: &[f64], received: &[u64], from_s: f64, cell: &Cell) -> Option<f64> {
    let n = t.len().min(received.len());
    let i0 = (0..n).find(|&i| t[i] >= from_s)?;
    let base = received[i0];
    let total = received[n - 1].checked_sub(base)?;
    if total == 0 {
        return None;
    }
    let at = |share: f64| (i0..n).find(|&i| (received[i] - base) as f64 >= share * total as f64);
    let (a, b) = (at(0.1)?, at(0.9)?);
    if b <= a {
        return None;
    }
    let spec = LinkSpec {
        rate_bps: cell.rate_bps,
        outages: cell.outages.clone(),
        ..LinkSpec::satellite()
    };
    let capacity = capacity_bytes(&spec, &cell.rate_changes, t[a], t[b]);
    (capacity > 0.0).then(|| (received[b] - received[a]) as f64 / capacity)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;
    use zdn_linkem::shaper::Outage;

    use super::super::cells::StatedRate;

    fn cell(outages: Vec<Outage>) -> Cell {
        Cell {
            name: "c".into(),
            rate_bps: 8_000,
            delay: Duration::ZERO,
            loss: 0.0,
            stated_rate: StatedRate::Absent,
            outages,
            rate_changes: Vec::new(),
            alone: false,
            transport: crate::scenario::spec::Transport::Tcp,
        }
    }

    #[test]
    fn a_full_link_after_a_slow_start_is_a_full_link() {
        // 1000 B/s link. Nothing for 10 s from the start at 2 s, then 1000 B/s for 100 s.
        let t: Vec<f64> = (0..=120).map(f64::from).collect();
        let received: Vec<u64> = t
            .iter()
            .map(|&s| 500 + ((s - 12.0).clamp(0.0, 100.0) * 1000.0) as u64)
            .collect();
        let u = mid_transfer_use(&t, &received, 2.0, &cell(vec![])).unwrap();
        assert!((u - 1.0).abs() < 1e-9, "{u}");
        // Half the rate: half the link.
        let half: Vec<u64> = received.iter().map(|b| b / 2).collect();
        let u = mid_transfer_use(&t, &half, 2.0, &cell(vec![])).unwrap();
        assert!((u - 0.5).abs() < 0.01, "{u}");
        // An outage in the middle is not held against it.
        let o = Outage {
            from: Duration::from_secs(50),
            to: Duration::from_secs(60),
        };
        let gap: Vec<u64> = t
            .iter()
            .map(|&s| {
                let up = (s - 12.0).clamp(0.0, 38.0) + (s - 60.0).clamp(0.0, 62.0);
                (up * 1000.0) as u64
            })
            .collect();
        let u = mid_transfer_use(&t, &gap, 2.0, &cell(vec![o])).unwrap();
        assert!((u - 1.0).abs() < 1e-9, "{u}");
        assert_eq!(
            mid_transfer_use(&t, &vec![7; t.len()], 2.0, &cell(vec![])),
            None
        );
    }
}
