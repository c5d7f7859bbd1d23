//! Krum and multi-Krum (Blanchard et al., 2017), streamed tensor by tensor.
//!
//! The score of contributor i is the sum of the squared Euclidean distances, over the whole model,
//! from Δᵢ to its n − f − 2 nearest other contributors; Krum picks the contributor with the lowest
//! score, multi-Krum averages the m lowest. Distances need whole vectors, hence two passes:
//!
//! 1. [`KrumAccumulator::add_tensor`] for every tensor of the model (same contributor order each
//!    time), accumulating the n·(n − 1)/2 pairwise squared distances;
//! 2. [`KrumAccumulator::select`], then [`mean_of`](super::mean_of) of the selected contributors
//!    for every tensor.
//!
//! Breakdown point: f Byzantine contributors, provided n > 2f + 2. Cost: O(n²·d) time over the
//! model (d parameters), O(n²) memory, plus one BLAKE3 pass over each contributor's data for the
//! tie-break.

use super::{check_finite, check_shape, mean_of, SoupError};

/// Pass 1 of Krum / multi-Krum: accumulates pairwise squared distances tensor by tensor.
#[derive(Debug, Clone)]
pub struct KrumAccumulator {
    n: usize,
    f: usize,
    m: usize,
    tensors: usize,
    /// Full symmetric n×n matrix of accumulated squared distances (row-major, zero diagonal).
    dist: Vec<f64>,
    /// BLAKE3 of each contributor's values (little-endian f32) in the order added: the tie-break.
    fingerprints: Vec<blake3::Hasher>,
    bytes: Vec<u8>,
}

impl KrumAccumulator {
    /// A Krum (`m` = 1) or multi-Krum accumulator for `n` contributors of which up to `f` may be
    /// Byzantine. Refuses n = 0, n ≤ 2f + 2 and m outside 1..=n − f.
    pub fn new(n: usize, f: usize, m: usize) -> Result<Self, SoupError> {
        if n == 0 {
            return Err(SoupError::Empty);
        }
        match f.checked_mul(2).and_then(|x| x.checked_add(2)) {
            Some(bound) if n > bound => {}
            _ => return Err(SoupError::KrumTooFewContributors { n, f }),
        }
        let max = n - f;
        if m == 0 || m > max {
            return Err(SoupError::KrumSelectCount { m, max });
        }
        Ok(Self {
            n,
            f,
            m,
            tensors: 0,
            dist: vec![0.0; n * n],
            fingerprints: vec![blake3::Hasher::new(); n],
            bytes: Vec::new(),
        })
    }

    /// Adds one tensor of every contributor (`deltas[i]` from contributor i; n of them, equal
    /// lengths, finite). On error nothing is accumulated.
    pub fn add_tensor(&mut self, deltas: &[&[f32]]) -> Result<(), SoupError> {
        if deltas.len() != self.n {
            return Err(SoupError::ContributorCount {
                expected: self.n,
                found: deltas.len(),
            });
        }
        check_shape(deltas)?;
        check_finite(deltas)?;
        let n = self.n;
        for i in 0..n {
            for j in i + 1..n {
                let s: f64 = deltas[i]
                    .iter()
                    .zip(deltas[j])
                    .map(|(&a, &b)| {
                        let d = f64::from(a) - f64::from(b);
                        d * d
                    })
                    .sum();
                self.dist[i * n + j] += s;
                self.dist[j * n + i] += s;
            }
        }
        for (h, d) in self.fingerprints.iter_mut().zip(deltas) {
            for block in d.chunks(4096) {
                self.bytes.clear();
                self.bytes
                    .extend(block.iter().flat_map(|x| x.to_le_bytes()));
                h.update(&self.bytes);
            }
        }
        self.tensors += 1;
        Ok(())
    }

    /// Number of tensors added so far.
    pub fn tensors(&self) -> usize {
        self.tensors
    }

    /// Krum score of every contributor: the sum of its n − f − 2 smallest squared distances to the
    /// others (sorted, then summed in that order).
    pub fn scores(&self) -> Vec<f64> {
        let n = self.n;
        let keep = n - self.f - 2;
        let mut row = Vec::with_capacity(n);
        (0..n)
            .map(|i| {
                row.clear();
                row.extend((0..n).filter(|&j| j != i).map(|j| self.dist[i * n + j]));
                row.sort_unstable_by(f64::total_cmp);
                row[..keep].iter().sum()
            })
            .collect()
    }

    /// The m contributors with the lowest scores, in ascending index order (m = 1: Krum).
    ///
    /// Equal scores are ordered by the BLAKE3 fingerprint of the contributors' data, so which tensors
    /// are selected does not depend on the contributors' order (equal fingerprints mean equal data).
    /// Refuses a selection before any tensor was added ([`SoupError::KrumNoData`]).
    pub fn select(&self) -> Result<Vec<usize>, SoupError> {
        if self.tensors == 0 {
            return Err(SoupError::KrumNoData);
        }
        let scores = self.scores();
        let prints: Vec<[u8; 32]> = self
            .fingerprints
            .iter()
            .map(|h| *h.finalize().as_bytes())
            .collect();
        let mut order: Vec<usize> = (0..self.n).collect();
        order.sort_by(|&a, &b| {
            scores[a]
                .total_cmp(&scores[b])
                .then_with(|| prints[a].cmp(&prints[b]))
                .then(a.cmp(&b))
        });
        let mut chosen = order[..self.m].to_vec();
        chosen.sort_unstable();
        Ok(chosen)
    }
}

/// Krum / multi-Krum of a single tensor (a model of one tensor): both passes at once.
pub fn krum(deltas: &[&[f32]], f: usize, m: usize) -> Result<Vec<f32>, SoupError> {
    check_shape(deltas)?;
    let mut acc = KrumAccumulator::new(deltas.len(), f, m)?;
    acc.add_tensor(deltas)?;
    mean_of(deltas, &acc.select()?)
}
