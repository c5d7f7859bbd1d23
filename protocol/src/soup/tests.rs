use proptest::prelude::*;

use super::*;

fn refs(v: &[Vec<f32>]) -> Vec<&[f32]> {
    v.iter().map(Vec::as_slice).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// splitmix64: a tiny deterministic generator for the fixed scenarios.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }
}

// ---------------------------------------------------------------- hand-computed examples

#[test]
fn mean_example() {
    let d = [vec![1.0, 2.0], vec![3.0, 4.0], vec![5.0, 9.0]];
    assert_eq!(mean(&refs(&d)).unwrap(), vec![3.0, 5.0]);
    // One contributor: returned exactly.
    assert_eq!(mean(&refs(&d[..1])).unwrap(), vec![1.0, 2.0]);
    // Empty tensors are fine.
    assert_eq!(mean(&[&[], &[]]).unwrap(), Vec::<f32>::new());
}

#[test]
fn weighted_sum_example() {
    let d = [vec![1.0, 2.0], vec![3.0, 4.0]];
    assert_eq!(
        weighted_sum(&refs(&d), &[0.5, -1.0]).unwrap(),
        vec![-2.5, -3.0]
    );
    assert_eq!(
        weighted_sum(&refs(&d), &[1.0, 1.0]).unwrap(),
        vec![4.0, 6.0]
    );
    assert_eq!(
        weighted_sum(&refs(&d), &[0.0, 0.0]).unwrap(),
        vec![0.0, 0.0]
    );
}

#[test]
fn trimmed_mean_example() {
    // Per coordinate: {1, 2, 3, 4, 100} and {-100, 0, 0, 1, 2}.
    let d = [
        vec![4.0, 0.0],
        vec![100.0, 2.0],
        vec![1.0, -100.0],
        vec![3.0, 1.0],
        vec![2.0, 0.0],
    ];
    // β = 0.2: k = 1, mean of the middle three.
    assert_eq!(trimmed_mean(&refs(&d), 0.2).unwrap(), vec![3.0, 1.0 / 3.0]);
    // β = 0.1: k = ⌊0.5⌋ = 0, the plain mean.
    assert_eq!(
        trimmed_mean(&refs(&d), 0.1).unwrap(),
        mean(&refs(&d)).unwrap()
    );
    assert_eq!(
        trimmed_mean(&refs(&d), 0.1).unwrap(),
        vec![22.0, -97.0 / 5.0]
    );
}

#[test]
fn trim_count_examples() {
    assert_eq!(trim_count(10, 0.3).unwrap(), 3);
    assert_eq!(trim_count(100, 0.29).unwrap(), 29); // 0.29·100 = 28.999… in binary
    assert_eq!(trim_count(100, 0.1).unwrap(), 10);
    assert_eq!(trim_count(3, 0.49).unwrap(), 1);
    assert_eq!(trim_count(2, 0.49).unwrap(), 0);
    assert_eq!(trim_count(1, 0.0).unwrap(), 0);
    assert_eq!(trim_count(4, 0.499_999_999_99).unwrap(), 1); // at least one value remains
}

#[test]
fn median_example() {
    let odd = [vec![5.0], vec![1.0], vec![3.0]];
    assert_eq!(median(&refs(&odd)).unwrap(), vec![3.0]);
    let even = [
        vec![4.0, -1.0],
        vec![1.0, -1.0],
        vec![3.0, 7.0],
        vec![2.0, 1e6],
    ];
    assert_eq!(median(&refs(&even)).unwrap(), vec![2.5, 3.0]);
}

#[test]
fn sign_vote_example() {
    let d = [
        vec![1.0, -2.0, 0.0],
        vec![-1.0, -1.0, 3.0],
        vec![2.0, -3.0, -1.0],
        vec![-0.5, 4.0, 1.0],
    ];
    // mean |Δᵢ| = 1, 5/3, 2, 5.5/3 → median (5/3 + 5.5/3)/2 = 1.75.
    assert_eq!(robust_scale(&refs(&d)).unwrap(), 1.75);
    // Coordinate 0 is a 2–2 tie → +; coordinate 2 counts the 0 as +.
    assert_eq!(sign_vote(&refs(&d)).unwrap(), vec![1.75, -1.75, 1.75]);
    // −0.0 is + as in BitDelta.
    let z = [vec![-0.0, -1.0], vec![-0.0, 1.0], vec![1.0, -1.0]];
    assert_eq!(sign_vote(&refs(&z)).unwrap(), vec![0.5, -0.5]);
}

/// Four honest points around (0.5, 0.5) and one far attacker; n = 5, f = 1, n − f − 2 = 2.
fn krum_example() -> Vec<Vec<f32>> {
    vec![
        vec![0.0, 0.0],
        vec![1.0, 0.0],
        vec![100.0, 100.0],
        vec![0.5, 0.5],
        vec![0.0, 1.0],
    ]
}

#[test]
fn krum_examples() {
    let d = krum_example();
    let mut acc = KrumAccumulator::new(5, 1, 1).unwrap();
    acc.add_tensor(&refs(&d)).unwrap();
    let s = acc.scores();
    // (0,0): nearest 0.5 (centre) + 1 → 1.5; centre: 0.5 + 0.5 → 1.
    assert_eq!([s[0], s[1], s[3], s[4]], [1.5, 1.5, 1.0, 1.5]);
    assert_eq!(
        s[2],
        99.5f64.powi(2) * 2.0 + (100.0f64.powi(2) + 99.0f64.powi(2))
    );
    assert_eq!(acc.select().unwrap(), vec![3]);
    assert_eq!(krum(&refs(&d), 1, 1).unwrap(), vec![0.5, 0.5]);
    // Multi-Krum with m = n − f = 4: the four honest points.
    assert_eq!(krum(&refs(&d), 1, 4).unwrap(), vec![0.375, 0.375]);
}

#[test]
fn krum_streams_over_tensors() {
    // The same 4-vectors given as one tensor or as two halves select the same contributors.
    let mut rng = Rng(7);
    let d: Vec<Vec<f32>> = (0..7)
        .map(|_| (0..4).map(|_| rng.uniform(-1.0, 1.0)).collect())
        .collect();
    let mut whole = KrumAccumulator::new(7, 2, 3).unwrap();
    whole.add_tensor(&refs(&d)).unwrap();
    let mut split = KrumAccumulator::new(7, 2, 3).unwrap();
    let a: Vec<&[f32]> = d.iter().map(|v| &v[..1]).collect();
    let b: Vec<&[f32]> = d.iter().map(|v| &v[1..]).collect();
    split.add_tensor(&a).unwrap();
    split.add_tensor(&b).unwrap();
    assert_eq!(split.tensors(), 2);
    assert_eq!(whole.select().unwrap(), split.select().unwrap());
    let (sw, ss) = (whole.scores(), split.scores());
    for (x, y) in sw.iter().zip(&ss) {
        assert!((x - y).abs() <= 1e-12 * x.abs().max(1.0));
    }
}

#[test]
fn krum_ties_do_not_depend_on_order() {
    // Three honest points with equal scores: multi-Krum m = 2 must pick the same tensors whatever
    // the order.
    let d = vec![
        vec![0.0, 0.0],
        vec![1.0, 0.0],
        vec![0.0, 1.0],
        vec![1.0, 1.0],
        vec![50.0, 9.0],
    ];
    let base = krum(&refs(&d), 1, 2).unwrap();
    let rev: Vec<Vec<f32>> = d.iter().rev().cloned().collect();
    assert_eq!(bits(&krum(&refs(&rev), 1, 2).unwrap()), bits(&base));
    let rot: Vec<Vec<f32>> = d[2..].iter().chain(&d[..2]).cloned().collect();
    assert_eq!(bits(&krum(&refs(&rot), 1, 2).unwrap()), bits(&base));
}

// ---------------------------------------------------------------- errors

#[test]
fn errors_are_named() {
    let none: [&[f32]; 0] = [];
    assert_eq!(mean(&none), Err(SoupError::Empty));
    assert_eq!(weighted_sum(&none, &[]), Err(SoupError::Empty));
    assert_eq!(trimmed_mean(&none, 0.1), Err(SoupError::Empty));
    assert_eq!(median(&none), Err(SoupError::Empty));
    assert_eq!(sign_vote(&none), Err(SoupError::Empty));
    assert_eq!(robust_scale(&none), Err(SoupError::Empty));
    assert_eq!(krum(&none, 0, 1), Err(SoupError::Empty));
    assert_eq!(KrumAccumulator::new(0, 0, 1).err(), Some(SoupError::Empty));

    let ragged: [&[f32]; 3] = [&[1.0, 2.0], &[1.0, 2.0], &[1.0]];
    let mismatch = SoupError::LengthMismatch {
        contributor: 2,
        expected: 2,
        found: 1,
    };
    assert_eq!(mean(&ragged), Err(mismatch.clone()));
    assert_eq!(median(&ragged), Err(mismatch.clone()));
    assert_eq!(krum(&ragged, 0, 1), Err(mismatch));

    let ok: [&[f32]; 2] = [&[1.0], &[2.0]];
    assert_eq!(
        weighted_sum(&ok, &[1.0]),
        Err(SoupError::WeightCount {
            contributors: 2,
            weights: 1
        })
    );
    assert!(matches!(
        weighted_sum(&ok, &[1.0, f64::NAN]),
        Err(SoupError::NonFiniteWeight { index: 1, value }) if value.is_nan()
    ));
    assert_eq!(
        weighted_sum(&ok, &[f64::INFINITY, 1.0]),
        Err(SoupError::NonFiniteWeight {
            index: 0,
            value: f64::INFINITY
        })
    );
    assert_eq!(
        weighted_sum(&ok, &[1e300, 1e300]),
        Err(SoupError::Overflow { index: 0 })
    );
    let big: [&[f32]; 2] = [&[f32::MAX], &[f32::MAX]];
    assert_eq!(
        weighted_sum(&big, &[1.0, 1.0]),
        Err(SoupError::Overflow { index: 0 })
    );

    for beta in [-0.1, 0.5, 0.7, f64::INFINITY] {
        assert_eq!(
            trimmed_mean(&ok, beta),
            Err(SoupError::TrimOutOfRange { beta })
        );
    }
    assert!(matches!(
        trimmed_mean(&ok, f64::NAN),
        Err(SoupError::TrimOutOfRange { .. })
    ));

    let nan: [&[f32]; 2] = [&[1.0, 2.0], &[3.0, f32::NAN]];
    assert!(matches!(
        mean(&nan),
        Err(SoupError::NonFiniteInput { contributor: 1, index: 1, value }) if value.is_nan()
    ));
    let inf: [&[f32]; 2] = [&[1.0, f32::NEG_INFINITY], &[3.0, 1.0]];
    let e = SoupError::NonFiniteInput {
        contributor: 0,
        index: 1,
        value: f32::NEG_INFINITY,
    };
    assert_eq!(sign_vote(&inf), Err(e.clone()));
    assert_eq!(trimmed_mean(&inf, 0.0), Err(e.clone()));
    assert_eq!(weighted_sum(&inf, &[1.0, 1.0]), Err(e));
}

#[test]
fn krum_errors_are_named() {
    use SoupError::*;
    assert_eq!(
        KrumAccumulator::new(4, 1, 1).err(),
        Some(KrumTooFewContributors { n: 4, f: 1 })
    );
    assert_eq!(
        KrumAccumulator::new(2, 0, 1).err(),
        Some(KrumTooFewContributors { n: 2, f: 0 })
    );
    assert_eq!(
        KrumAccumulator::new(9, usize::MAX, 1).err(),
        Some(KrumTooFewContributors {
            n: 9,
            f: usize::MAX
        })
    );
    assert!(KrumAccumulator::new(5, 1, 1).is_ok());
    assert!(KrumAccumulator::new(3, 0, 3).is_ok());
    assert_eq!(
        KrumAccumulator::new(5, 1, 0).err(),
        Some(KrumSelectCount { m: 0, max: 4 })
    );
    assert_eq!(
        KrumAccumulator::new(5, 1, 5).err(),
        Some(KrumSelectCount { m: 5, max: 4 })
    );

    let mut acc = KrumAccumulator::new(3, 0, 1).unwrap();
    assert_eq!(acc.select(), Err(KrumNoData));
    let two: [&[f32]; 2] = [&[1.0], &[2.0]];
    assert_eq!(
        acc.add_tensor(&two),
        Err(ContributorCount {
            expected: 3,
            found: 2
        })
    );
    let bad: [&[f32]; 3] = [&[1.0], &[2.0], &[f32::NAN]];
    assert!(matches!(
        acc.add_tensor(&bad),
        Err(NonFiniteInput {
            contributor: 2,
            index: 0,
            ..
        })
    ));
    assert_eq!(acc.tensors(), 0, "a refused tensor is not accumulated");

    let d: [&[f32]; 3] = [&[1.0], &[2.0], &[4.0]];
    assert_eq!(
        mean_of(&d, &[0, 3]),
        Err(SelectionOutOfRange { index: 3, n: 3 })
    );
    assert_eq!(mean_of(&d, &[1, 1]), Err(DuplicateSelection { index: 1 }));
    assert_eq!(mean_of(&d, &[]), Err(Empty));
    assert_eq!(mean_of(&d, &[2, 0]).unwrap(), vec![2.5]);
}

// ---------------------------------------------------------------- 30 % poisoning

/// 100 contributors over 64 coordinates: 70 honest ones (a common vector c with |cₖ| ∈ [0.5, 1]
/// plus noise in ±0.05), 30 attackers sending an honest-looking delta flipped and scaled by −100.
fn poisoned() -> (Vec<Vec<f32>>, Vec<f32>) {
    let mut rng = Rng(2024);
    let d = 64;
    let c: Vec<f32> = (0..d)
        .map(|_| {
            let m = rng.uniform(0.5, 1.0);
            if rng.next() & 1 == 0 {
                m
            } else {
                -m
            }
        })
        .collect();
    let mut all = Vec::new();
    for i in 0..100 {
        let honest: Vec<f32> = c.iter().map(|&x| x + rng.uniform(-0.05, 0.05)).collect();
        all.push(if i % 10 < 3 {
            honest.iter().map(|x| -100.0 * x).collect()
        } else {
            honest
        });
    }
    let honest: Vec<Vec<f32>> = all
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 10 >= 3)
        .map(|(_, v)| v.clone())
        .collect();
    let h = mean(&refs(&honest)).unwrap();
    (all, h)
}

#[test]
fn thirty_percent_sign_flip_attack() {
    let (all, h) = poisoned();
    let d = refs(&all);
    // Honest values are within ±0.05 of c, so any robust estimate inside the honest range is within
    // 0.1 of the honest mean.
    assert!(max_diff(&trimmed_mean(&d, 0.3).unwrap(), &h) <= 0.1);
    assert!(max_diff(&median(&d).unwrap(), &h) <= 0.1);
    assert!(max_diff(&krum(&d, 30, 70).unwrap(), &h) <= 0.1);
    assert!(max_diff(&krum(&d, 30, 1).unwrap(), &h) <= 0.1);
    // The plain mean is dragged to about −29·c, and β = 0.1 (the seeds' choice) keeps 20 attackers:
    // it is no protection against 30 %.
    assert!(max_diff(&mean(&d).unwrap(), &h) > 10.0);
    assert!(max_diff(&trimmed_mean(&d, 0.1).unwrap(), &h) > 10.0);
    // The sign vote keeps every honest sign and an honest-sized scale.
    let v = sign_vote(&d).unwrap();
    let honest_scale = h.iter().map(|x| x.abs()).sum::<f32>() / h.len() as f32;
    for (x, y) in v.iter().zip(&h) {
        assert_eq!(x.is_sign_negative(), y.is_sign_negative());
        assert!((x.abs() - honest_scale).abs() <= 0.1);
    }
}

// ---------------------------------------------------------------- properties

/// n contributors = c + noise in ±EPS, with |cₖ| ∈ [0.1, 10] (so every sign is unanimous).
const EPS: f32 = 0.01;

fn honest_set() -> impl Strategy<Value = Vec<Vec<f32>>> {
    (3usize..12, 1usize..16).prop_flat_map(|(n, d)| {
        let c = prop::collection::vec((0.1f32..10.0, any::<bool>()), d);
        let noise = prop::collection::vec(prop::collection::vec(-EPS..EPS, d), n);
        (c, noise).prop_map(|(c, noise)| {
            noise
                .iter()
                .map(|e| {
                    c.iter()
                        .zip(e)
                        .map(|(&(m, neg), &e)| if neg { -m } else { m } + e)
                        .collect()
                })
                .collect()
        })
    })
}

/// Arbitrary finite contributors, from a small set of values (many ties, ±0) or a wide range.
fn any_set() -> impl Strategy<Value = Vec<Vec<f32>>> {
    let value = prop_oneof![
        prop::sample::select(vec![-2.0f32, -1.0, -0.0, 0.0, 1.0, 2.0]),
        -1e6f32..1e6,
        -1e-3f32..1e-3,
    ];
    (1usize..10, 0usize..12).prop_flat_map(move |(n, d)| {
        prop::collection::vec(prop::collection::vec(value.clone(), d), n)
    })
}

/// Every method, as bit patterns (weights: 1/(i + 1) attached to contributor i of `base_order`).
fn all_methods(d: &[&[f32]], weights: &[f64]) -> Vec<Vec<u32>> {
    let n = d.len();
    let mut out = vec![
        bits(&mean(d).unwrap()),
        bits(&weighted_sum(d, weights).unwrap()),
        bits(&trimmed_mean(d, 0.25).unwrap()),
        bits(&median(d).unwrap()),
        bits(&sign_vote(d).unwrap()),
    ];
    if n >= 3 {
        let f = (n - 3) / 2;
        out.push(bits(&krum(d, f, 1).unwrap()));
        out.push(bits(&krum(d, f, n - f).unwrap()));
        out.push(bits(&krum(d, 0, 2).unwrap()));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn robust_methods_track_the_mean_without_attackers(set in honest_set()) {
        let d = refs(&set);
        let n = d.len();
        let m = mean(&d).unwrap();
        // All values of a coordinate lie within 2·EPS of each other, and so does any average or
        // order statistic of them; 1e-4 covers f32 rounding at magnitude ≤ 10.
        let bound = 2.0 * EPS + 1e-4;
        prop_assert!(max_diff(&trimmed_mean(&d, 0.2).unwrap(), &m) <= bound);
        prop_assert!(max_diff(&trimmed_mean(&d, 0.45).unwrap(), &m) <= bound);
        prop_assert!(max_diff(&median(&d).unwrap(), &m) <= bound);
        let f = (n - 3) / 2;
        prop_assert!(max_diff(&krum(&d, f, 1).unwrap(), &m) <= bound);
        prop_assert!(max_diff(&krum(&d, f, n - f).unwrap(), &m) <= bound);
        let w = vec![1.0 / n as f64; n];
        prop_assert!(max_diff(&weighted_sum(&d, &w).unwrap(), &m) <= 1e-4);
        // Sign vote = the 1-bit BitDelta of the mean: sign(mean) · s with s within 2·EPS of the
        // mean |mean|.
        let v = sign_vote(&d).unwrap();
        let s = m.iter().map(|x| x.abs()).sum::<f32>() / m.len() as f32;
        for (x, y) in v.iter().zip(&m) {
            prop_assert_eq!(x.is_sign_negative(), y.is_sign_negative());
            prop_assert!((x.abs() - s).abs() <= bound);
        }
    }

    #[test]
    fn every_method_is_permutation_invariant(
        (set, perm) in any_set().prop_flat_map(|s| {
            let n = s.len();
            (Just(s), Just((0..n).collect::<Vec<usize>>()).prop_shuffle())
        })
    ) {
        let weights: Vec<f64> = (0..set.len()).map(|i| 1.0 / (i as f64 + 1.0) - 0.3).collect();
        let d = refs(&set);
        let shuffled: Vec<&[f32]> = perm.iter().map(|&i| d[i]).collect();
        let shuffled_w: Vec<f64> = perm.iter().map(|&i| weights[i]).collect();
        prop_assert_eq!(all_methods(&d, &weights), all_methods(&shuffled, &shuffled_w));
    }

    #[test]
    fn non_finite_inputs_are_refused(
        set in any_set().prop_filter("non-empty tensors", |s| !s[0].is_empty()),
        pick in any::<(prop::sample::Index, prop::sample::Index)>(),
        bad in prop::sample::select(vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY]),
    ) {
        let mut set = set;
        let (c, i) = (pick.0.index(set.len()), pick.1.index(set[0].len()));
        set[c][i] = bad;
        let d = refs(&set);
        let w = vec![1.0; d.len()];
        let results = [mean(&d), weighted_sum(&d, &w), trimmed_mean(&d, 0.1), median(&d),
            sign_vote(&d), krum(&d, 0, 1)];
        for (k, r) in results.into_iter().enumerate() {
            if k == 5 && d.len() < 3 {
                continue; // Krum refuses the contributor count first
            }
            let ok = matches!(r, Err(SoupError::NonFiniteInput { contributor, index, value })
                if contributor == c && index == i && value.to_bits() == bad.to_bits());
            prop_assert!(ok, "method {}: {:?}", k, r);
        }
    }

    #[test]
    fn bad_parameters_are_refused(
        set in any_set(),
        beta in prop_oneof![-10.0f64..0.0, 0.5f64..10.0],
        f in 0usize..20,
        extra in 1usize..4,
    ) {
        let d = refs(&set);
        let n = d.len();
        prop_assert_eq!(trimmed_mean(&d, beta), Err(SoupError::TrimOutOfRange { beta }));
        let wrong = vec![0.5; n + extra];
        prop_assert_eq!(weighted_sum(&d, &wrong),
            Err(SoupError::WeightCount { contributors: n, weights: n + extra }));
        if n <= 2 * f + 2 {
            prop_assert_eq!(krum(&d, f, 1), Err(SoupError::KrumTooFewContributors { n, f }));
        }
        // A ragged set: contributor n gets one value more.
        let mut ragged = set.clone();
        let mut longer = set[0].clone();
        longer.push(1.0);
        ragged.push(longer);
        let len = set[0].len();
        let e = SoupError::LengthMismatch { contributor: n, expected: len, found: len + 1 };
        prop_assert_eq!(median(&refs(&ragged)), Err(e));
    }
}

/// The definition of [`weighted_sum`]: products in f64, sorted per coordinate, summed in that
/// order (the general path, for any count).
fn weighted_sum_sorted(deltas: &[&[f32]], weights: &[f64]) -> Vec<u32> {
    let len = deltas.first().map_or(0, |d| d.len());
    (0..len)
        .map(|k| {
            let mut col: Vec<f64> = deltas
                .iter()
                .zip(weights)
                .map(|(d, w)| w * f64::from(d[k]))
                .collect();
            col.sort_unstable_by(f64::total_cmp);
            (col.iter().sum::<f64>() as f32).to_bits()
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// One or two components skip the sort: the same bits as the definition, signed zeros and
    /// weights of every sign included.
    #[test]
    fn weighted_sum_of_one_or_two_is_the_sorted_sum(
        n in 1usize..=2,
        len in 0usize..24,
        vals in prop::collection::vec(
            prop_oneof![
                Just(0.0f32), Just(-0.0f32), Just(1.0f32), Just(-1.0f32),
                -1e30f32..1e30f32, -1e-30f32..1e-30f32,
            ],
            48,
        ),
        weights in prop::collection::vec(
            prop_oneof![Just(0.0f64), Just(-0.0f64), Just(1.0f64), -4.0f64..4.0],
            2,
        ),
    ) {
        let d: Vec<Vec<f32>> = (0..n).map(|i| vals[i * 24..i * 24 + len].to_vec()).collect();
        let d = refs(&d);
        let w = &weights[..n];
        prop_assert_eq!(bits(&weighted_sum(&d, w).unwrap()), weighted_sum_sorted(&d, w));
    }
}
