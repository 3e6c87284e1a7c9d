//! Label-free accuracy and class-mix estimates over a window of probability vectors: the
//! nuclear-norm score (Deng et al. 2023), confidence optimal transport (COT, Lu et al. 2023),
//! black-box shift estimation (BBSE, Lipton et al. 2018), a Kolmogorov–Smirnov test against a
//! re-weighted reference, and the straight-line fit the estimators are calibrated with.
//!
//! Pure: functions of slices. Each returns None where its input does not define it (its
//! documentation says when); none panics. Checked against numpy, scipy and scikit-learn on
//! `tests/data/estimate_fixture.json`, written by `tests/data/make_estimate_fixture.py`.

use super::{TestResult, kolmogorov_sf};

/// Nuclear norm of the n×k prediction matrix (row-major `probs`, n = `probs.len() / k`) over
/// √(n · min(n, k)) (Deng et al. 2023): in [0, 1] for probability rows, near 1 when the
/// predictions are confident and spread over the classes, lower when they are uncertain or
/// collapse onto few classes.
///
/// The singular values come from a Householder QR of the taller orientation followed by a
/// one-sided Jacobi SVD of the small triangular factor (O(n k²), accurate to a few ulp of the
/// largest singular value, as `numpy.linalg.norm(P, "nuc")`).
/// None when n == 0, k == 0, `probs.len() != n * k` or a value is not finite.
pub fn nuclear_norm_score(probs: &[f32], k: usize) -> Option<f64> {
    if k == 0 || probs.is_empty() || !probs.len().is_multiple_of(k) {
        return None;
    }
    if probs.iter().any(|p| !p.is_finite()) {
        return None;
    }
    let n = probs.len() / k;
    // Column-major m×c with m ≥ c: P itself, or Pᵀ when it is wide (same singular values).
    let (m, c) = (n.max(k), n.min(k));
    let mut a = vec![0.0f64; m * c];
    for row in 0..n {
        for class in 0..k {
            let value = f64::from(probs[row * k + class]);
            if n >= k {
                a[class * m + row] = value;
            } else {
                a[row * m + class] = value;
            }
        }
    }
    let mut r = householder_r(&mut a, m, c);
    let singular = jacobi_svd(&mut r, c, c, None);
    let nuclear: f64 = singular.iter().sum();
    Some(nuclear / ((n * c) as f64).sqrt())
}

/// The upper-triangular factor R (c×c, column-major) of the QR decomposition of the
/// column-major m×c matrix `a` (m ≥ c) by Householder reflections; `a` is overwritten.
fn householder_r(a: &mut [f64], m: usize, c: usize) -> Vec<f64> {
    let mut v = vec![0.0; m];
    for j in 0..c {
        let column = &a[j * m + j..(j + 1) * m];
        let norm = column.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 {
            continue;
        }
        let alpha = if column[0] > 0.0 { -norm } else { norm };
        let len = m - j;
        v[..len].copy_from_slice(column);
        v[0] -= alpha;
        let v_norm2: f64 = v[..len].iter().map(|x| x * x).sum();
        a[j * m + j] = alpha;
        a[j * m + j + 1..(j + 1) * m].fill(0.0);
        if v_norm2 == 0.0 {
            continue;
        }
        for l in j + 1..c {
            let target = &mut a[l * m + j..(l + 1) * m];
            let s: f64 = v[..len].iter().zip(target.iter()).map(|(x, y)| x * y).sum();
            let scale = 2.0 * s / v_norm2;
            for (t, x) in target.iter_mut().zip(&v[..len]) {
                *t -= scale * x;
            }
        }
    }
    let mut r = vec![0.0; c * c];
    for col in 0..c {
        for row in 0..=col {
            r[col * c + row] = a[col * m + row];
        }
    }
    r
}

/// One-sided Jacobi SVD (Hestenes) of the column-major m×c matrix `a`: rotates pairs of columns
/// until all are orthogonal to working precision. Afterwards column i of `a` is σᵢ uᵢ and, when
/// `v` is given (c×c column-major, start it at the identity), `a = A₀ v`. Returns the column
/// norms σᵢ (unsorted).
fn jacobi_svd(a: &mut [f64], m: usize, c: usize, mut v: Option<&mut [f64]>) -> Vec<f64> {
    const MAX_SWEEPS: usize = 60;
    for _ in 0..MAX_SWEEPS {
        let mut rotated = false;
        for i in 0..c {
            for j in i + 1..c {
                let (mut alpha, mut beta, mut gamma) = (0.0, 0.0, 0.0);
                for row in 0..m {
                    let (x, y) = (a[i * m + row], a[j * m + row]);
                    alpha += x * x;
                    beta += y * y;
                    gamma += x * y;
                }
                if gamma == 0.0 || gamma.abs() <= f64::EPSILON * (alpha * beta).sqrt() {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let cos = 1.0 / (1.0 + t * t).sqrt();
                let sin = cos * t;
                rotate(a, m, i, j, cos, sin);
                if let Some(v) = v.as_deref_mut() {
                    rotate(v, c, i, j, cos, sin);
                }
            }
        }
        if !rotated {
            break;
        }
    }
    (0..c)
        .map(|i| {
            a[i * m..(i + 1) * m]
                .iter()
                .map(|x| x * x)
                .sum::<f64>()
                .sqrt()
        })
        .collect()
}

/// Columns i, j of a column-major matrix with `rows` rows ← (c xᵢ − s xⱼ, s xᵢ + c xⱼ).
fn rotate(a: &mut [f64], rows: usize, i: usize, j: usize, cos: f64, sin: f64) {
    for row in 0..rows {
        let (x, y) = (a[i * rows + row], a[j * rows + row]);
        a[i * rows + row] = cos * x - sin * y;
        a[j * rows + row] = sin * x + cos * y;
    }
}

/// The result of [`cot`].
#[derive(Debug, Clone, PartialEq)]
pub struct Cot {
    /// 1 − the mean transport cost: the estimated accuracy.
    pub accuracy: f64,
    /// Each row's transport cost ‖pᵢ − e_y‖_∞ to the class it is sent to (window order), for
    /// COTT's threshold.
    pub costs: Vec<f64>,
}

/// Confidence optimal transport (COT, Lu et al. 2023): 1 − the mean cost of the optimal
/// transport of the window's probability vectors (mass 1/n each; row-major n×k `probs`) onto
/// the one-hot vectors e_y of the classes with masses `label_prior` (the reference's true class
/// mix), at cost ‖p − e_y‖_∞ (= 1 − p_y for a probability vector).
///
/// Exact: each class's capacity is n · prior (the prior normalised to sum 1) rounded by the
/// largest-remainder rule to integers that sum to n (ties to the lower class index; a class of
/// prior 0 gets none), then the min-cost assignment of rows to class slots is found by
/// successive shortest paths over the k class nodes (a row at a time; Dijkstra with potentials
/// on a dense graph whose edge y → y′ is the cheapest move of a row held by y to y′),
/// O(n² k + n k²). For n = 2,000 and k = 100 that is a few 10⁸ operations.
///
/// None when n == 0, k == 0, `probs.len() != n * k`, `label_prior.len() != k`, a value is not
/// finite, a prior is negative or the priors sum to 0.
pub fn cot(probs: &[f32], k: usize, label_prior: &[f64]) -> Option<Cot> {
    if k == 0 || probs.is_empty() || !probs.len().is_multiple_of(k) || label_prior.len() != k {
        return None;
    }
    if probs.iter().any(|p| !p.is_finite()) {
        return None;
    }
    let n = probs.len() / k;
    let capacity = largest_remainder(n, label_prior)?;
    let cost: Vec<f64> = probs
        .chunks_exact(k)
        .flat_map(|row| (0..k).map(move |y| sup_distance_to_one_hot(row, y)))
        .collect();
    let class_of = min_cost_transport(&cost, n, k, &capacity);
    let costs: Vec<f64> = (0..n).map(|i| cost[i * k + class_of[i]]).collect();
    let accuracy = 1.0 - costs.iter().sum::<f64>() / n as f64;
    Some(Cot { accuracy, costs })
}

/// ‖p − e_y‖_∞ in f64.
fn sup_distance_to_one_hot(p: &[f32], y: usize) -> f64 {
    p.iter()
        .enumerate()
        .map(|(j, &pj)| {
            let target = if j == y { 1.0 } else { 0.0 };
            (f64::from(pj) - target).abs()
        })
        .fold(0.0, f64::max)
}

/// Integer class capacities summing to `n`: ⌊n · prior_y / Σ prior⌋, plus one for the classes
/// with the largest remainders (ties to the lower index), never for a class of prior 0.
/// None when a prior is negative or not finite, or they sum to 0.
fn largest_remainder(n: usize, prior: &[f64]) -> Option<Vec<usize>> {
    if prior.iter().any(|p| !p.is_finite() || *p < 0.0) {
        return None;
    }
    let mut total = 0.0;
    for p in prior {
        total += p;
    }
    if total <= 0.0 {
        return None;
    }
    let quotas: Vec<f64> = prior.iter().map(|p| n as f64 * (p / total)).collect();
    let mut capacity: Vec<usize> = quotas.iter().map(|q| q.floor() as usize).collect();
    let assigned: usize = capacity.iter().sum();
    let mut left = n.saturating_sub(assigned);
    let mut order: Vec<usize> = (0..prior.len()).filter(|&y| prior[y] > 0.0).collect();
    // Stable: equal remainders keep the lower index first.
    order.sort_by(|&a, &b| {
        let (ra, rb) = (quotas[a] - quotas[a].floor(), quotas[b] - quotas[b].floor());
        rb.total_cmp(&ra)
    });
    while left > 0 {
        for &y in &order {
            if left == 0 {
                break;
            }
            capacity[y] += 1;
            left -= 1;
        }
    }
    Some(capacity)
}

/// The min-cost assignment of n rows (cost row-major n×k) to classes holding at most
/// `capacity[y]` rows each (Σ capacity = n), by successive shortest paths: row r joins along
/// the cheapest path r → y₀ → y₁ → … → y_free, each step y → y′ moving one row held by y to
/// y′. Class potentials keep the reduced edge costs non-negative, so each path is one dense
/// Dijkstra over the classes. Returns each row's class.
fn min_cost_transport(cost: &[f64], n: usize, k: usize, capacity: &[usize]) -> Vec<usize> {
    const NONE: usize = usize::MAX;
    let open: Vec<usize> = (0..k).filter(|&y| capacity[y] > 0).collect();
    let mut class_of = vec![NONE; n];
    let mut load = vec![0usize; k];
    let mut potential = vec![0.0f64; k];
    // best[y * k + y′]: the cheapest move of a row held by y to y′, and that row
    let mut best = vec![f64::INFINITY; k * k];
    let mut via = vec![NONE; k * k];
    let mut dist = vec![f64::INFINITY; k];
    // previous class on the path (NONE: straight from the new row)
    let mut previous = vec![NONE; k];
    let mut done = vec![false; k];
    for r in 0..n {
        best.fill(f64::INFINITY);
        for (i, &y) in class_of[..r].iter().enumerate() {
            let row = &cost[i * k..(i + 1) * k];
            for &to in &open {
                let delta = row[to] - row[y];
                if to != y && delta < best[y * k + to] {
                    best[y * k + to] = delta;
                    via[y * k + to] = i;
                }
            }
        }
        for &y in &open {
            dist[y] = cost[r * k + y] - potential[y];
            previous[y] = NONE;
            done[y] = false;
        }
        for _ in 0..open.len() {
            let mut closest = NONE;
            for &y in &open {
                if !done[y] && (closest == NONE || dist[y] < dist[closest]) {
                    closest = y;
                }
            }
            let from = closest;
            done[from] = true;
            for &to in &open {
                let edge = best[from * k + to];
                if done[to] || edge == f64::INFINITY {
                    continue;
                }
                let reduced = (edge + potential[from] - potential[to]).max(0.0);
                if dist[from] + reduced < dist[to] {
                    dist[to] = dist[from] + reduced;
                    previous[to] = from;
                }
            }
        }
        // The cheapest class with room, by the path's true cost (reduced distance + potential).
        let mut target = NONE;
        for &y in &open {
            if load[y] < capacity[y]
                && (target == NONE || dist[y] + potential[y] < dist[target] + potential[target])
            {
                target = y;
            }
        }
        for &y in &open {
            potential[y] += dist[y];
        }
        load[target] += 1;
        let mut to = target;
        while previous[to] != NONE {
            let from = previous[to];
            class_of[via[from * k + to]] = to;
            to = from;
        }
        class_of[r] = to;
    }
    class_of
}

/// The joint distribution C[pred][true] (k×k, row-major, sums to 1) of a labeled reference's
/// predicted and true classes, the input of [`bbse`]. Pairs with a class ≥ k are left out;
/// all zeros when the slices' lengths differ or no pair is left (then [`bbse`] returns None).
pub fn bbse_confusion(predicted: &[usize], truth: &[usize], k: usize) -> Vec<f64> {
    let mut joint = vec![0.0; k * k];
    if predicted.len() != truth.len() {
        return joint;
    }
    let mut counted = 0usize;
    for (&p, &t) in predicted.iter().zip(truth) {
        if p < k && t < k {
            joint[p * k + t] += 1.0;
            counted += 1;
        }
    }
    if counted > 0 {
        joint.iter_mut().for_each(|c| *c /= counted as f64);
    }
    joint
}

/// Below this ratio of the smallest to the largest singular value the confusion is treated
/// as singular and [`bbse`] solves with a ridge.
pub const BBSE_CONDITION_LIMIT: f64 = 1e-8;
/// The ridge [`bbse`] adds when the confusion is singular: λ = (BBSE_RIDGE · σ_max)².
pub const BBSE_RIDGE: f64 = 1e-6;

/// The result of [`bbse`].
#[derive(Debug, Clone, PartialEq)]
pub struct Bbse {
    /// q(y) / p(y) ≥ 0 for each true class y (0 where p(y) = 0).
    pub weights: Vec<f64>,
    /// The estimated class proportions q(y) of the window (sum 1).
    pub class_mix: Vec<f64>,
    /// Σ_y q(y) · recall(y), recall(y) = C[y][y] / p(y): the accuracy expected if only the
    /// class mix changed.
    pub prior_corrected_accuracy: f64,
}

/// Black-box shift estimation (BBSE, Lipton et al. 2018). `confusion`: the labeled reference's
/// joint distribution C[pred][true] ([`bbse_confusion`]; rescaled to sum 1 if it does not);
/// `window_mix`: the window's predicted-class proportions μ (rescaled likewise).
///
/// Solves C w = μ, clips w at 0, and takes q = w ⊙ p / Σ(w ⊙ p) with p(y) the column sums of
/// C (the reference's true class mix). The solve is by SVD (one-sided Jacobi): when
/// σ_min > [`BBSE_CONDITION_LIMIT`] · σ_max it is the exact solution (as `numpy.linalg.solve`);
/// otherwise — C singular, as when a class is never predicted or never true in the reference,
/// or nearly so — it is the ridge solution w = (CᵀC + λI)⁻¹ Cᵀ μ with
/// λ = ([`BBSE_RIDGE`] · σ_max)²: close to numpy's minimum-norm least squares (`lstsq`) on the
/// well-determined directions, damped to 0 on the others, so a class the reference cannot
/// tell apart gets no weight rather than an arbitrary one.
///
/// None when `confusion.len() != k * k`, `window_mix.len() != k`, k == 0, a value is negative
/// or not finite, nothing is labeled (C sums to 0), μ sums to 0, or every weight clips to 0.
pub fn bbse(confusion: &[f64], k: usize, window_mix: &[f64]) -> Option<Bbse> {
    if k == 0 || confusion.len() != k * k || window_mix.len() != k {
        return None;
    }
    let valid = |v: &f64| v.is_finite() && *v >= 0.0;
    if !confusion.iter().all(valid) || !window_mix.iter().all(valid) {
        return None;
    }
    let (c_total, mu_total): (f64, f64) = (confusion.iter().sum(), window_mix.iter().sum());
    if c_total <= 0.0 || mu_total <= 0.0 {
        return None;
    }
    // Column-major copy of C (column y: the true class y).
    let mut a = vec![0.0; k * k];
    for pred in 0..k {
        for truth in 0..k {
            a[truth * k + pred] = confusion[pred * k + truth] / c_total;
        }
    }
    let p: Vec<f64> = (0..k).map(|y| a[y * k..(y + 1) * k].iter().sum()).collect();
    let recall: Vec<f64> = (0..k)
        .map(|y| if p[y] > 0.0 { a[y * k + y] / p[y] } else { 0.0 })
        .collect();
    let mu: Vec<f64> = window_mix.iter().map(|m| m / mu_total).collect();

    // A V = B with orthogonal columns bᵢ = σᵢ uᵢ, so C = B Vᵀ and
    // (CᵀC + λI)⁻¹ Cᵀ μ = V diag(1 / (σᵢ² + λ)) Bᵀ μ.
    let mut v = vec![0.0; k * k];
    for i in 0..k {
        v[i * k + i] = 1.0;
    }
    let sigma = jacobi_svd(&mut a, k, k, Some(&mut v));
    let sigma_max = sigma.iter().copied().fold(0.0, f64::max);
    let sigma_min = sigma.iter().copied().fold(f64::INFINITY, f64::min);
    let lambda = if sigma_min > BBSE_CONDITION_LIMIT * sigma_max {
        0.0
    } else {
        (BBSE_RIDGE * sigma_max).powi(2)
    };
    let mut w = vec![0.0; k];
    for i in 0..k {
        let denominator = sigma[i] * sigma[i] + lambda;
        if denominator == 0.0 {
            continue;
        }
        let projection: f64 = a[i * k..(i + 1) * k]
            .iter()
            .zip(&mu)
            .map(|(b, m)| b * m)
            .sum();
        let coefficient = projection / denominator;
        for (wy, vy) in w.iter_mut().zip(&v[i * k..(i + 1) * k]) {
            *wy += coefficient * vy;
        }
    }
    let unnormalised: Vec<f64> = w.iter().zip(&p).map(|(wy, py)| wy.max(0.0) * py).collect();
    let total: f64 = unnormalised.iter().sum();
    if total <= 0.0 || !total.is_finite() {
        return None;
    }
    let class_mix: Vec<f64> = unnormalised.iter().map(|q| q / total).collect();
    let weights = class_mix
        .iter()
        .zip(&p)
        .map(|(q, py)| if *py > 0.0 { q / py } else { 0.0 })
        .collect();
    let prior_corrected_accuracy = class_mix.iter().zip(&recall).map(|(q, r)| q * r).sum();
    Some(Bbse {
        weights,
        class_mix,
        prior_corrected_accuracy,
    })
}

/// Two-sample Kolmogorov–Smirnov test, two-sided, of `sample_sorted` (unweighted, sorted
/// ascending) against `reference` (any order) whose observations carry the non-negative
/// `reference_weights` (the reference re-weighted, for instance by [`bbse`]'s class weights).
///
/// Statistic: sup_x |F_sample(x) − F_ref,w(x)|, F_ref,w(x) = Σ_{r_j ≤ x} w_j / Σ w, compared
/// after every distinct value (ties as `scipy.stats.ks_2samp`). p-value: [`kolmogorov_sf`] with
/// the same size convention as [`super::ks_2samp_sorted`] (scipy's `method="asymp"`), the
/// reference counting as its effective size m = (Σw)² / Σw² (Kish): n = round(n_s m / (n_s + m)),
/// both roundings half to even, each at least 1. With equal weights this is
/// [`super::ks_2samp_sorted`] up to rounding (that one counts in integers; here the
/// reference's CDF is a sum of weights, so the statistic may differ in the last bit).
///
/// None when a slice is empty, the reference's slices differ in length, a value is NaN, a
/// weight is negative or not finite, or the weights sum to 0.
pub fn weighted_ks(
    sample_sorted: &[f64],
    reference: &[f64],
    reference_weights: &[f64],
) -> Option<TestResult> {
    if sample_sorted.is_empty()
        || reference.is_empty()
        || reference.len() != reference_weights.len()
    {
        return None;
    }
    if sample_sorted.iter().chain(reference).any(|v| v.is_nan())
        || reference_weights.iter().any(|w| !w.is_finite() || *w < 0.0)
    {
        return None;
    }
    let total: f64 = reference_weights.iter().sum();
    let squares: f64 = reference_weights.iter().map(|w| w * w).sum();
    if total <= 0.0 {
        return None;
    }
    let mut order: Vec<usize> = (0..reference.len()).collect();
    order.sort_by(|&a, &b| reference[a].total_cmp(&reference[b]));

    let n = sample_sorted.len();
    let (mut i, mut j) = (0usize, 0usize);
    let mut cumulative = 0.0;
    let mut statistic: f64 = 0.0;
    while i < n && j < order.len() {
        let x = sample_sorted[i].min(reference[order[j]]);
        while i < n && sample_sorted[i] <= x {
            i += 1;
        }
        while j < order.len() && reference[order[j]] <= x {
            cumulative += reference_weights[order[j]];
            j += 1;
        }
        let gap = (i as f64 / n as f64 - cumulative / total).abs();
        statistic = statistic.max(gap);
    }
    // Once one side is exhausted its CDF is 1 and the gap only shrinks.
    let statistic = statistic.min(1.0);
    let effective = ((total * total / squares).round_ties_even()).max(1.0);
    let size = (n as f64 * effective / (n as f64 + effective))
        .round_ties_even()
        .max(1.0);
    Some(TestResult {
        statistic,
        p_value: kolmogorov_sf(statistic, size as u64),
    })
}

/// Ordinary least squares y = a + b x; returns (a, b) — intercept, then slope (note
/// `numpy.polyfit(x, y, 1)` returns them the other way round). None when the slices differ
/// in length, a value is not finite, or fewer than 2 distinct x.
pub fn linear_fit(x: &[f64], y: &[f64]) -> Option<(f64, f64)> {
    if x.len() != y.len() || x.iter().chain(y).any(|v| !v.is_finite()) {
        return None;
    }
    let first = *x.first()?;
    if x.iter().all(|&v| v == first) {
        return None;
    }
    let n = x.len() as f64;
    let (mean_x, mean_y) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxx, mut sxy) = (0.0, 0.0);
    for (&xi, &yi) in x.iter().zip(y) {
        sxx += (xi - mean_x) * (xi - mean_x);
        sxy += (xi - mean_x) * (yi - mean_y);
    }
    let slope = sxy / sxx;
    Some((mean_y - slope * mean_x, slope))
}

#[cfg(test)]
mod tests {
    use super::super::{fixture, ks_2samp_sorted};
    use super::*;
    use serde_json::Value;

    fn cases(fixture: &Value, key: &str, at_least: usize) -> Vec<Value> {
        let cases = fixture[key].as_array().unwrap().clone();
        assert!(cases.len() >= at_least, "{key}: {} cases", cases.len());
        cases
    }

    fn name(case: &Value) -> &str {
        case["name"].as_str().unwrap()
    }

    #[test]
    fn nuclear_norm_matches_numpy() {
        let fixture = fixture::load_named("estimate_fixture.json");
        for case in cases(&fixture, "nuclear_norm", 6) {
            let k = fixture::count(&case["k"]);
            let probs = fixture::f32s(&case["probs"]);
            let score = nuclear_norm_score(&probs, k).unwrap();
            let want = fixture::number(&case["score"]);
            // numpy's SVD and this one are both accurate to a few ulp of σ_max
            fixture::assert_near(score, want, 1e-12, 1e-13, name(&case));
            assert!(
                (0.0..=1.0 + 1e-12).contains(&score),
                "{}: {score}",
                name(&case)
            );
        }
    }

    #[test]
    fn nuclear_norm_bounds_and_degenerate_input() {
        // Distinct one-hot rows over every class: the largest score, 1.
        let mut identity = vec![0.0f32; 16];
        for i in 0..4 {
            identity[i * 4 + i] = 1.0;
        }
        fixture::assert_close(nuclear_norm_score(&identity, 4).unwrap(), 1.0, 1e-14, "I");
        // One row: its Euclidean norm over 1.
        let row = [0.6f32, 0.8, 0.0];
        fixture::assert_close(nuclear_norm_score(&row, 3).unwrap(), 1.0, 1e-7, "row");
        assert_eq!(nuclear_norm_score(&[], 3), None);
        assert_eq!(nuclear_norm_score(&[0.5, 0.5, 0.5], 2), None);
        assert_eq!(nuclear_norm_score(&[0.5, 0.5], 0), None);
        assert_eq!(nuclear_norm_score(&[0.5, f32::NAN], 2), None);
    }

    #[test]
    fn cot_matches_scipy_assignment() {
        let fixture = fixture::load_named("estimate_fixture.json");
        for case in cases(&fixture, "cot", 6) {
            let name = name(&case);
            let k = fixture::count(&case["k"]);
            let probs = fixture::f32s(&case["probs"]);
            let prior = fixture::f64s(&case["prior"]);
            let n = probs.len() / k;
            assert_eq!(
                largest_remainder(n, &prior).unwrap(),
                fixture::usizes(&case["capacities"]),
                "{name}: capacities"
            );
            let result = cot(&probs, k, &prior).unwrap();
            assert_eq!(result.costs.len(), n);
            let total: f64 = result.costs.iter().sum();
            let want = fixture::number(&case["total_cost"]);
            assert!(
                (total - want).abs() <= 1e-9,
                "{name}: total cost {total} against scipy's {want}"
            );
            fixture::assert_near(
                result.accuracy,
                fixture::number(&case["accuracy"]),
                0.0,
                1e-9,
                name,
            );
        }
    }

    #[test]
    fn cot_costs_are_the_rows_distances_to_their_classes() {
        // Two confident rows and a 2:1 prior: each row goes to its own class; the third
        // slot of class 0 takes the uncertain row.
        let probs = [0.9f32, 0.1, 0.2, 0.8, 0.5, 0.5];
        let result = cot(&probs, 2, &[2.0, 1.0]).unwrap();
        let want = [0.1, 0.2, 0.5];
        for (got, want) in result.costs.iter().zip(want) {
            assert!((got - want).abs() < 1e-7, "{:?}", result.costs);
        }
        fixture::assert_close(result.accuracy, 1.0 - 0.8 / 3.0, 1e-7, "accuracy");
        // A prior of 0 receives nothing, even when a row would like it.
        let result = cot(&[0.0f32, 1.0, 1.0, 0.0], 2, &[1.0, 0.0]).unwrap();
        fixture::assert_close(result.accuracy, 0.5, 1e-12, "zero class");
        assert_eq!(cot(&probs, 2, &[1.0]), None);
        assert_eq!(cot(&probs, 2, &[0.0, 0.0]), None);
        assert_eq!(cot(&probs, 2, &[1.0, -1.0]), None);
        assert_eq!(cot(&[], 2, &[1.0, 1.0]), None);
        assert_eq!(cot(&probs[..5], 2, &[1.0, 1.0]), None);
    }

    #[test]
    fn bbse_matches_numpy() {
        let fixture = fixture::load_named("estimate_fixture.json");
        let mut ridged = 0;
        for case in cases(&fixture, "bbse", 5) {
            let name = name(&case);
            let k = fixture::count(&case["k"]);
            let confusion = bbse_confusion(
                &fixture::usizes(&case["predicted"]),
                &fixture::usizes(&case["truth"]),
                k,
            );
            let want_confusion = fixture::f64s(&case["confusion"]);
            for (got, want) in confusion.iter().zip(&want_confusion) {
                fixture::assert_close(*got, *want, 1e-15, name);
            }
            let result = bbse(&confusion, k, &fixture::f64s(&case["window_mix"])).unwrap();
            for (field, got) in [
                ("weights", &result.weights),
                ("class_mix", &result.class_mix),
            ] {
                let want = fixture::f64s(&case[field]);
                assert_eq!(got.len(), k);
                for (g, w) in got.iter().zip(&want) {
                    fixture::assert_near(*g, *w, 1e-9, 1e-12, &format!("{name}: {field}"));
                }
            }
            fixture::assert_near(
                result.prior_corrected_accuracy,
                fixture::number(&case["prior_corrected_accuracy"]),
                1e-9,
                1e-12,
                name,
            );
            assert!((result.class_mix.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            if case["ridge"].as_bool().unwrap() {
                ridged += 1;
                // The ridge stays within 1e-4 of numpy's minimum-norm least squares.
                let q = fixture::f64s(&case["lstsq_min_norm"]);
                let p: Vec<f64> = (0..k)
                    .map(|y| (0..k).map(|pred| confusion[pred * k + y]).sum())
                    .collect();
                let unnormalised: Vec<f64> =
                    q.iter().zip(&p).map(|(w, p)| w.max(0.0) * p).collect();
                let total: f64 = unnormalised.iter().sum();
                for (got, want) in result.class_mix.iter().zip(&unnormalised) {
                    assert!((got - want / total).abs() < 1e-4, "{name}: {got} {want}");
                }
            }
        }
        assert_eq!(ridged, 2, "both singular cases take the ridge");
    }

    #[test]
    fn bbse_degenerate_input() {
        let identity = [0.5, 0.0, 0.0, 0.5];
        // A perfect classifier: the class mix is the predicted mix; recall 1.
        let result = bbse(&identity, 2, &[3.0, 1.0]).unwrap();
        assert!((result.class_mix[0] - 0.75).abs() < 1e-15);
        assert!((result.weights[0] - 1.5).abs() < 1e-14);
        assert!((result.prior_corrected_accuracy - 1.0).abs() < 1e-15);
        assert_eq!(bbse(&identity, 3, &[1.0, 1.0, 1.0]), None);
        assert_eq!(bbse(&identity, 2, &[1.0]), None);
        assert_eq!(bbse(&[0.0; 4], 2, &[1.0, 1.0]), None);
        assert_eq!(bbse(&identity, 2, &[0.0, 0.0]), None);
        assert_eq!(bbse(&[0.5, -0.1, 0.1, 0.5], 2, &[1.0, 1.0]), None);
        assert_eq!(bbse(&identity, 2, &[f64::NAN, 1.0]), None);
        assert_eq!(bbse_confusion(&[0, 1], &[0], 2), vec![0.0; 4]);
        // a class out of range is left out
        assert_eq!(
            bbse_confusion(&[0, 1, 5], &[0, 1, 1], 2),
            vec![0.5, 0.0, 0.0, 0.5]
        );
    }

    #[test]
    fn weighted_ks_matches_numpy_and_scipy() {
        let fixture = fixture::load_named("estimate_fixture.json");
        for case in cases(&fixture, "weighted_ks", 4) {
            let name = name(&case);
            let sample = fixture::f64s(&case["sample"]);
            let reference = fixture::f64s(&case["reference"]);
            let weights = fixture::f64s(&case["weights"]);
            let result = weighted_ks(&sample, &reference, &weights).unwrap();
            fixture::assert_near(
                result.statistic,
                fixture::number(&case["statistic"]),
                1e-12,
                1e-15,
                name,
            );
            // kolmogorov_sf against scipy.stats.kstwo: within 1e-5 (kolmogorov.rs)
            fixture::assert_near(
                result.p_value,
                fixture::number(&case["p_value"]),
                0.0,
                1e-5,
                name,
            );
            if !case["scipy_ks_2samp_p_value"].is_null() {
                let mut sorted = reference.clone();
                sorted.sort_by(f64::total_cmp);
                let unweighted = ks_2samp_sorted(&sample, &sorted);
                fixture::assert_close(result.statistic, unweighted.statistic, 1e-14, name);
                fixture::assert_close(result.p_value, unweighted.p_value, 1e-12, name);
                fixture::assert_near(
                    result.p_value,
                    fixture::number(&case["scipy_ks_2samp_p_value"]),
                    0.0,
                    1e-5,
                    name,
                );
            }
        }
    }

    #[test]
    fn weighted_ks_weights_move_the_reference() {
        // The reference is half 0s, half 1s; weighting the 1s away makes it all 0s.
        let reference = [0.0, 0.0, 1.0, 1.0];
        let sample = [0.0, 0.0, 0.0, 0.0];
        let even = weighted_ks(&sample, &reference, &[1.0; 4]).unwrap();
        assert_eq!(even.statistic, 0.5);
        let weighted = weighted_ks(&sample, &reference, &[1.0, 1.0, 0.0, 0.0]).unwrap();
        assert_eq!(weighted.statistic, 0.0);
        assert_eq!(weighted.p_value, 1.0);
        assert_eq!(weighted_ks(&[], &reference, &[1.0; 4]), None);
        assert_eq!(weighted_ks(&sample, &reference, &[1.0; 3]), None);
        assert_eq!(weighted_ks(&sample, &reference, &[0.0; 4]), None);
        assert_eq!(
            weighted_ks(&sample, &reference, &[1.0, -1.0, 1.0, 1.0]),
            None
        );
        assert_eq!(weighted_ks(&[f64::NAN], &reference, &[1.0; 4]), None);
    }

    #[test]
    fn linear_fit_matches_polyfit() {
        let fixture = fixture::load_named("estimate_fixture.json");
        for case in cases(&fixture, "linear_fit", 3) {
            let name = name(&case);
            let (a, b) =
                linear_fit(&fixture::f64s(&case["x"]), &fixture::f64s(&case["y"])).unwrap();
            fixture::assert_near(a, fixture::number(&case["intercept"]), 1e-10, 1e-12, name);
            fixture::assert_near(b, fixture::number(&case["slope"]), 1e-10, 1e-12, name);
        }
        assert_eq!(linear_fit(&[0.1; 3], &[1.0, 2.0, 3.0]), None);
        assert_eq!(linear_fit(&[1.0], &[1.0]), None);
        assert_eq!(linear_fit(&[], &[]), None);
        assert_eq!(linear_fit(&[1.0, 2.0], &[1.0]), None);
        assert_eq!(linear_fit(&[1.0, f64::INFINITY], &[1.0, 2.0]), None);
    }
}
