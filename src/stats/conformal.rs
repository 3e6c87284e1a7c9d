//! Conformal prediction sets: randomized Regularized Adaptive Prediction Sets (RAPS;
//! Angelopoulos, Bates, Malik & Jordan 2021, "Uncertainty sets for image classifiers using
//! conformal prediction"), which is APS (Romano, Sesia & Candès 2020) with a penalty on deep
//! ranks; a penalty of 0 is APS.
//!
//! Classes are ranked by probability (highest first, ties by class index); each class adds its
//! probability plus a penalty λ when its rank is beyond k_reg. The score of class y is what the
//! classes ranked before it add, plus `u` times what y adds, with `u` uniform in [0, 1) (the
//! randomized RAPS of the paper's algorithm: the penalty is randomized with the probability,
//! which is what keeps coverage exact when tail probabilities are all nearly zero). The penalty
//! matters for overconfident models: without it their scores tie near 1 and the threshold falls
//! among ties, with it the rank decides. On n
//! labeled calibration samples the threshold q̂ is the ⌈(n + 1)(1 − α)⌉-th smallest score of the
//! true class; the set of a new prediction is every class whose score is at most q̂ (a prefix of
//! the ranking, empty when even the top class's `u · p` is over q̂). When the new sample is
//! exchangeable with the calibration ones, the set holds the true class with probability at
//! least 1 − α and at most 1 − α + 1/(n + 1): the randomization is what makes the coverage
//! exact instead of conservative.

use super::random::{SplitMix64, mix};

/// Classes by probability, highest first, ties by index.
fn ranking(probabilities: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..probabilities.len()).collect();
    order.sort_by(|&a, &b| {
        probabilities[b]
            .total_cmp(&probabilities[a])
            .then(a.cmp(&b))
    });
    order
}

/// The RAPS regularization: `penalty` (λ) per rank beyond `free_ranks` (k_reg).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Regularization {
    pub penalty: f64,
    pub free_ranks: usize,
}

impl Regularization {
    /// The penalty the class at `rank` (1-based) adds.
    fn at(&self, rank: usize) -> f64 {
        if rank > self.free_ranks {
            self.penalty
        } else {
            0.0
        }
    }
}

/// The ranking walked once: each class with what the classes ranked before it add
/// (probability and penalty) and what it adds itself.
fn steps(probabilities: &[f32], reg: Regularization) -> impl Iterator<Item = (usize, f64, f64)> {
    let mut before = 0.0;
    ranking(probabilities)
        .into_iter()
        .enumerate()
        .map(move |(i, c)| {
            let adds = f64::from(probabilities[c]) + reg.at(i + 1);
            let step = (c, before, adds);
            before += adds;
            step
        })
}

/// The RAPS score of `class`: what the classes ranked before it add (probability and penalty),
/// plus `u` times what it adds. NaN for a class out of range.
pub fn raps_score(probabilities: &[f32], class: usize, u: f64, reg: Regularization) -> f64 {
    steps(probabilities, reg)
        .find(|&(c, _, _)| c == class)
        .map_or(f64::NAN, |(_, before, adds)| before + u * adds)
}

/// The calibrated threshold q̂ for `coverage` (1 − α) from row-major `probabilities` (`classes`
/// per row), their true classes and one `u` per row; `None` when the sizes disagree, a class
/// is out of range, `coverage` is not in (0, 1) or there are too few rows for it
/// (⌈(n + 1) coverage⌉ > n).
pub fn raps_threshold(
    probabilities: &[f32],
    classes: usize,
    truth: &[usize],
    u: &[f64],
    coverage: f64,
    reg: Regularization,
) -> Option<f64> {
    let n = truth.len();
    if classes == 0
        || probabilities.len() != n * classes
        || u.len() != n
        || !(coverage > 0.0 && coverage < 1.0)
    {
        return None;
    }
    let mut scores = Vec::with_capacity(n);
    for ((row, &t), &u) in probabilities.chunks_exact(classes).zip(truth).zip(u) {
        let s = raps_score(row, t, u, reg);
        if s.is_nan() {
            return None;
        }
        scores.push(s);
    }
    scores.sort_by(f64::total_cmp);
    let rank = ((n + 1) as f64 * coverage).ceil() as usize;
    (rank >= 1 && rank <= n).then(|| scores[rank - 1])
}

/// The prediction set for `threshold`: the classes whose score is at most it, highest
/// probability first (scores grow along the ranking, so the set is a prefix of it).
pub fn raps_set(probabilities: &[f32], threshold: f64, u: f64, reg: Regularization) -> Vec<usize> {
    steps(probabilities, reg)
        .take_while(|&(_, before, adds)| before + u * adds <= threshold)
        .map(|(c, _, _)| c)
        .collect()
}

/// The probability over the draw `u` that `class` is in the set for `threshold`:
/// `clamp((q̂ − what the classes before it add) / what it adds, 0, 1)`. Averaging it over labeled
/// predictions gives the coverage given the calibration without the noise of the draws. NaN
/// for a class out of range.
pub fn raps_inclusion(
    probabilities: &[f32],
    class: usize,
    threshold: f64,
    reg: Regularization,
) -> f64 {
    steps(probabilities, reg)
        .find(|&(c, _, _)| c == class)
        .map_or(f64::NAN, |(_, before, adds)| {
            if adds > 0.0 {
                ((threshold - before) / adds).clamp(0.0, 1.0)
            } else if before <= threshold {
                1.0
            } else {
                0.0
            }
        })
}

/// A uniform draw in [0, 1) that a request id determines (FNV-1a of its bytes, mixed with
/// `seed`): the same prediction always gets the same set, and a set can be recomputed when its
/// label comes back.
pub fn uniform_for(id: &str, seed: u64) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    SplitMix64::new(mix(h ^ seed)).unit()
}

/// One seeded `u` per calibration row.
pub fn calibration_draws(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = SplitMix64::new(seed);
    (0..n).map(|_| rng.unit()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::fixture;

    const APS: Regularization = Regularization {
        penalty: 0.0,
        free_ranks: 0,
    };

    #[test]
    fn raps_follows_numpy() {
        let f = fixture::load_named("sequential_fixture.json");
        for case in f["raps"].as_array().unwrap() {
            check_case(case);
        }
    }

    fn check_case(case: &serde_json::Value) {
        let reg = Regularization {
            penalty: fixture::number(&case["penalty"]),
            free_ranks: fixture::count(&case["free_ranks"]),
        };
        let k = fixture::count(&case["classes"]);
        let probs = fixture::f32s(&case["probabilities"]);
        let truth = fixture::usizes(&case["truth"]);
        let u = fixture::f64s(&case["u"]);
        for ((row, t), (u, want)) in probs
            .chunks_exact(k)
            .zip(&truth)
            .zip(u.iter().zip(fixture::f64s(&case["scores"])))
        {
            fixture::assert_close(raps_score(row, *t, *u, reg), want, 1e-6, "raps score");
        }
        let coverage = fixture::number(&case["coverage"]);
        let q = raps_threshold(&probs, k, &truth, &u, coverage, reg).unwrap();
        fixture::assert_close(q, fixture::number(&case["threshold"]), 1e-6, "threshold");
        let test = fixture::f32s(&case["test_probabilities"]);
        let test_u = fixture::f64s(&case["test_u"]);
        for (i, (row, u)) in test.chunks_exact(k).zip(&test_u).enumerate() {
            let want = fixture::usizes(&case["test_sets"][i]);
            assert_eq!(raps_set(row, q, *u, reg), want, "set {i}");
        }
    }

    #[test]
    fn coverage_is_exact_on_exchangeable_data() {
        // Synthetic 5-class data where the true class is drawn from the probabilities
        // themselves: calibrate on 2,000 rows, measure on 20,000.
        let mut rng = SplitMix64::new(11);
        let k = 5;
        let mut make = |n: usize| {
            let mut probs = Vec::with_capacity(n * k);
            let mut truth = Vec::with_capacity(n);
            for _ in 0..n {
                let raw: Vec<f64> = (0..k).map(|_| (3.0 * rng.unit()).exp()).collect();
                let sum: f64 = raw.iter().sum();
                let row: Vec<f32> = raw.iter().map(|r| (r / sum) as f32).collect();
                let mut draw = rng.unit();
                let mut t = k - 1;
                for (c, p) in row.iter().enumerate() {
                    draw -= f64::from(*p);
                    if draw < 0.0 {
                        t = c;
                        break;
                    }
                }
                probs.extend(row);
                truth.push(t);
            }
            (probs, truth)
        };
        let (cal, cal_truth) = make(2000);
        let (test, test_truth) = make(20_000);
        let q = raps_threshold(&cal, k, &cal_truth, &calibration_draws(2000, 1), 0.9, APS).unwrap();
        let mut covered = 0;
        let mut size = 0;
        for (i, (row, t)) in test.chunks_exact(k).zip(&test_truth).enumerate() {
            let set = raps_set(row, q, uniform_for(&format!("id-{i}"), 5), APS);
            size += set.len();
            covered += usize::from(set.contains(t));
        }
        let coverage = covered as f64 / test_truth.len() as f64;
        assert!((coverage - 0.9).abs() < 0.015, "{coverage}");
        assert!(
            size > test_truth.len(),
            "sets are larger than one class on average"
        );
    }

    #[test]
    fn degenerate_input_has_no_threshold() {
        let p = [0.7f32, 0.3];
        assert!(
            raps_threshold(&p, 2, &[0], &[0.5], 0.9, APS).is_none(),
            "n too small"
        );
        assert!(raps_threshold(&p, 2, &[2], &[0.5], 0.5, APS).is_none());
        assert!(raps_threshold(&p, 2, &[0], &[0.5], 1.0, APS).is_none());
        assert!(raps_score(&p, 5, 0.5, APS).is_nan());
        assert_eq!(raps_set(&p, 0.8, 0.5, APS), vec![0]);
        assert_eq!(raps_set(&p, 2.0, 0.5, APS), vec![0, 1]);
        assert!(raps_set(&p, 0.1, 0.5, APS).is_empty());
        let reg = Regularization {
            penalty: 1.0,
            free_ranks: 1,
        };
        assert!((raps_score(&p, 1, 0.5, reg) - (0.7 + 0.5 * 1.3)).abs() < 1e-7);
        assert_eq!(
            raps_set(&p, 1.3, 0.5, reg),
            vec![0],
            "the penalty keeps class 1 out"
        );
        // Inclusion over the draw: class 1 is in when 0.7 + 1.3 u <= 1.3, u <= 0.6/1.3.
        let want = (1.3 - 0.7f32 as f64) / (0.3f32 as f64 + 1.0);
        assert!((raps_inclusion(&p, 1, 1.3, reg) - want).abs() < 1e-12);
        assert_eq!(raps_inclusion(&p, 0, 1.3, reg), 1.0);
        assert_eq!(raps_inclusion(&p, 1, 0.1, reg), 0.0);
        assert!(raps_inclusion(&p, 2, 0.1, reg).is_nan());
        let mut rng = SplitMix64::new(3);
        let hits = (0..100_000)
            .filter(|_| raps_set(&p, 1.3, rng.unit(), reg).contains(&1))
            .count();
        assert!((hits as f64 / 1e5 - want).abs() < 0.01, "{hits}");
        assert_eq!(uniform_for("a", 1), uniform_for("a", 1));
        assert_ne!(uniform_for("a", 1), uniform_for("b", 1));
    }
}
