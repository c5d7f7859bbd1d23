//! `Method`: how `zdn soup` combines the decoded deltas of one tensor from several inputs — a soup's
//! weighted sum, or one of the robust aggregations of `zdn_protocol::soup` (docs/soup.md).

use zdn_protocol::soup::{self, KrumAccumulator, SoupError};

/// A combination rule over `n` inputs.
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    /// Σ wᵢ·Δᵢ: soup mixing (`zdn soup mix`; weights from the recipe).
    Weighted(Vec<f64>),
    Mean,
    /// Coordinate-wise trimmed mean, trimming ⌊β·n⌋ values at each end.
    Trimmed(f64),
    Median,
    /// Mean of the `m` contributors Krum selects assuming up to `f` are Byzantine (`m` = 1: Krum).
    Krum {
        f: usize,
        m: usize,
    },
    /// Majority sign × the median of the inputs' mean |Δ|.
    SignVote,
}

impl Method {
    /// Checks the method's parameters against the number of inputs before anything is read.
    pub fn check(&self, n: usize) -> Result<(), SoupError> {
        if n == 0 {
            return Err(SoupError::Empty);
        }
        match self {
            Method::Weighted(w) => {
                if w.len() != n {
                    return Err(SoupError::WeightCount {
                        contributors: n,
                        weights: w.len(),
                    });
                }
                if let Some((index, &value)) = w.iter().enumerate().find(|(_, w)| !w.is_finite()) {
                    return Err(SoupError::NonFiniteWeight { index, value });
                }
            }
            Method::Trimmed(beta) => {
                soup::trim_count(n, *beta)?;
            }
            Method::Krum { f, m } => {
                KrumAccumulator::new(n, *f, *m)?;
            }
            Method::Mean | Method::Median | Method::SignVote => {}
        }
        Ok(())
    }

    /// Whether the method needs a first pass over the whole model (Krum's distances).
    pub fn is_krum(&self) -> bool {
        matches!(self, Method::Krum { .. })
    }

    /// Combines one tensor. `selected` is Krum's selection (ignored by the other methods).
    pub fn combine(&self, deltas: &[&[f32]], selected: &[usize]) -> Result<Vec<f32>, SoupError> {
        match self {
            Method::Weighted(w) => soup::weighted_sum(deltas, w),
            Method::Mean => soup::mean(deltas),
            Method::Trimmed(beta) => soup::trimmed_mean(deltas, *beta),
            Method::Median => soup::median(deltas),
            Method::Krum { .. } => soup::mean_of(deltas, selected),
            Method::SignVote => soup::sign_vote(deltas),
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Method::Weighted(w) => write!(f, "weighted{w:?}"),
            Method::Mean => f.write_str("mean"),
            Method::Trimmed(beta) => write!(f, "trimmed:{beta}"),
            Method::Median => f.write_str("median"),
            Method::Krum { f: byz, m: 1 } => write!(f, "krum:{byz}"),
            Method::Krum { f: byz, m } => write!(f, "multikrum:{byz}:{m}"),
            Method::SignVote => f.write_str("signvote"),
        }
    }
}

impl std::str::FromStr for Method {
    type Err = String;

    /// `mean`, `trimmed:β`, `median`, `krum:F`, `multikrum:F:M`, `signvote`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "method must be mean, trimmed:BETA, median, krum:F, multikrum:F:M or signvote, got {s:?}"
            )
        };
        let mut parts = s.split(':');
        let head = parts.next().unwrap_or_default();
        let args: Vec<&str> = parts.collect();
        let count = |n: &str| n.parse::<usize>().map_err(|_| bad());
        match (head, args.as_slice()) {
            ("mean", []) => Ok(Method::Mean),
            ("median", []) => Ok(Method::Median),
            ("signvote", []) => Ok(Method::SignVote),
            ("trimmed", [b]) => {
                let beta: f64 = b.parse().map_err(|_| bad())?;
                if !(0.0..0.5).contains(&beta) {
                    return Err(format!("trim fraction must be in [0, 0.5), got {b}"));
                }
                Ok(Method::Trimmed(beta))
            }
            ("krum", [f]) => Ok(Method::Krum { f: count(f)?, m: 1 }),
            ("multikrum", [f, m]) => Ok(Method::Krum {
                f: count(f)?,
                m: count(m)?,
            }),
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for s in [
            "mean",
            "median",
            "signvote",
            "trimmed:0.3",
            "krum:2",
            "multikrum:2:3",
        ] {
            let m: Method = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(m.to_string(), s);
        }
        for s in [
            "",
            "avg",
            "trimmed",
            "trimmed:0.5",
            "trimmed:x",
            "krum",
            "krum:-1",
            "mean:1",
        ] {
            assert!(s.parse::<Method>().is_err(), "{s} accepted");
        }
    }

    #[test]
    fn checks_parameters_against_the_input_count() {
        assert_eq!(Method::Mean.check(0), Err(SoupError::Empty));
        assert!(Method::Krum { f: 1, m: 1 }.check(5).is_ok());
        assert_eq!(
            Method::Krum { f: 2, m: 1 }.check(5),
            Err(SoupError::KrumTooFewContributors { n: 5, f: 2 })
        );
        assert!(Method::Weighted(vec![0.5]).check(2).is_err());
        assert!(Method::Weighted(vec![f64::NAN, 1.0]).check(2).is_err());
        assert!(Method::Trimmed(0.3).check(3).is_ok());
    }
}
