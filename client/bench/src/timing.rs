//! Timing: runs measured alternately with their reference, best and median, and the units the
//! reports use.

use std::hint::black_box;
use std::time::{Duration, Instant};

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub best_s: f64,
    pub median_s: f64,
    pub runs: usize,
}

impl Stats {
    pub fn of(times: &[Duration]) -> Stats {
        let mut s: Vec<f64> = times.iter().map(Duration::as_secs_f64).collect();
        s.sort_by(f64::total_cmp);
        let median = if s.is_empty() {
            0.0
        } else if s.len() % 2 == 1 {
            s[s.len() / 2]
        } else {
            (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
        };
        Stats {
            best_s: s.first().copied().unwrap_or(0.0),
            median_s: median,
            runs: s.len(),
        }
    }
}

pub fn time<R>(f: impl FnOnce() -> R) -> (Duration, R) {
    let t = Instant::now();
    let r = f();
    (t.elapsed(), r)
}

/// Runs `a` and `b` alternately on the same state, one untimed warm-up each, then `iters` timed rounds.
pub fn paired<S, A, B>(
    iters: usize,
    state: &mut S,
    mut a: impl FnMut(&mut S) -> A,
    mut b: impl FnMut(&mut S) -> B,
) -> (Stats, Stats) {
    black_box(a(state));
    black_box(b(state));
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for _ in 0..iters.max(1) {
        let (d, r) = time(|| a(state));
        black_box(r);
        ta.push(d);
        let (d, r) = time(|| b(state));
        black_box(r);
        tb.push(d);
    }
    (Stats::of(&ta), Stats::of(&tb))
}

pub fn gbps(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 / secs / 1e9
    } else {
        0.0
    }
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

pub fn goal(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

/// Best and median of some durations (none: zero).
pub fn best_median(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    match (v.first(), v.get(v.len() / 2)) {
        (Some(&b), Some(&m)) => (b, m),
        _ => (Duration::ZERO, Duration::ZERO),
    }
}

/// Median of `reps` timed runs of `f` after one untimed warm-up, in milliseconds.
pub fn median_ms<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    f();
    let times: Vec<Duration> = (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    Stats::of(&times).median_s * 1e3
}

/// Megabytes (10^6) per second.
pub fn mb_per_sec(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64().max(1e-9) / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_and_medians() {
        let ms = Duration::from_millis;
        let s = Stats::of(&[ms(3), ms(1), ms(2)]);
        assert_eq!((s.best_s, s.median_s, s.runs), (0.001, 0.002, 3));
        assert_eq!(Stats::of(&[ms(1), ms(3)]).median_s, 0.002);
        assert_eq!(best_median(vec![ms(5), ms(1), ms(9)]), (ms(1), ms(5)));
        assert_eq!(best_median(Vec::new()), (Duration::ZERO, Duration::ZERO));
        assert!((gbps(2_000_000_000, 2.0) - 1.0).abs() < 1e-12);
        assert!((mb_per_sec(3_000_000, Duration::from_secs(3)) - 1.0).abs() < 1e-12);
    }
}
