//! Sync windows: the times of day when a station may use its link (`"01:00-05:00"`, UTC). Outside
//! every window a fetch sends nothing new and waits; inside one it resumes. Sans-IO: the caller
//! passes the second of the day.

use std::str::FromStr;

const DAY: u32 = 86_400;

/// Why a window is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("sync window {0:?}: expected HH:MM-HH:MM or HH:MM:SS-HH:MM:SS (UTC)")]
    Syntax(String),
    #[error("sync window {0:?}: start and end are the same time")]
    Empty(String),
}

/// One window, `[start, end)` in seconds of the day; `end < start` wraps past midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncWindow {
    pub start: u32,
    pub end: u32,
}

fn time_of_day(s: &str) -> Option<u32> {
    let parts: Vec<&str> = s.trim().split(':').collect();
    if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.len() != 2) {
        return None;
    }
    let n: Vec<u32> = parts
        .iter()
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let (h, m, sec) = (n[0], n[1], n.get(2).copied().unwrap_or(0));
    (h < 24 && m < 60 && sec < 60).then_some(h * 3600 + m * 60 + sec)
}

impl FromStr for SyncWindow {
    type Err = WindowError;
    fn from_str(s: &str) -> Result<Self, WindowError> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| WindowError::Syntax(s.into()))?;
        let start = time_of_day(a).ok_or_else(|| WindowError::Syntax(s.into()))?;
        let end = time_of_day(b).ok_or_else(|| WindowError::Syntax(s.into()))?;
        if start == end {
            return Err(WindowError::Empty(s.into()));
        }
        Ok(SyncWindow { start, end })
    }
}

impl SyncWindow {
    fn contains(&self, t: u32) -> bool {
        if self.start < self.end {
            self.start <= t && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }
}

/// A set of windows; empty means always open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncWindows(pub Vec<SyncWindow>);

impl SyncWindows {
    pub fn parse<S: AsRef<str>>(list: &[S]) -> Result<Self, WindowError> {
        list.iter()
            .map(|s| s.as_ref().parse())
            .collect::<Result<_, _>>()
            .map(SyncWindows)
    }

    /// Whether transfers may run at `second_of_day` (taken modulo a day).
    pub fn is_open(&self, second_of_day: u32) -> bool {
        let t = second_of_day % DAY;
        self.0.is_empty() || self.0.iter().any(|w| w.contains(t))
    }

    /// Seconds from `second_of_day` until a window is open (0 when one is).
    pub fn wait(&self, second_of_day: u32) -> u32 {
        let t = second_of_day % DAY;
        if self.is_open(t) {
            return 0;
        }
        self.0
            .iter()
            .map(|w| (w.start + DAY - t) % DAY)
            .min()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parse_and_contain() {
        let w = SyncWindows::parse(&["01:00-05:00", "22:30-00:15"]).unwrap();
        assert!(w.is_open(3600));
        assert!(!w.is_open(5 * 3600));
        assert!(w.is_open(23 * 3600));
        assert!(w.is_open(10 * 60));
        assert!(!w.is_open(20 * 60));
        assert_eq!(w.wait(5 * 3600), 17 * 3600 + 1800);
        assert_eq!(w.wait(3600), 0);
        assert!(SyncWindows::parse::<&str>(&[]).unwrap().is_open(12345));
        assert!("01:00:30-01:00:40".parse::<SyncWindow>().is_ok());
    }

    #[test]
    fn bad_windows() {
        for bad in [
            "",
            "1:00-2:00",
            "25:00-01:00",
            "01:00",
            "01:00-01:00",
            "01:60-02:00",
            "aa:bb-cc:dd",
        ] {
            assert!(bad.parse::<SyncWindow>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn waiting_lands_in_a_window(
            ws in proptest::collection::vec((0u32..DAY, 1u32..DAY), 1..4),
            t in 0u32..DAY,
        ) {
            let w = SyncWindows(ws.iter().map(|&(s, len)| SyncWindow { start: s, end: (s + len) % DAY }).filter(|w| w.start != w.end).collect());
            prop_assume!(!w.0.is_empty());
            let d = w.wait(t);
            prop_assert_eq!(d == 0, w.is_open(t));
            prop_assert!(w.is_open(t + d));
            // Nothing earlier would do.
            if d > 0 {
                prop_assert!(!w.is_open(t + d - 1));
            }
        }
    }
}
