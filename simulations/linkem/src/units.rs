//! The units people write link settings in: durations (`300ms`, `30s`, `2m`), rates (`1mbit`),
//! sizes (`50MiB`, `125kB`), outage windows (`20s-50s`) and rate changes (`60s:500kbit`). Shared by `zdn-linkem`'s flags and
//! `zdn-sim`'s scenario files, so both accept the same spellings.

use std::time::Duration;

use crate::shaper::{Outage, RateChange};

/// A duration: a number with `ms`, `s` (the default), `m`/`min` or `h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, "s"),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad duration {s:?} (e.g. 300ms, 30s, 2m)"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m, h)")),
    };
    if !(secs.is_finite() && (0.0..1e9).contains(&secs)) {
        return Err(format!("bad duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A link rate in bits per second: `1mbit`, `512kbit`, `1gbit` or a plain number of bits.
pub fn parse_bits_per_sec(s: &str) -> Result<u64, String> {
    let l = s.trim().to_ascii_lowercase();
    let (num, mult) = if let Some(n) = l.strip_suffix("gbit") {
        (n, 1e9)
    } else if let Some(n) = l.strip_suffix("mbit") {
        (n, 1e6)
    } else if let Some(n) = l.strip_suffix("kbit") {
        (n, 1e3)
    } else {
        (l.strip_suffix("bit").unwrap_or(&l), 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad rate {s:?} (e.g. 1mbit)"))?;
    let r = v * mult;
    if !(r.is_finite() && (1.0..1e12).contains(&r)) {
        return Err(format!("bad rate {s:?}"));
    }
    Ok(r as u64)
}

/// A size in bytes: a plain number, or with `kB`/`MB`/`GB` (×1000) or `KiB`/`MiB`/`GiB` (×1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => {
            let m = match &t[i..] {
                "B" => 1u64,
                "kB" | "KB" => 1000,
                "MB" => 1_000_000,
                "GB" => 1_000_000_000,
                "KiB" => 1 << 10,
                "MiB" => 1 << 20,
                "GiB" => 1 << 30,
                _ => {
                    return Err(format!(
                        "bad size unit in {s:?} (B, kB, MB, GB, KiB, MiB, GiB)"
                    ))
                }
            };
            (&t[..i], m)
        }
        None => (t, 1),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad size {s:?} (e.g. 50MiB)"))?;
    let b = v * mult as f64;
    if !(b.is_finite() && (0.0..1e13).contains(&b)) {
        return Err(format!("bad size {s:?}"));
    }
    Ok(b as u64)
}

/// An outage window `FROM-TO`, both durations from the link's start (`20s-50s`).
pub fn parse_outage(s: &str) -> Result<Outage, String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("outage {s:?}: FROM-TO, e.g. 20s-50s"))?;
    let o = Outage {
        from: parse_duration(a)?,
        to: parse_duration(b)?,
    };
    if o.to <= o.from {
        return Err(format!("outage {s:?} ends before it starts"));
    }
    Ok(o)
}

/// A rate change `AT:RATE`, the time from the link's start (`60s:500kbit`).
pub fn parse_rate_change(s: &str) -> Result<RateChange, String> {
    let (a, r) = s
        .split_once(':')
        .ok_or_else(|| format!("rate change {s:?}: AT:RATE, e.g. 60s:500kbit"))?;
    Ok(RateChange {
        at: parse_duration(a.trim()).map_err(|e| format!("rate change {s:?}: {e}"))?,
        rate_bps: parse_bits_per_sec(r.trim()).map_err(|e| format!("rate change {s:?}: {e}"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("3 days").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_bits_per_sec("1mbit"), Ok(1_000_000));
        assert_eq!(parse_bits_per_sec("512kbit"), Ok(512_000));
        assert_eq!(parse_bits_per_sec("2Mbit"), Ok(2_000_000));
        assert_eq!(parse_bits_per_sec("9600"), Ok(9600));
        assert!(parse_bits_per_sec("0").is_err());
        assert!(parse_bits_per_sec("fast").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("50MiB"), Ok(50 << 20));
        assert_eq!(parse_size("125kB"), Ok(125_000));
        assert_eq!(parse_size("1500"), Ok(1500));
        assert_eq!(parse_size("1.5 KiB"), Ok(1536));
        assert!(parse_size("1 parsec").is_err());
    }

    #[test]
    fn rate_change() {
        assert_eq!(
            parse_rate_change("60s:500kbit"),
            Ok(RateChange {
                at: Duration::from_secs(60),
                rate_bps: 500_000
            })
        );
        assert!(parse_rate_change("60s").is_err());
        assert!(parse_rate_change("60s:0").is_err());
        assert!(parse_rate_change("soon:1mbit").is_err());
        assert!(parse_rate_change(":1mbit").is_err());
    }

    #[test]
    fn outages() {
        let o = parse_outage("20s-50s").unwrap();
        assert_eq!(
            (o.from, o.to),
            (Duration::from_secs(20), Duration::from_secs(50))
        );
        assert!(parse_outage("50s-20s").is_err());
        assert!(parse_outage("20s").is_err());
    }
}
