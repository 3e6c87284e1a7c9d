//! Calibration of the top-label confidence, scores of probability vectors, temperature scaling,
//! and label-free accuracy estimates (ATC, DoC).
//!
//! Conventions (DESIGN.md): ECE and MCE on the top-label confidence with equal-width bins
//! (lo, hi]; adaptive ECE with equal-mass bins; Brier is the multiclass sum over classes
//! averaged over samples (0..2); NLL uses the natural log with probabilities clipped at 1e-12.
//! NaN confidences are left out of every calibration statistic.

/// Probabilities are clipped below at this value before a logarithm (NLL, temperature).
pub const PROBABILITY_FLOOR: f64 = 1e-12;
/// The range searched by [`fit_temperature`].
pub const TEMPERATURE_RANGE: (f64, f64) = (0.05, 20.0);

/// One bin of a reliability diagram.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReliabilityBin {
    /// Lower edge (exclusive, except that the first bin also holds a confidence of 0).
    pub lo: f64,
    /// Upper edge (inclusive).
    pub hi: f64,
    /// Predictions whose confidence falls in the bin.
    pub count: usize,
    /// Fraction of the bin's predictions that are correct (NaN for an empty bin).
    pub accuracy: f64,
    /// Mean confidence of the bin's predictions (NaN for an empty bin).
    pub confidence: f64,
}

/// ln max(p, 1e-12), keeping NaN (where `f64::max` would return the floor).
fn clipped_ln(p: f32) -> f64 {
    let p = f64::from(p);
    if p.is_nan() {
        f64::NAN
    } else {
        p.max(PROBABILITY_FLOOR).ln()
    }
}

/// `(confidence, correct)` pairs without NaN confidences, or None when the lengths differ.
fn labeled_pairs<'a>(
    confidence: &'a [f64],
    correct: &'a [bool],
) -> Option<impl Iterator<Item = (f64, bool)> + 'a> {
    (confidence.len() == correct.len()).then(|| {
        confidence
            .iter()
            .copied()
            .zip(correct.iter().copied())
            .filter(|(c, _)| !c.is_nan())
    })
}

/// Index of the equal-width bin (b/bins, (b+1)/bins] holding `c`, with the edges computed as
/// `b as f64 / bins as f64`; 0 and below go to the first bin, above 1 to the last.
fn equal_width_bin(c: f64, bins: usize) -> usize {
    let edge = |b: usize| b as f64 / bins as f64;
    let guess = (c * bins as f64).ceil() - 1.0;
    let mut b = guess.clamp(0.0, (bins - 1) as f64) as usize;
    while b > 0 && c <= edge(b) {
        b -= 1;
    }
    while b + 1 < bins && c > edge(b + 1) {
        b += 1;
    }
    b
}

/// Reliability diagram: `bins` equal-width bins over [0, 1], bin b = (b/bins, (b+1)/bins]
/// (a confidence of exactly 0 goes to the first bin, anything above 1 to the last), each with
/// its count, accuracy (fraction correct) and mean confidence. Always `bins` bins; when the
/// slices' lengths differ every bin is empty.
pub fn reliability_bins(confidence: &[f64], correct: &[bool], bins: usize) -> Vec<ReliabilityBin> {
    let mut count = vec![0usize; bins];
    let mut hits = vec![0usize; bins];
    let mut confidence_sum = vec![0.0f64; bins];
    if bins > 0
        && let Some(pairs) = labeled_pairs(confidence, correct)
    {
        for (c, ok) in pairs {
            let b = equal_width_bin(c, bins);
            count[b] += 1;
            hits[b] += usize::from(ok);
            confidence_sum[b] += c;
        }
    }
    (0..bins)
        .map(|b| {
            let n = count[b] as f64;
            ReliabilityBin {
                lo: b as f64 / bins as f64,
                hi: (b + 1) as f64 / bins as f64,
                count: count[b],
                accuracy: if count[b] > 0 {
                    hits[b] as f64 / n
                } else {
                    f64::NAN
                },
                confidence: if count[b] > 0 {
                    confidence_sum[b] / n
                } else {
                    f64::NAN
                },
            }
        })
        .collect()
}

/// Σ over groups of (n_g / N) |accuracy_g − confidence_g|, skipping empty groups; NaN when
/// there are no predictions.
fn weighted_gap(groups: impl Iterator<Item = (usize, f64, f64)>) -> f64 {
    let groups: Vec<(usize, f64, f64)> = groups.filter(|g| g.0 > 0).collect();
    let total: usize = groups.iter().map(|g| g.0).sum();
    if total == 0 {
        return f64::NAN;
    }
    groups
        .iter()
        .map(|&(n, accuracy, confidence)| n as f64 / total as f64 * (accuracy - confidence).abs())
        .sum()
}

/// Expected calibration error over `bins` equal-width bins ([`reliability_bins`]):
/// Σ_b (n_b / N) |acc_b − conf_b|. DESIGN.md uses 15 bins. NaN without predictions, with
/// `bins == 0` or with slices of different lengths.
pub fn ece(confidence: &[f64], correct: &[bool], bins: usize) -> f64 {
    weighted_gap(
        reliability_bins(confidence, correct, bins)
            .into_iter()
            .map(|b| (b.count, b.accuracy, b.confidence)),
    )
}

/// Maximum calibration error: the largest |acc_b − conf_b| over the non-empty equal-width
/// bins of [`reliability_bins`]. NaN when every bin is empty.
pub fn mce(confidence: &[f64], correct: &[bool], bins: usize) -> f64 {
    reliability_bins(confidence, correct, bins)
        .into_iter()
        .filter(|b| b.count > 0)
        .map(|b| (b.accuracy - b.confidence).abs())
        .reduce(f64::max)
        .unwrap_or(f64::NAN)
}

/// Adaptive (equal-mass) ECE: the predictions sorted by confidence (ties keep their input
/// order: a stable sort) are split into `bins` consecutive groups as `numpy.array_split` does
/// — the first N mod bins groups hold ⌊N/bins⌋ + 1, the rest ⌊N/bins⌋ — and
/// Σ_g (n_g / N) |acc_g − conf_g| is taken over the non-empty groups. NaN without
/// predictions, with `bins == 0` or with slices of different lengths.
pub fn adaptive_ece(confidence: &[f64], correct: &[bool], bins: usize) -> f64 {
    let Some(pairs) = labeled_pairs(confidence, correct) else {
        return f64::NAN;
    };
    if bins == 0 {
        return f64::NAN;
    }
    let mut sorted: Vec<(f64, bool)> = pairs.collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (base, extra) = (sorted.len() / bins, sorted.len() % bins);
    let mut start = 0;
    let groups = (0..bins).map(|g| {
        let size = base + usize::from(g < extra);
        let group = &sorted[start..start + size];
        start += size;
        let n = group.len() as f64;
        let hits = group.iter().filter(|p| p.1).count() as f64;
        let confidence: f64 = group.iter().map(|p| p.0).sum();
        (group.len(), hits / n, confidence / n)
    });
    weighted_gap(groups)
}

/// Number of rows when `probs` is `labels.len()` rows of `k` and every label is below `k`.
fn scored_rows(probs: &[f32], k: usize, labels: &[usize]) -> Option<usize> {
    let ok = k > 0
        && !labels.is_empty()
        && probs.len() == k * labels.len()
        && labels.iter().all(|&y| y < k);
    ok.then_some(labels.len())
}

/// Multiclass Brier score: (1/N) Σ_i Σ_k (p_ik − [k = y_i])², in 0..2 (`probs` row-major, `k`
/// classes, one label per row). NaN when the shapes disagree, a label is out of range or there
/// are no rows.
pub fn brier(probs: &[f32], k: usize, labels: &[usize]) -> f64 {
    let Some(n) = scored_rows(probs, k, labels) else {
        return f64::NAN;
    };
    let total: f64 = probs
        .chunks_exact(k)
        .zip(labels)
        .map(|(row, &y)| {
            row.iter()
                .enumerate()
                .map(|(j, &p)| {
                    let target = if j == y { 1.0 } else { 0.0 };
                    (f64::from(p) - target).powi(2)
                })
                .sum::<f64>()
        })
        .sum();
    total / n as f64
}

/// Negative log-likelihood: −(1/N) Σ_i ln max(p_{i, y_i}, 1e-12) (natural log). NaN when the
/// shapes disagree, a label is out of range, there are no rows or a label's probability is NaN.
pub fn nll(probs: &[f32], k: usize, labels: &[usize]) -> f64 {
    let Some(n) = scored_rows(probs, k, labels) else {
        return f64::NAN;
    };
    let total: f64 = probs
        .chunks_exact(k)
        .zip(labels)
        .map(|(row, &y)| -clipped_ln(row[y]))
        .sum();
    total / n as f64
}

/// ln max(p, 1e-12) of every probability: the logits temperature scaling works on.
fn clipped_logits(probs: &[f32]) -> Vec<f64> {
    probs.iter().map(|&p| clipped_ln(p)).collect()
}

/// For β = 1/T, the derivative of the mean NLL of softmax(β z) with respect to β and its
/// second derivative: mean_i (E_i[z] − z_{i,y}) and mean_i Var_i(z), E and Var under
/// softmax(β z_i).
fn nll_slope(logits: &[f64], k: usize, labels: &[usize], beta: f64) -> (f64, f64) {
    let (mut slope, mut curvature) = (0.0, 0.0);
    for (row, &y) in logits.chunks_exact(k).zip(labels) {
        let top = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (mut weight, mut first, mut second) = (0.0, 0.0, 0.0);
        for &z in row {
            let w = (beta * (z - top)).exp();
            weight += w;
            first += w * z;
            second += w * z * z;
        }
        let expected = first / weight;
        slope += expected - row[y];
        curvature += (second / weight - expected * expected).max(0.0);
    }
    let n = labels.len() as f64;
    (slope / n, curvature / n)
}

/// Temperature scaling fitted on probabilities: with logits z = ln max(p, 1e-12), the T in
/// [0.05, 20] ([`TEMPERATURE_RANGE`]) minimising the mean NLL of softmax(z / T) against
/// `labels` (`probs` row-major, `k` classes).
///
/// The NLL is convex in β = 1/T, so the minimum is where its derivative in β changes sign;
/// that root is found by Newton's method safeguarded by bisection, to about 1e-12 relative
/// (scipy's `minimize_scalar(method="bounded")` on T reaches the same point). At a range end
/// when the minimum lies outside. Returns 1 (the identity) when the input is malformed (shapes,
/// labels, no rows, a NaN probability) or the NLL does not depend on T (every row uniform).
pub fn fit_temperature(probs: &[f32], k: usize, labels: &[usize]) -> f64 {
    if scored_rows(probs, k, labels).is_none() {
        return 1.0;
    }
    let logits = clipped_logits(probs);
    if logits.iter().any(|z| z.is_nan()) {
        return 1.0;
    }
    let flat = logits
        .chunks_exact(k)
        .all(|row| row.iter().all(|&z| z == row[0]));
    if flat {
        return 1.0;
    }
    let (t_min, t_max) = TEMPERATURE_RANGE;
    let (mut lo, mut hi) = (1.0 / t_max, 1.0 / t_min);
    if nll_slope(&logits, k, labels, lo).0 >= 0.0 {
        return t_max;
    }
    if nll_slope(&logits, k, labels, hi).0 <= 0.0 {
        return t_min;
    }
    let mut beta: f64 = 1.0;
    for _ in 0..200 {
        let (slope, curvature) = nll_slope(&logits, k, labels, beta);
        if slope == 0.0 {
            break;
        }
        if slope < 0.0 {
            lo = beta;
        } else {
            hi = beta;
        }
        let newton = beta - slope / curvature;
        let next = if curvature > 0.0 && newton > lo && newton < hi {
            newton
        } else {
            (lo * hi).sqrt()
        };
        let step = (next - beta).abs();
        beta = next;
        if step <= 1e-14 * beta || hi - lo <= 1e-14 * beta {
            break;
        }
    }
    1.0 / beta
}

/// Applies a temperature in place, row by row: p ← softmax(ln max(p, 1e-12) / t) (computed in
/// f64, stored as f32). Leaves `probs` unchanged when `k` is 0, does not divide the length, or
/// `t` is not positive and finite.
pub fn apply_temperature(probs: &mut [f32], k: usize, t: f64) {
    if k == 0 || !probs.len().is_multiple_of(k) || !(t.is_finite() && t > 0.0) {
        return;
    }
    let mut scaled = vec![0.0f64; k];
    for row in probs.chunks_exact_mut(k) {
        for (s, &p) in scaled.iter_mut().zip(row.iter()) {
            *s = clipped_ln(p) / t;
        }
        let top = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut total = 0.0;
        for s in scaled.iter_mut() {
            *s = (*s - top).exp();
            total += *s;
        }
        for (p, &s) in row.iter_mut().zip(&scaled) {
            *p = (s / total) as f32;
        }
    }
}

/// Average Thresholded Confidence threshold (Garg et al. 2022, max-confidence score) fitted on
/// labeled reference data: the t for which the fraction of reference confidences strictly
/// above t equals the reference accuracy.
///
/// Rule: with the N confidences sorted ascending and C of the predictions correct, t is the
/// (N − C)-th smallest confidence (1-based), so exactly C confidences exceed it when it is not
/// tied (fewer when it is); when every prediction is correct, t = 0 (every top-label
/// confidence, at least 1/K, exceeds it). NaN confidences are left out; NaN without
/// predictions or with slices of different lengths.
pub fn atc_threshold(confidence: &[f64], correct: &[bool]) -> f64 {
    let Some(pairs) = labeled_pairs(confidence, correct) else {
        return f64::NAN;
    };
    let (mut sorted, hits): (Vec<f64>, usize) =
        pairs.fold((Vec::new(), 0), |(mut values, hits), (c, ok)| {
            values.push(c);
            (values, hits + usize::from(ok))
        });
    if sorted.is_empty() {
        return f64::NAN;
    }
    if hits == sorted.len() {
        return 0.0;
    }
    sorted.sort_unstable_by(f64::total_cmp);
    sorted[sorted.len() - hits - 1]
}

/// ATC estimate of the window's accuracy: the fraction of window confidences strictly above
/// `threshold` ([`atc_threshold`]). NaN values are left out; NaN for an empty window or a NaN
/// threshold.
pub fn atc_estimate(threshold: f64, window_confidence: &[f64]) -> f64 {
    if threshold.is_nan() {
        return f64::NAN;
    }
    let (above, total) = window_confidence
        .iter()
        .filter(|c| !c.is_nan())
        .fold((0usize, 0usize), |(above, total), &c| {
            (above + usize::from(c > threshold), total + 1)
        });
    if total == 0 {
        return f64::NAN;
    }
    above as f64 / total as f64
}

/// Difference of Confidences estimate (Guillory et al. 2021) of the window's accuracy:
/// reference accuracy − (reference mean confidence − window mean confidence).
pub fn doc_estimate(
    reference_accuracy: f64,
    reference_mean_confidence: f64,
    window_mean_confidence: f64,
) -> f64 {
    reference_accuracy - (reference_mean_confidence - window_mean_confidence)
}

#[cfg(test)]
mod tests {
    use super::super::fixture;
    use super::*;

    #[test]
    fn calibration_matches_numpy() {
        let fixture = fixture::load();
        for case in fixture["calibration"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let confidence = fixture::f64s(&case["confidence"]);
            let correct = fixture::bools(&case["correct"]);
            let bins = fixture::count(&case["bins"]);
            fixture::assert_close(
                ece(&confidence, &correct, bins),
                fixture::number(&case["ece"]),
                1e-9,
                &format!("{name}: ece"),
            );
            fixture::assert_close(
                mce(&confidence, &correct, bins),
                fixture::number(&case["mce"]),
                1e-9,
                &format!("{name}: mce"),
            );
            fixture::assert_close(
                adaptive_ece(&confidence, &correct, bins),
                fixture::number(&case["adaptive_ece"]),
                1e-9,
                &format!("{name}: adaptive ece"),
            );
            let got = reliability_bins(&confidence, &correct, bins);
            let want = case["reliability"].as_array().unwrap();
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(want) {
                assert_eq!(g.count, fixture::count(&w["count"]), "{name}: count");
                assert_eq!(g.lo, fixture::number(&w["lo"]), "{name}: lo");
                assert_eq!(g.hi, fixture::number(&w["hi"]), "{name}: hi");
                fixture::assert_close(g.accuracy, fixture::number(&w["accuracy"]), 1e-12, name);
                fixture::assert_close(g.confidence, fixture::number(&w["confidence"]), 1e-12, name);
            }
        }
    }

    #[test]
    fn perfectly_calibrated_bins_have_zero_ece() {
        // In each bin, the fraction correct equals the (single) confidence value.
        let mut confidence = Vec::new();
        let mut correct = Vec::new();
        for (c, hits) in [(0.2, 2), (0.5, 5), (0.9, 9), (1.0, 10)] {
            for i in 0..10 {
                confidence.push(c);
                correct.push(i < hits);
            }
        }
        assert!(ece(&confidence, &correct, 15).abs() < 1e-12);
        assert!(mce(&confidence, &correct, 15).abs() < 1e-12);
        assert!(adaptive_ece(&confidence, &correct, 4).abs() < 1e-12);
        // Always confident and always wrong: ECE = MCE = the confidence.
        fixture::assert_close(ece(&[0.9; 7], &[false; 7], 15), 0.9, 1e-15, "ece");
        fixture::assert_close(mce(&[0.9; 7], &[false; 7], 15), 0.9, 1e-15, "mce");
    }

    #[test]
    fn bin_edges_are_closed_on_the_right() {
        let bins = 15;
        for b in 0..bins {
            let hi = (b + 1) as f64 / bins as f64;
            assert_eq!(equal_width_bin(hi, bins), b, "upper edge of bin {b}");
            if b + 1 < bins {
                assert_eq!(equal_width_bin(hi.next_up(), bins), b + 1);
            }
        }
        assert_eq!(equal_width_bin(0.0, bins), 0);
        assert_eq!(equal_width_bin(-0.5, bins), 0);
        assert_eq!(equal_width_bin(1.5, bins), bins - 1);
        assert_eq!(equal_width_bin(f64::INFINITY, bins), bins - 1);
    }

    #[test]
    fn calibration_of_degenerate_input() {
        assert!(ece(&[], &[], 15).is_nan());
        assert!(ece(&[0.5], &[true, false], 15).is_nan());
        assert!(ece(&[0.5], &[true], 0).is_nan());
        assert!(mce(&[], &[], 15).is_nan());
        assert!(adaptive_ece(&[], &[], 15).is_nan());
        assert!(adaptive_ece(&[0.5], &[true], 0).is_nan());
        assert!(ece(&[f64::NAN], &[true], 15).is_nan());
        assert_eq!(
            ece(&[f64::NAN, 0.8], &[true, true], 15),
            ece(&[0.8], &[true], 15)
        );
        assert!(reliability_bins(&[0.5], &[true], 0).is_empty());
        let bins = reliability_bins(&[0.5, 0.6], &[true], 15);
        assert_eq!(bins.len(), 15);
        assert!(bins.iter().all(|b| b.count == 0 && b.accuracy.is_nan()));
        // Fewer predictions than bins: adaptive ECE skips the empty groups.
        assert_eq!(
            adaptive_ece(&[0.9, 0.7], &[true, false], 15),
            (0.1 + 0.7) / 2.0
        );
    }

    #[test]
    fn scores_match_numpy_and_scikit_learn() {
        let fixture = fixture::load();
        let case = &fixture["scores"];
        let k = fixture::count(&case["k"]);
        let probs = fixture::f32s(&case["probs"]);
        let labels = fixture::usizes(&case["labels"]);
        fixture::assert_close(
            brier(&probs, k, &labels),
            fixture::number(&case["brier"]),
            1e-9,
            "brier",
        );
        fixture::assert_close(
            nll(&probs, k, &labels),
            fixture::number(&case["nll"]),
            1e-9,
            "nll",
        );
        // Binary: the multiclass Brier is twice scikit-learn's binary brier_score_loss.
        let binary = &fixture["scores_binary"];
        let probs = fixture::f32s(&binary["probs"]);
        let labels = fixture::usizes(&binary["labels"]);
        fixture::assert_close(
            brier(&probs, 2, &labels),
            fixture::number(&binary["brier"]),
            1e-9,
            "binary brier",
        );
        fixture::assert_close(
            nll(&probs, 2, &labels),
            fixture::number(&binary["nll"]),
            1e-9,
            "binary nll",
        );
    }

    #[test]
    fn scores_of_degenerate_input() {
        let perfect = [1.0f32, 0.0, 0.0, 1.0];
        assert_eq!(brier(&perfect, 2, &[0, 1]), 0.0);
        assert_eq!(brier(&perfect, 2, &[1, 0]), 2.0);
        assert_eq!(nll(&perfect, 2, &[0, 1]), 0.0);
        fixture::assert_close(
            nll(&perfect, 2, &[1, 0]),
            -(1e-12f64).ln(),
            1e-15,
            "clipped",
        );
        assert!(brier(&perfect, 2, &[0]).is_nan());
        assert!(brier(&perfect, 2, &[0, 2]).is_nan());
        assert!(brier(&[], 2, &[]).is_nan());
        assert!(brier(&perfect, 0, &[0, 1]).is_nan());
        assert!(nll(&perfect, 3, &[0]).is_nan());
        assert!(nll(&[f32::NAN, 1.0], 2, &[0]).is_nan());
        assert!(brier(&[f32::NAN, 1.0], 2, &[0]).is_nan());
    }

    #[test]
    fn temperature_matches_scipy() {
        let fixture = fixture::load();
        let case = &fixture["temperature"];
        let k = fixture::count(&case["k"]);
        let probs = fixture::f32s(&case["probs"]);
        let labels = fixture::usizes(&case["labels"]);
        let want = fixture::number(&case["temperature"]);
        let t = fit_temperature(&probs, k, &labels);
        fixture::assert_close(t, want, 1e-6, "temperature");
        assert!(t > 1.0, "the fixture's model is overconfident");
        let mut scaled = probs.clone();
        apply_temperature(&mut scaled, k, want);
        let expected = fixture::f64s(&case["scaled_probs"]);
        assert_eq!(scaled.len(), expected.len());
        for (got, want) in scaled.iter().zip(&expected) {
            fixture::assert_near(f64::from(*got), *want, 1e-6, 1e-12, "scaled probability");
        }
        fixture::assert_close(
            nll(&scaled, k, &labels),
            fixture::number(&case["nll_after"]),
            1e-6,
            "nll after scaling",
        );
        assert!(nll(&scaled, k, &labels) < nll(&probs, k, &labels));
    }

    #[test]
    fn temperature_edge_cases() {
        // Malformed input or nothing to fit: the identity.
        assert_eq!(fit_temperature(&[], 3, &[]), 1.0);
        assert_eq!(fit_temperature(&[0.5, 0.5], 3, &[0]), 1.0);
        assert_eq!(fit_temperature(&[0.5, 0.5, 0.5, 0.5], 2, &[0, 1]), 1.0);
        assert_eq!(fit_temperature(&[f32::NAN, 0.5, 0.9, 0.1], 2, &[0, 1]), 1.0);
        // Confident and always right: as sharp as allowed.
        let sharp = [0.9f32, 0.1, 0.2, 0.8];
        assert_eq!(fit_temperature(&sharp, 2, &[0, 1]), TEMPERATURE_RANGE.0);
        // Confident and always wrong: as flat as allowed.
        assert_eq!(fit_temperature(&sharp, 2, &[1, 0]), TEMPERATURE_RANGE.1);
        // Applying T = 1 keeps a normalised vector; invalid T leaves it alone.
        let mut p = [0.7f32, 0.2, 0.1];
        apply_temperature(&mut p, 3, 1.0);
        for (got, want) in p.iter().zip([0.7f32, 0.2, 0.1]) {
            assert!((got - want).abs() < 1e-6);
        }
        let before = p;
        apply_temperature(&mut p, 3, 0.0);
        apply_temperature(&mut p, 3, f64::NAN);
        apply_temperature(&mut p, 2, 2.0);
        assert_eq!(p, before);
        // A higher temperature flattens.
        apply_temperature(&mut p, 3, 4.0);
        assert!(p[0] < 0.7 && p[2] > 0.1);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn atc_and_doc_match_numpy() {
        let fixture = fixture::load();
        let case = &fixture["atc"];
        let confidence = fixture::f64s(&case["confidence"]);
        let correct = fixture::bools(&case["correct"]);
        let t = atc_threshold(&confidence, &correct);
        assert_eq!(t, fixture::number(&case["threshold"]));
        let window = fixture::f64s(&case["window_confidence"]);
        fixture::assert_close(
            atc_estimate(t, &window),
            fixture::number(&case["estimate"]),
            1e-12,
            "atc",
        );
        // On its own reference data the estimate is the reference accuracy when untied.
        let accuracy = correct.iter().filter(|&&c| c).count() as f64 / correct.len() as f64;
        fixture::assert_close(atc_estimate(t, &confidence), accuracy, 1e-12, "self");
        let doc = doc_estimate(
            fixture::number(&case["reference_accuracy"]),
            fixture::number(&case["reference_mean_confidence"]),
            fixture::number(&case["window_mean_confidence"]),
        );
        fixture::assert_close(doc, fixture::number(&case["doc"]), 1e-12, "doc");
    }

    #[test]
    fn atc_edge_cases() {
        assert_eq!(atc_threshold(&[0.6, 0.9, 0.8], &[true, true, true]), 0.0);
        assert_eq!(atc_threshold(&[0.6, 0.9, 0.8], &[false, false, false]), 0.9);
        assert_eq!(
            atc_threshold(&[0.6, 0.9, 0.8, 0.7], &[true, false, true, false]),
            0.7
        );
        assert!(atc_threshold(&[], &[]).is_nan());
        assert!(atc_threshold(&[0.5], &[true, false]).is_nan());
        assert!(atc_estimate(0.5, &[]).is_nan());
        assert!(atc_estimate(f64::NAN, &[0.7]).is_nan());
        assert_eq!(atc_estimate(0.5, &[0.4, 0.5, 0.6, f64::NAN]), 1.0 / 3.0);
        assert_eq!(doc_estimate(0.9, 0.95, 0.85), 0.9 - (0.95 - 0.85));
    }
}
