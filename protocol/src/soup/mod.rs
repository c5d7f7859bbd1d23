//! DeltaSoup: aggregation of model deltas from several contributors, robust ones included.
//!
//! Pure math, no IO. Every function takes the decoded deltas of **one tensor** from `n` contributors
//! (`deltas[i]` is contributor `i`'s tensor, all of equal length) and returns one aggregated tensor;
//! the caller streams a model tensor by tensor. Krum needs distances between whole models, so it is
//! a two-pass API ([`KrumAccumulator`]): pass 1 accumulates distances tensor by tensor, then
//! [`KrumAccumulator::select`] names the chosen contributors and pass 2 averages their tensors with
//! [`mean_of`].
//!
//! | method | output per coordinate | breakdown point (attackers tolerated) |
//! |---|---|---|
//! | [`mean`] | arithmetic mean | 0: one attacker moves it anywhere |
//! | [`weighted_sum`] | Σ wᵢ·Δᵢ (soup mixing) | 0 |
//! | [`trimmed_mean`] | mean after dropping ⌊β·n⌋ smallest and largest | ⌊β·n⌋ attackers, a fraction ≤ β |
//! | [`median`] | median | ⌈n/2⌉ − 1 attackers, a fraction < 50 % |
//! | Krum / multi-Krum | mean of the m contributors closest to their n − f − 2 neighbours | f attackers, with n > 2f + 2 |
//! | [`sign_vote`] | majority sign × median of the mean \|Δᵢ\| | the sign: < 50 %; the scale: < 50 % |
//!
//! A trimmed mean with β = 0.1 does **not** tolerate 30 % poisoned contributors (it tolerates at most
//! 10 %): with 30 of 100 contributors poisoned, 20 attackers survive the trim and move the result as
//! far as they like. See `docs/soup.md`, "Breakdown points".
//!
//! **Inputs.** Non-finite values (NaN, ±∞) are refused with [`SoupError::NonFiniteInput`], never
//! propagated: one NaN would otherwise poison the mean and make sorting-based methods ill-defined.
//! Errors are checked in this order: empty set, lengths, method parameters, finiteness.
//!
//! **Determinism.** Every function is invariant, bit for bit, under a permutation of the contributors
//! (with their weights, for [`weighted_sum`]): per coordinate the values (or the products wᵢ·Δᵢ) are
//! sorted with [`f32::total_cmp`] and summed in that order in `f64`, the result is rounded to `f32`
//! once. Per-contributor quantities (Krum distances, mean |Δᵢ|) are summed in coordinate order, which
//! does not depend on the contributors' order. Krum breaks score ties by a BLAKE3 fingerprint of each
//! contributor's data, so the selected *set of tensors* does not depend on the order either.

mod krum;
pub mod recipe;
#[cfg(test)]
mod tests;

pub use krum::{krum, KrumAccumulator};
pub use recipe::{Component, Recipe, RecipeError};

/// Why an aggregation was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SoupError {
    #[error("no contributors: aggregation needs at least one delta")]
    Empty,
    #[error("contributor {contributor} has {found} values, contributor 0 has {expected}")]
    LengthMismatch {
        contributor: usize,
        expected: usize,
        found: usize,
    },
    #[error("contributor {contributor} has a non-finite value ({value}) at index {index}")]
    NonFiniteInput {
        contributor: usize,
        index: usize,
        value: f32,
    },
    #[error("{weights} weights given for {contributors} contributors")]
    WeightCount { contributors: usize, weights: usize },
    #[error("weight {index} is not finite ({value})")]
    NonFiniteWeight { index: usize, value: f64 },
    #[error("trim fraction β = {beta} is outside [0, 0.5)")]
    TrimOutOfRange { beta: f64 },
    #[error("Krum with f = {f} Byzantine contributors needs n > 2f + 2 contributors, got n = {n}")]
    KrumTooFewContributors { n: usize, f: usize },
    #[error("multi-Krum m = {m} is outside 1..={max} (n − f)")]
    KrumSelectCount { m: usize, max: usize },
    #[error("{found} contributors given, the Krum accumulator was created for {expected}")]
    ContributorCount { expected: usize, found: usize },
    #[error("Krum selection asked for before any tensor was added")]
    KrumNoData,
    #[error("selected contributor {index} is out of range for {n} contributors")]
    SelectionOutOfRange { index: usize, n: usize },
    #[error("contributor {index} is selected twice")]
    DuplicateSelection { index: usize },
    #[error("the result does not fit in f32 at index {index}")]
    Overflow { index: usize },
}

/// Checks the common preconditions (non-empty, equal lengths, finite values) and returns the length.
fn validate(deltas: &[&[f32]]) -> Result<usize, SoupError> {
    let len = check_shape(deltas)?;
    check_finite(deltas)?;
    Ok(len)
}

/// Non-empty and equal lengths; returns the length.
fn check_shape(deltas: &[&[f32]]) -> Result<usize, SoupError> {
    let first = deltas.first().ok_or(SoupError::Empty)?;
    let expected = first.len();
    for (contributor, d) in deltas.iter().enumerate() {
        if d.len() != expected {
            return Err(SoupError::LengthMismatch {
                contributor,
                expected,
                found: d.len(),
            });
        }
    }
    Ok(expected)
}

fn check_finite(deltas: &[&[f32]]) -> Result<(), SoupError> {
    for (contributor, d) in deltas.iter().enumerate() {
        if let Some((index, &value)) = d.iter().enumerate().find(|(_, x)| !x.is_finite()) {
            return Err(SoupError::NonFiniteInput {
                contributor,
                index,
                value,
            });
        }
    }
    Ok(())
}

/// Applies `f` to every coordinate's values, sorted ascending by [`f32::total_cmp`].
fn per_sorted_coordinate(
    deltas: &[&[f32]],
    len: usize,
    mut f: impl FnMut(&[f32]) -> f32,
) -> Vec<f32> {
    let mut col = vec![0.0f32; deltas.len()];
    let mut out = Vec::with_capacity(len);
    for k in 0..len {
        for (c, d) in col.iter_mut().zip(deltas) {
            *c = d[k];
        }
        col.sort_unstable_by(f32::total_cmp);
        out.push(f(&col));
    }
    out
}

/// Sum in slice order, in `f64`.
fn sum_f64(values: &[f32]) -> f64 {
    values.iter().map(|&x| f64::from(x)).sum()
}

/// Mean of values already sorted (so the sum order is canonical), rounded to `f32` once.
fn sorted_mean(sorted: &[f32]) -> f32 {
    (sum_f64(sorted) / sorted.len() as f64) as f32
}

/// Median of sorted values: the middle one, or the mean of the two middle ones (in `f64`).
fn sorted_median(sorted: &[f32]) -> f32 {
    let h = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[h]
    } else {
        ((f64::from(sorted[h - 1]) + f64::from(sorted[h])) / 2.0) as f32
    }
}

/// Coordinate-wise arithmetic mean.
///
/// Breakdown point 0: a single contributor can move the result anywhere. O(d·n log n) time (the
/// per-coordinate sort makes the sum order canonical), O(n) scratch.
pub fn mean(deltas: &[&[f32]]) -> Result<Vec<f32>, SoupError> {
    let len = validate(deltas)?;
    Ok(per_sorted_coordinate(deltas, len, sorted_mean))
}

/// Mean of the contributors named by `selected` (pass 2 of Krum; see [`KrumAccumulator::select`]).
///
/// `selected` must be in range and without duplicates; the order does not matter.
pub fn mean_of(deltas: &[&[f32]], selected: &[usize]) -> Result<Vec<f32>, SoupError> {
    let n = deltas.len();
    let mut seen = vec![false; n];
    let mut chosen = Vec::with_capacity(selected.len());
    for &index in selected {
        let slot = seen
            .get_mut(index)
            .ok_or(SoupError::SelectionOutOfRange { index, n })?;
        if *slot {
            return Err(SoupError::DuplicateSelection { index });
        }
        *slot = true;
        chosen.push(deltas[index]);
    }
    mean(&chosen)
}

/// Soup mixing: W = Σᵢ wᵢ·Δᵢ with the given weights (any finite values, negative ones included, not
/// necessarily summing to 1).
///
/// Breakdown point 0. Products are taken in `f64`, sorted per coordinate and summed in that order.
/// Refuses a weight count different from `n`, non-finite weights, and a result that overflows `f32`
/// ([`SoupError::Overflow`]). O(d·n log n).
pub fn weighted_sum(deltas: &[&[f32]], weights: &[f64]) -> Result<Vec<f32>, SoupError> {
    let len = check_shape(deltas)?;
    if weights.len() != deltas.len() {
        return Err(SoupError::WeightCount {
            contributors: deltas.len(),
            weights: weights.len(),
        });
    }
    if let Some((index, &value)) = weights.iter().enumerate().find(|(_, w)| !w.is_finite()) {
        return Err(SoupError::NonFiniteWeight { index, value });
    }
    check_finite(deltas)?;
    let mut out = Vec::with_capacity(len);
    let mut push = |k: usize, v: f64| {
        let v = v as f32;
        if !v.is_finite() {
            return Err(SoupError::Overflow { index: k });
        }
        out.push(v);
        Ok(())
    };
    match (deltas, weights) {
        // One or two products: their sum does not depend on their order (IEEE addition is
        // commutative, and adding the sum's zero start changes no value), so no sort.
        ([a], &[wa]) => {
            for (k, &x) in a.iter().enumerate() {
                push(k, [wa * f64::from(x)].iter().sum::<f64>())?;
            }
        }
        ([a, b], &[wa, wb]) => {
            for (k, (&x, &y)) in a.iter().zip(b.iter()).enumerate() {
                push(
                    k,
                    [wa * f64::from(x), wb * f64::from(y)].iter().sum::<f64>(),
                )?;
            }
        }
        _ => {
            let mut col = vec![0.0f64; deltas.len()];
            for k in 0..len {
                for ((c, d), &w) in col.iter_mut().zip(deltas).zip(weights) {
                    *c = w * f64::from(d[k]);
                }
                col.sort_unstable_by(f64::total_cmp);
                push(k, col.iter().sum::<f64>())?;
            }
        }
    }
    Ok(out)
}

/// How many values a trimmed mean drops at each end: ⌊β·n⌋.
///
/// β must be in [0, 0.5). The product is taken with a tolerance of 1e-9 so that a decimal β behaves
/// as written (0.29 · 100 is 28.999… in binary floating point; this gives 29), and capped so that
/// at least one value remains.
pub fn trim_count(n: usize, beta: f64) -> Result<usize, SoupError> {
    if !(0.0..0.5).contains(&beta) {
        return Err(SoupError::TrimOutOfRange { beta });
    }
    let k = (beta * n as f64 + 1e-9).floor() as usize;
    Ok(k.min(n.saturating_sub(1) / 2))
}

/// Coordinate-wise trimmed mean: per coordinate, drops the k = ⌊β·n⌋ smallest and the k largest
/// values ([`trim_count`]) and averages the n − 2k others.
///
/// Breakdown point: tolerates up to k attackers, i.e. a fraction of at most β (strictly below β when
/// β·n is not an integer); with k + 1 attackers on one side one survives the trim and can move the
/// result anywhere. β = 0.1 therefore does **not** tolerate 30 % poisoning. β = 0 is the plain mean.
/// O(d·n log n).
pub fn trimmed_mean(deltas: &[&[f32]], beta: f64) -> Result<Vec<f32>, SoupError> {
    let len = check_shape(deltas)?;
    let k = trim_count(deltas.len(), beta)?;
    check_finite(deltas)?;
    let m = deltas.len() - k;
    Ok(per_sorted_coordinate(deltas, len, |s| {
        sorted_mean(&s[k..m])
    }))
}

/// Coordinate-wise median (the mean of the two middle values, in `f64`, when n is even).
///
/// Breakdown point: tolerates ⌈n/2⌉ − 1 attackers, i.e. any fraction below 50 %. O(d·n log n).
pub fn median(deltas: &[&[f32]]) -> Result<Vec<f32>, SoupError> {
    let len = validate(deltas)?;
    Ok(per_sorted_coordinate(deltas, len, sorted_median))
}

/// The robust scale of [`sign_vote`]: the median over contributors of their mean |Δᵢ| over this
/// tensor (each mean summed in coordinate order in `f64`). 0 for an empty tensor.
///
/// Breakdown point: < 50 % (a median).
pub fn robust_scale(deltas: &[&[f32]]) -> Result<f32, SoupError> {
    let len = validate(deltas)?;
    Ok(scale_of(deltas, len))
}

fn scale_of(deltas: &[&[f32]], len: usize) -> f32 {
    if len == 0 {
        return 0.0;
    }
    let mut means: Vec<f64> = deltas
        .iter()
        .map(|d| d.iter().map(|&x| f64::from(x.abs())).sum::<f64>() / len as f64)
        .collect();
    means.sort_unstable_by(f64::total_cmp);
    let h = means.len() / 2;
    let m = if means.len() % 2 == 1 {
        means[h]
    } else {
        (means[h - 1] + means[h]) / 2.0
    };
    m as f32
}

/// Sign majority vote with a robust scale: per coordinate, s·σ where σ is the sign held by the
/// majority of contributors (sign(x) = +1 for x ≥ 0, −0.0 included, as in BitDelta; a tie gives +1)
/// and s = [`robust_scale`]. The output is a 1-bit BitDelta tensor with a per-tensor scale.
///
/// Breakdown point: a sign on which the honest contributors agree cannot be flipped by fewer than
/// n/2 attackers (ties go to +1, so with exactly n/2 attackers a − can become +); the scale is a
/// median, so < 50 % attackers keep it between honest contributors' values. O(d·n) time, O(n) space.
pub fn sign_vote(deltas: &[&[f32]]) -> Result<Vec<f32>, SoupError> {
    let len = validate(deltas)?;
    let s = scale_of(deltas, len);
    let n = deltas.len();
    let mut positive = vec![0usize; len];
    for d in deltas {
        for (p, &x) in positive.iter_mut().zip(d.iter()) {
            *p += usize::from(x >= 0.0);
        }
    }
    Ok(positive
        .into_iter()
        .map(|p| if 2 * p >= n { s } else { -s })
        .collect())
}
