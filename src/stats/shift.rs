//! Prediction and input shift between a reference and a window: chi-square goodness of fit on
//! class counts, the population stability index over class or decile bins, the Jensen–Shannon
//! distance and the normalised Wasserstein distance.

use statrs::distribution::{ChiSquared, ContinuousCDF};

use super::TestResult;
use super::population_std;

/// Proportions below this are raised to it before PSI's logarithm (DESIGN.md), and reference
/// ratios below it are raised to it before chi-square's expected counts.
pub const PROPORTION_FLOOR: f64 = 1e-4;

/// Chi-square goodness of fit of observed class `counts` against `reference_ratios`
/// (`scipy.stats.chisquare(f_obs, f_exp)` on the expected counts below).
///
/// Expected counts: the ratios are normalised to sum 1; a class whose ratio and count are both
/// 0 is dropped (it carries no information); every other class's ratio is floored at
/// [`PROPORTION_FLOOR`] (so a class the reference never saw but the window did has a small,
/// positive expectation instead of an infinite statistic) and the floored ratios are
/// renormalised to sum 1; expected_i = ratio_i × Σ counts. Statistic Σ (o − e)²/e over the
/// kept classes, p-value [`chi2_sf`] with (kept classes − 1) degrees of freedom.
///
/// Fewer than two kept classes: statistic 0, p-value 1 (nothing can differ). Undefined (NaN)
/// when the lengths differ, a value is negative or not finite, or either total is 0.
///
/// Not statrs's `stats_tests::chisquare`: it takes integer counts, has no rule for a class the
/// reference never saw, and its p-value is 1 − cdf, which is 0 below about 1e-16 — on the
/// fixture's "shifted mix" case (`chi_square_matches_scipy`) it returns 0 where scipy gives
/// 1.358e-101 (relative error 1 against the test's 1e-6). The distribution is statrs's, through
/// [`chi2_sf`].
pub fn chi_square(counts: &[f64], reference_ratios: &[f64]) -> TestResult {
    if counts.len() != reference_ratios.len()
        || counts
            .iter()
            .chain(reference_ratios)
            .any(|v| !v.is_finite() || *v < 0.0)
    {
        return TestResult::UNDEFINED;
    }
    let total: f64 = counts.iter().sum();
    let ratio_total: f64 = reference_ratios.iter().sum();
    if total <= 0.0 || ratio_total <= 0.0 {
        return TestResult::UNDEFINED;
    }
    let kept: Vec<(f64, f64)> = counts
        .iter()
        .zip(reference_ratios)
        .filter(|&(&o, &r)| o > 0.0 || r > 0.0)
        .map(|(&o, &r)| (o, (r / ratio_total).max(PROPORTION_FLOOR)))
        .collect();
    if kept.len() < 2 {
        return TestResult {
            statistic: 0.0,
            p_value: 1.0,
        };
    }
    let floored_total: f64 = kept.iter().map(|&(_, r)| r).sum();
    let statistic: f64 = kept
        .iter()
        .map(|&(o, r)| {
            let e = r / floored_total * total;
            (o - e) * (o - e) / e
        })
        .sum();
    TestResult {
        statistic,
        p_value: chi2_sf(statistic, (kept.len() - 1) as f64),
    }
}

/// Survival function of the chi-square distribution with `dof` degrees of freedom,
/// P(X ≥ x) = Q(dof/2, x/2) (as `scipy.stats.chi2.sf` / `scipy.special.chdtrc`): statrs's
/// [`ChiSquared`], whose regularized upper incomplete gamma function keeps its relative accuracy
/// in the tail (at most 1.3e-12 from scipy on the fixture's grid, dof 1 to 2000, p from 1 down
/// to 1e-50; the worst at dof 2000, p = 1e-20).
///
/// `dof` may be fractional. NaN when `dof ≤ 0`, `dof` is not finite or either argument is NaN
/// (statrs accepts an infinite `dof` and then panics inside `sf`); 1 for x ≤ 0; 0 for x = +∞.
pub fn chi2_sf(x: f64, dof: f64) -> f64 {
    if x.is_nan() || !dof.is_finite() {
        return f64::NAN;
    }
    ChiSquared::new(dof).map_or(f64::NAN, |chi2| chi2.sf(x))
}

/// Population stability index Σ_i (w_i − r_i) ln(w_i / r_i), with every proportion first
/// raised to at least [`PROPORTION_FLOOR`] (no renormalisation). The inputs are the
/// proportions of the same bins (classes, or [`decile_edges`] bins) in the reference and the
/// window. 0 for two empty slices; NaN when the lengths differ or a proportion is NaN.
pub fn psi(reference_proportions: &[f64], window_proportions: &[f64]) -> f64 {
    if reference_proportions.len() != window_proportions.len()
        || reference_proportions
            .iter()
            .chain(window_proportions)
            .any(|v| v.is_nan())
    {
        return f64::NAN;
    }
    reference_proportions
        .iter()
        .zip(window_proportions)
        .map(|(&r, &w)| {
            let (r, w) = (r.max(PROPORTION_FLOOR), w.max(PROPORTION_FLOOR));
            (w - r) * (w / r).ln()
        })
        .sum()
}

/// Inner decile edges of a reference sample: the quantiles 0.1, 0.2, …, 0.9 with numpy's
/// default (linear) interpolation — with the sorted sample x and h = (n − 1) q, the value
/// x[⌊h⌋] + (h − ⌊h⌋)(x[⌊h⌋+1] − x[⌊h⌋]), evaluated as `numpy.quantile` does — and then with
/// repeated edges removed (`numpy.unique`), so the edges are strictly increasing: ties in the
/// reference give fewer, wider bins rather than empty ones. NaN and infinite values are
/// ignored; a sample without finite values has no edges (a single bin).
///
/// Not statrs's `OrderStatistics::quantile`, which is R's type 8 (h = (n + 1/3) q + 1/3), not
/// numpy's linear type 7: on the fixture (`deciles_and_bins_match_numpy`, tolerance 1e-12) its
/// edges are off by 1.5e-3 relative on "continuous" and by 1.9 on "tiny reference".
pub fn decile_edges(reference: &[f64]) -> Vec<f64> {
    let mut sorted: Vec<f64> = reference
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    if sorted.is_empty() {
        return Vec::new();
    }
    sorted.sort_unstable_by(f64::total_cmp);
    let last = sorted.len() - 1;
    let mut edges: Vec<f64> = Vec::with_capacity(9);
    for i in 1..10 {
        let q = f64::from(i) / 10.0;
        let h = last as f64 * q;
        let below = h.floor();
        let edge = if h >= last as f64 {
            sorted[last]
        } else {
            let lo = below as usize;
            lerp(sorted[lo], sorted[lo + 1], h - below)
        };
        if edges.last() != Some(&edge) {
            edges.push(edge);
        }
    }
    edges
}

/// numpy's `_lerp`: a + (b − a)·t, or b − (b − a)·(1 − t) when t ≥ 1/2 (exact at both ends).
fn lerp(a: f64, b: f64, t: f64) -> f64 {
    let diff = b - a;
    if t >= 0.5 {
        b - diff * (1.0 - t)
    } else {
        a + diff * t
    }
}

/// Proportions of `values` in the bins (−∞, e₁], (e₁, e₂], …, (e_k, +∞) of the ascending
/// `edges` (k + 1 bins; a value equal to an edge belongs to the bin the edge closes). NaN
/// values are ignored; when no value is left every proportion is NaN.
pub fn bin_proportions(values: &[f64], edges: &[f64]) -> Vec<f64> {
    let mut counts = vec![0.0; edges.len() + 1];
    for &v in values {
        if !v.is_nan() {
            counts[edges.partition_point(|&e| e < v)] += 1.0;
        }
    }
    proportions(&counts)
}

/// `counts / Σ counts`. Every proportion is NaN when the total is 0 or a count is negative or
/// not finite.
pub fn proportions(counts: &[f64]) -> Vec<f64> {
    let total: f64 = counts.iter().sum();
    if total <= 0.0 || counts.iter().any(|c| !c.is_finite() || *c < 0.0) {
        return vec![f64::NAN; counts.len()];
    }
    counts.iter().map(|c| c / total).collect()
}

/// Jensen–Shannon distance with the natural logarithm: √JS where
/// JS = ½ KL(p ‖ m) + ½ KL(q ‖ m), m = (p + q)/2, after normalising p and q to sum 1 and with
/// 0 ln 0 = 0 — `scipy.spatial.distance.jensenshannon(p, q)`. In [0, √ln 2]. NaN when the
/// lengths differ or are 0, a weight is negative or not finite, or a vector sums to 0.
pub fn js_distance(p: &[f64], q: &[f64]) -> f64 {
    if p.len() != q.len() || p.is_empty() || p.iter().chain(q).any(|v| !v.is_finite() || *v < 0.0) {
        return f64::NAN;
    }
    let (p_total, q_total): (f64, f64) = (p.iter().sum(), q.iter().sum());
    if p_total <= 0.0 || q_total <= 0.0 {
        return f64::NAN;
    }
    let relative_entropy = |a: f64, m: f64| if a > 0.0 { a * (a / m).ln() } else { 0.0 };
    let divergence: f64 = p
        .iter()
        .zip(q)
        .map(|(&pi, &qi)| {
            let (pi, qi) = (pi / p_total, qi / q_total);
            let m = (pi + qi) / 2.0;
            relative_entropy(pi, m) + relative_entropy(qi, m)
        })
        .sum();
    // Rounding can leave a divergence of −1e-17 for identical inputs.
    (divergence / 2.0).max(0.0).sqrt()
}

/// Wasserstein-1 distance between the empirical distributions of two samples,
/// ∫ |F_u(x) − F_v(x)| dx (`scipy.stats.wasserstein_distance(u, v)`). NaN when a sample is
/// empty or holds a NaN.
pub fn wasserstein_distance(u: &[f64], v: &[f64]) -> f64 {
    if u.is_empty() || v.is_empty() || u.iter().chain(v).any(|x| x.is_nan()) {
        return f64::NAN;
    }
    let mut u = u.to_vec();
    let mut v = v.to_vec();
    u.sort_unstable_by(f64::total_cmp);
    v.sort_unstable_by(f64::total_cmp);
    let (nu, nv) = (u.len() as f64, v.len() as f64);
    // Walk the merged sorted values; between consecutive values both CDFs are constant.
    let (mut i, mut j) = (0usize, 0usize);
    let mut total = 0.0;
    let mut previous: Option<f64> = None;
    while i < u.len() || j < v.len() {
        let x = match (u.get(i), v.get(j)) {
            (Some(&a), Some(&b)) => a.min(b),
            (Some(&a), None) => a,
            (None, Some(&b)) => b,
            (None, None) => break,
        };
        if let Some(p) = previous {
            total += (i as f64 / nu - j as f64 / nv).abs() * (x - p);
        }
        while i < u.len() && u[i] <= x {
            i += 1;
        }
        while j < v.len() && v[j] <= x {
            j += 1;
        }
        previous = Some(x);
    }
    total
}

/// Normalised effect size of a shift: [`wasserstein_distance`]`(reference, window)` divided by
/// the reference's population standard deviation (`numpy.std`, ddof = 0). When the reference
/// is constant: 0 if the distance is 0, +∞ otherwise. NaN when a sample is empty or holds a
/// NaN.
pub fn wasserstein_normalized(reference: &[f64], window: &[f64]) -> f64 {
    let distance = wasserstein_distance(reference, window);
    if distance.is_nan() {
        return f64::NAN;
    }
    let std = population_std(reference);
    if std > 0.0 {
        distance / std
    } else if distance == 0.0 {
        0.0
    } else {
        f64::INFINITY
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture;
    use super::*;

    #[test]
    fn chi2_sf_matches_scipy() {
        let fixture = fixture::load();
        let cases = fixture["chi2_sf"].as_array().unwrap();
        assert!(cases.len() > 50);
        let mut worst = 0f64;
        for case in cases {
            let x = fixture::number(&case["x"]);
            let dof = fixture::number(&case["dof"]);
            let want = fixture::number(&case["sf"]);
            let got = chi2_sf(x, dof);
            worst = worst.max(fixture::relative_error(got, want));
            fixture::assert_close(got, want, 1e-10, &format!("chi2_sf({x}, {dof})"));
        }
        eprintln!("chi2_sf: worst relative error against scipy {worst:e}");
    }

    #[test]
    fn chi2_sf_degenerate_arguments() {
        assert_eq!(chi2_sf(0.0, 3.0), 1.0);
        assert_eq!(chi2_sf(-1.0, 3.0), 1.0);
        assert_eq!(chi2_sf(f64::INFINITY, 3.0), 0.0);
        assert!(chi2_sf(1.0, 0.0).is_nan());
        assert!(chi2_sf(1.0, -2.0).is_nan());
        assert!(chi2_sf(f64::NAN, 2.0).is_nan());
        assert!(chi2_sf(1.0, f64::NAN).is_nan());
        assert!(chi2_sf(1.0, f64::INFINITY).is_nan());
        // dof = 2 is the exponential distribution: sf = e^(−x/2)
        for &x in &[0.1, 1.0, 7.5, 100.0, 1400.0] {
            fixture::assert_close(chi2_sf(x, 2.0), (-x / 2.0).exp(), 1e-13, "dof 2");
        }
    }

    #[test]
    fn chi_square_matches_scipy() {
        let fixture = fixture::load();
        for case in fixture["chi_square"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let counts = fixture::f64s(&case["counts"]);
            let ratios = fixture::f64s(&case["reference_ratios"]);
            let result = chi_square(&counts, &ratios);
            fixture::assert_close(
                result.statistic,
                fixture::number(&case["statistic"]),
                1e-9,
                &format!("{name}: statistic"),
            );
            fixture::assert_close(
                result.p_value,
                fixture::number(&case["p_value"]),
                1e-6,
                &format!("{name}: p-value"),
            );
        }
    }

    #[test]
    fn chi_square_of_the_reference_mix_is_zero() {
        let ratios = [0.5, 0.25, 0.125, 0.125];
        let counts = [400.0, 200.0, 100.0, 100.0];
        let result = chi_square(&counts, &ratios);
        assert!(result.statistic.abs() < 1e-12);
        assert!((result.p_value - 1.0).abs() < 1e-12);
        // Unnormalised ratios mean the same mix.
        assert_eq!(
            chi_square(&counts, &[4.0, 2.0, 1.0, 1.0]).statistic,
            result.statistic
        );
    }

    #[test]
    fn chi_square_degenerate_inputs() {
        assert!(!chi_square(&[1.0, 2.0], &[0.5]).is_defined());
        assert!(!chi_square(&[0.0, 0.0], &[0.5, 0.5]).is_defined());
        assert!(!chi_square(&[1.0, 2.0], &[0.0, 0.0]).is_defined());
        assert!(!chi_square(&[1.0, -2.0], &[0.5, 0.5]).is_defined());
        assert!(!chi_square(&[1.0, f64::NAN], &[0.5, 0.5]).is_defined());
        assert!(!chi_square(&[], &[]).is_defined());
        let single = chi_square(&[10.0, 0.0], &[1.0, 0.0]);
        assert_eq!((single.statistic, single.p_value), (0.0, 1.0));
        // A class unseen in the reference but present in the window is finite and significant.
        let unseen = chi_square(&[500.0, 500.0, 50.0], &[0.5, 0.5, 0.0]);
        assert!(unseen.statistic.is_finite() && unseen.statistic > 1000.0);
        assert!(unseen.p_value < 1e-10);
    }

    #[test]
    fn psi_matches_numpy() {
        let fixture = fixture::load();
        for case in fixture["psi"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let got = psi(
                &fixture::f64s(&case["reference"]),
                &fixture::f64s(&case["window"]),
            );
            fixture::assert_close(got, fixture::number(&case["psi"]), 1e-9, name);
        }
    }

    #[test]
    fn psi_properties() {
        let p = [0.1, 0.2, 0.3, 0.4, 0.0];
        assert_eq!(psi(&p, &p), 0.0);
        let q = [0.4, 0.3, 0.2, 0.1, 0.0];
        assert!(psi(&p, &q) > 0.0);
        fixture::assert_close(psi(&p, &q), psi(&q, &p), 1e-14, "symmetric");
        assert_eq!(psi(&[], &[]), 0.0);
        assert!(psi(&p, &q[..3]).is_nan());
        assert!(psi(&[f64::NAN, 1.0], &[0.5, 0.5]).is_nan());
    }

    #[track_caller]
    fn assert_all_close(got: &[f64], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: number of bins");
        for (g, w) in got.iter().zip(want) {
            fixture::assert_close(*g, *w, 1e-12, what);
        }
    }

    #[test]
    fn deciles_and_bins_match_numpy() {
        let fixture = fixture::load();
        for case in fixture["deciles"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let reference = fixture::f64s(&case["reference"]);
            let edges = decile_edges(&reference);
            let want = fixture::f64s(&case["edges"]);
            assert_eq!(edges.len(), want.len(), "{name}: number of edges");
            for (got, want) in edges.iter().zip(&want) {
                fixture::assert_close(*got, *want, 1e-12, &format!("{name}: edge"));
            }
            // Bin the window with numpy's edges, so the check is about the (lo, hi] rule.
            let got = bin_proportions(&fixture::f64s(&case["values"]), &want);
            assert_all_close(&got, &fixture::f64s(&case["proportions"]), name);
            let reference_bins = bin_proportions(&reference, &want);
            assert_all_close(
                &reference_bins,
                &fixture::f64s(&case["reference_proportions"]),
                name,
            );
            let got = psi(
                &reference_bins,
                &bin_proportions(&fixture::f64s(&case["values"]), &want),
            );
            fixture::assert_close(got, fixture::number(&case["psi"]), 1e-9, name);
        }
    }

    #[test]
    fn decile_edges_of_degenerate_samples() {
        assert!(decile_edges(&[]).is_empty());
        assert!(decile_edges(&[f64::NAN, f64::INFINITY]).is_empty());
        assert_eq!(decile_edges(&[f64::NEG_INFINITY, 2.0, f64::NAN]), vec![2.0]);
        assert_eq!(decile_edges(&[3.0; 100]), vec![3.0]);
        assert_eq!(decile_edges(&[7.0]), vec![7.0]);
        // A constant reference puts everything equal to it in the first bin.
        assert_eq!(
            bin_proportions(&[3.0, 3.0, 4.0, 2.0], &[3.0]),
            vec![0.75, 0.25]
        );
        // Ten equally spaced values: the deciles fall between them.
        let reference: Vec<f64> = (0..11).map(f64::from).collect();
        assert_eq!(
            decile_edges(&reference),
            (1..10).map(f64::from).collect::<Vec<_>>()
        );
        let bins = bin_proportions(&reference, &decile_edges(&reference));
        assert_eq!(bins.len(), 10);
        fixture::assert_close(bins.iter().sum::<f64>(), 1.0, 1e-15, "sum");
        assert!(bin_proportions(&[], &[1.0]).iter().all(|p| p.is_nan()));
        assert!(
            bin_proportions(&[f64::NAN], &[1.0])
                .iter()
                .all(|p| p.is_nan())
        );
    }

    #[test]
    fn proportions_of_counts() {
        assert_eq!(proportions(&[1.0, 3.0]), vec![0.25, 0.75]);
        assert!(proportions(&[0.0, 0.0]).iter().all(|p| p.is_nan()));
        assert!(proportions(&[1.0, -1.0, 4.0]).iter().all(|p| p.is_nan()));
        assert!(proportions(&[]).is_empty());
    }

    #[test]
    fn js_distance_matches_scipy() {
        let fixture = fixture::load();
        for case in fixture["js_distance"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let p = fixture::f64s(&case["p"]);
            let q = fixture::f64s(&case["q"]);
            let want = fixture::number(&case["distance"]);
            fixture::assert_near(js_distance(&p, &q), want, 1e-9, 1e-12, name);
            // Symmetric.
            fixture::assert_near(js_distance(&q, &p), want, 1e-9, 1e-12, name);
        }
    }

    #[test]
    fn js_distance_properties() {
        let p = [0.2, 0.3, 0.5];
        assert_eq!(js_distance(&p, &p), 0.0);
        assert_eq!(js_distance(&p, &[2.0, 3.0, 5.0]), 0.0); // normalised first
        // Disjoint supports reach the maximum √ln 2.
        fixture::assert_close(
            js_distance(&[1.0, 0.0], &[0.0, 1.0]),
            std::f64::consts::LN_2.sqrt(),
            1e-15,
            "disjoint",
        );
        assert!(js_distance(&[0.0, 0.0], &[0.5, 0.5]).is_nan());
        assert!(js_distance(&[1.0], &[0.5, 0.5]).is_nan());
        assert!(js_distance(&[-1.0, 2.0], &[0.5, 0.5]).is_nan());
        assert!(js_distance(&[], &[]).is_nan());
    }

    #[test]
    fn wasserstein_matches_scipy() {
        let fixture = fixture::load();
        for case in fixture["wasserstein"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let reference = fixture::f64s(&case["reference"]);
            let window = fixture::f64s(&case["window"]);
            fixture::assert_near(
                wasserstein_distance(&reference, &window),
                fixture::number(&case["distance"]),
                1e-9,
                1e-15,
                name,
            );
            fixture::assert_near(
                wasserstein_normalized(&reference, &window),
                fixture::number(&case["normalized"]),
                1e-9,
                1e-15,
                name,
            );
        }
    }

    #[test]
    fn wasserstein_properties() {
        let a = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(wasserstein_distance(&a, &a), 0.0);
        // A shift by c moves every quantile by c.
        let b: Vec<f64> = a.iter().map(|x| x + 2.5).collect();
        fixture::assert_close(wasserstein_distance(&a, &b), 2.5, 1e-15, "shift");
        assert_eq!(wasserstein_distance(&a, &b), wasserstein_distance(&b, &a));
        assert_eq!(wasserstein_normalized(&[1.0; 5], &[1.0; 3]), 0.0);
        assert_eq!(wasserstein_normalized(&[1.0; 5], &[2.0]), f64::INFINITY);
        assert!(wasserstein_normalized(&[], &[1.0]).is_nan());
        assert!(wasserstein_normalized(&[1.0, f64::NAN], &[1.0]).is_nan());
    }
}
