//! The two-sample Kolmogorov–Smirnov test and the distribution of the one-sample two-sided
//! Kolmogorov statistic D_n = sup |F_n − F|.
//!
//! [`kolmogorov_sf`] computes P(D_n ≥ d) by the method that is exact or accurate where it is
//! cheap, following Simard & L'Ecuyer (2011), "Computing the two-sided Kolmogorov–Smirnov
//! distribution" (J. Stat. Softw. 39(11)); with t = n·d:
//!
//! | region | method |
//! | --- | --- |
//! | t ≤ 1/2 | 1 |
//! | t ≥ n − 1 | Ruben & Gambino (1982): 2(1 − d)ⁿ |
//! | 1/2 < t ≤ 1 | Ruben & Gambino: P(D_n < d) = n!/nⁿ (2t − 1)ⁿ |
//! | d ≥ 1/2 | 2 × Smirnov's exact one-sided sum (D⁺ ≥ d and D⁻ ≥ d cannot both happen) |
//! | n·d² ≥ 2.2, n ≤ 4000 | 2 × Smirnov's exact one-sided sum (the two-sided correction, P(D⁺ ≥ d and D⁻ ≥ d), is under 5e-8) |
//! | n·d² ≥ 2.2, n > 4000 | 2 × the asymptotic expansion of the one-sided tail to O(1/n) (relative error 2.4e-6 at p = 0.025, 5e-5 at p = 1e-10, falling as n^(−3/2)) |
//! | n·d² < 2.2, n ≤ 140 | Durbin's matrix, exact, as evaluated by Marsaglia, Tsang & Wang (2003) |
//! | n·d² < 2.2, n > 140 | the Pelz & Good (1976) asymptotic series, to O(n^(−3/2)) |
//!
//! Accuracy against `scipy.stats.kstwo.sf`: the largest absolute difference measured is 3.0e-6,
//! just above n = 140, where scipy still evaluates the exact matrix and this module Pelz–Good
//! (2.8e-6 over the committed grid of 2332 points, 3.0e-6 over a denser grid of 43,023 points
//! with every n up to 200). For n ≤ 140 it is 2.3e-8 (scipy uses the exact Pomeranz recursion
//! up to n·d² = 4, this module 2 × Smirnov from 2.2); where both use Smirnov's sum the relative
//! difference is about 1e-11.
//!
//! Cost (release build, one core of the development machine): Pelz–Good and the asymptotic
//! tail are O(1), about 0.1 µs; the matrix method is O(n m²/2) with m = 2⌊n d⌋ + 1 ≤ 37, at
//! most about 50 µs (n = 140 near the tail switch); Smirnov's sum is O(n) terms, about 35 µs
//! for n = 1667 (10,000 against 2,000) and 90 µs at n = 4000. The sum and the matrix only run
//! for shifted data (n·d² ≥ 2.2, p < 0.025) or small samples.
//!
//! Hand-written because statrs (0.19) lacks it: it has no distribution of D_n to evaluate (no
//! `kstwo.sf`), only the tests in `stats_tests::ks_test`, and its `ks_twosample` answers a
//! different question. Its two-sided asymptotic p-value is Kolmogorov's limiting series at the
//! unrounded n_a n_b / (n_a + n_b); on the fixture (`ks_2samp_matches_scipy`, tolerance 1e-4)
//! it is off by 0.127 ("small 12 vs 8 with ties"), 3.1e-2 ("unshifted 200 vs 150") and 3.6e-4
//! ("shifted 400 vs 300"), and it never returns for identical samples (D = 0: the series'
//! terms stay 1). Its exact method is the permutation distribution of the two-sample
//! statistic, not scipy's `method="asymp"` (off by 7.9e-3 on "small 8 vs 12"), and refuses
//! n_a n_b > 10,000. It also copies and sorts both samples, where the monitor passes them
//! sorted ([`ks_2samp_sorted`]).

use statrs::function::factorial::ln_factorial;

use super::TestResult;

/// Up to this n the body of the distribution (n·d² < [`TAIL_NDD`]) is Durbin's exact matrix
/// (Simard & L'Ecuyer's switch to Pelz–Good).
const MATRIX_MAX_N: u64 = 140;
/// Up to this n the tail (n·d² ≥ [`TAIL_NDD`]) is Smirnov's exact sum, above its expansion.
const EXACT_TAIL_MAX_N: u64 = 4000;
/// From this n·d² on, P(D_n ≥ d) is taken as 2 P(D⁺_n ≥ d).
const TAIL_NDD: f64 = 2.2;
/// Past this n·d², even the bound 2 e^(−2 n d²) (Dvoretzky–Kiefer–Wolfowitz, Massart) is
/// below the smallest normal f64, so the survival function is 0.
const UNDERFLOW_NDD: f64 = 354.0;
/// Durbin's vector is rescaled by 2^±SCALE_BITS should it leave this range.
const SCALE_BITS: i32 = 460;

/// Survival function of the Kolmogorov distribution: P(D_n ≥ d) for the two-sided one-sample
/// statistic D_n = sup_x |F_n(x) − F(x)| of a sample of size `n` from a continuous F.
///
/// This is `scipy.stats.kstwo.sf(d, n)`; the methods and where each applies are listed in the
/// module documentation. The absolute difference from scipy is below 1e-5 everywhere
/// (measured at most 3.0e-6); in the exact tail the relative difference is about 1e-11.
/// NaN when `n == 0` or `d` is NaN; 1 for d ≤ 1/(2n); 0 for d ≥ 1.
pub fn kolmogorov_sf(d: f64, n: u64) -> f64 {
    if n == 0 || d.is_nan() {
        return f64::NAN;
    }
    if d >= 1.0 {
        return 0.0;
    }
    let nf = n as f64;
    let t = nf * d;
    if t <= 0.5 {
        return 1.0;
    }
    if t >= nf - 1.0 {
        return clamp_probability(2.0 * (nf * (-d).ln_1p()).exp());
    }
    if t <= 1.0 {
        let cdf = (ln_factorial_over_power(n) + nf * (2.0 * t - 1.0).ln()).exp();
        return clamp_probability(1.0 - cdf);
    }
    let ndd = t * d;
    if ndd >= UNDERFLOW_NDD {
        return 0.0;
    }
    if d >= 0.5 || (ndd >= TAIL_NDD && n <= EXACT_TAIL_MAX_N) {
        return clamp_probability(2.0 * smirnov_sf(n, d));
    }
    if ndd >= TAIL_NDD {
        return clamp_probability(2.0 * smirnov_sf_asymptotic(n, d));
    }
    if n <= MATRIX_MAX_N {
        clamp_probability(1.0 - durbin_matrix_cdf(n, d))
    } else {
        clamp_probability(1.0 - pelz_good_cdf(n, d))
    }
}

fn clamp_probability(p: f64) -> f64 {
    p.clamp(0.0, 1.0)
}

/// ln(n! / nⁿ).
fn ln_factorial_over_power(n: u64) -> f64 {
    let nf = n as f64;
    ln_factorial(n) - nf * nf.ln()
}

/// Smirnov's exact one-sided tail (Smirnov 1944; Birnbaum & Tingey 1951):
/// P(D⁺_n ≥ d) = d Σ_{j=0}^{⌊n(1−d)⌋} C(n, j) (d + j/n)^(j−1) (1 − d − j/n)^(n−j).
/// All terms are positive; each is evaluated in logarithms. O(n(1 − d)) terms.
fn smirnov_sf(n: u64, d: f64) -> f64 {
    let nf = n as f64;
    let nd = nf * d;
    let mut ln_binomial = 0.0;
    let mut sum = 0.0;
    for j in 0..=n {
        let jf = j as f64;
        if j > 0 {
            ln_binomial += ((nf - jf + 1.0) / jf).ln();
        }
        // 1 − d − j/n, formed from integers first to avoid cancellation
        let right = (nf - jf - nd) / nf;
        if right <= 0.0 {
            break;
        }
        let left = d + jf / nf;
        sum += (ln_binomial + (nf - jf) * right.ln() + (jf - 1.0) * left.ln()).exp();
    }
    d * sum
}

/// The one-sided tail for large n from the expansion of Smirnov's formula in powers of n^(−1/2),
/// with t = √n d:
/// P(D⁺_n ≥ d) = e^(−2t²) [1 − 2t/(3√n) + (2t²/3 − 4t⁴/9)/n + O(n^(−3/2))],
/// used in the exponentiated form exp(−2t² − 2t/(3√n) − 4t²(t² − 1)/(9n)), which stays positive
/// and follows the large-deviation rate deep in the tail. Relative error just above n = 4000:
/// 2.4e-6 at p ≈ 0.025, 5e-5 at p ≈ 2e-10, shrinking as n^(−3/2) (checked against the exact
/// sum in the tests).
fn smirnov_sf_asymptotic(n: u64, d: f64) -> f64 {
    let nf = n as f64;
    let root_n = nf.sqrt();
    let t = root_n * d;
    let t2 = t * t;
    (-2.0 * t2 - 2.0 * t / (3.0 * root_n) - 4.0 * t2 * (t2 - 1.0) / (9.0 * nf)).exp()
}

/// P(D_n < d) by Durbin's (1973) matrix formula, with the matrix of Marsaglia, Tsang & Wang
/// (2003): with k = ⌊n d⌋ + 1, m = 2k − 1 and h = k − n d, P = n!/nⁿ (Hⁿ)_{k,k}, where the m×m
/// matrix H has entries 1/(i − j + 1)! for i − j + 1 ≥ 0 (1-based) and 0 above the
/// superdiagonal, with the first column and last row corrected by powers of h.
///
/// Only one entry of Hⁿ is needed, so Hⁿ e_k is formed by n products of the (lower
/// Hessenberg) H with a vector, each step also multiplied by its factor i/n of n!/nⁿ, which
/// keeps the vector in range: O(n m²/2), about 4.4 n² multiply-adds below the tail switch.
/// The vector is rescaled by powers of two should it still drift.
fn durbin_matrix_cdf(n: u64, d: f64) -> f64 {
    let nf = n as f64;
    let nd = nf * d;
    let k = nd.floor() as usize + 1;
    let m = 2 * k - 1;
    let h = k as f64 - nd;

    let mut hm = vec![0.0; m * m];
    for i in 0..m {
        for j in 0..m.min(i + 2) {
            hm[i * m + j] = 1.0;
        }
    }
    let mut power = 1.0;
    for i in 0..m {
        power *= h;
        hm[i * m] -= power; // h^(i+1) in the first column
    }
    power = 1.0;
    for j in (0..m).rev() {
        power *= h;
        hm[(m - 1) * m + j] -= power; // h^(m−j) in the last row
    }
    if 2.0 * h - 1.0 > 0.0 {
        hm[(m - 1) * m] += (2.0 * h - 1.0).powi(m as i32);
    }
    for i in 0..m {
        let mut factorial = 1.0;
        for j in (0..=i).rev() {
            factorial *= (i - j + 1) as f64;
            hm[i * m + j] /= factorial;
        }
    }

    let mut v = vec![0.0; m];
    v[k - 1] = 1.0;
    let mut next = vec![0.0; m];
    let mut exponent = 0i64;
    let (big, small) = (f64::powi(2.0, SCALE_BITS), f64::powi(2.0, -SCALE_BITS));
    // H by columns: column c is non-zero from row c − 1 down, so H v is a sum of contiguous
    // column slices scaled by v_c (no reduction chains, which vectorises).
    let mut columns = vec![0.0; m * m];
    for r in 0..m {
        for c in 0..m {
            columns[c * m + r] = hm[r * m + c];
        }
    }
    for i in 1..=n {
        let factor = i as f64 / nf;
        next.fill(0.0);
        for (c, &vc) in v.iter().enumerate() {
            if vc == 0.0 {
                continue;
            }
            let top = c.saturating_sub(1);
            let scaled = vc * factor;
            let column = &columns[c * m + top..(c + 1) * m];
            for (out, &entry) in next[top..].iter_mut().zip(column) {
                *out += entry * scaled;
            }
        }
        std::mem::swap(&mut v, &mut next);
        let largest = v.iter().fold(0.0f64, |acc, x| acc.max(x.abs()));
        if largest > big {
            v.iter_mut().for_each(|x| *x *= small);
            exponent += i64::from(SCALE_BITS);
        } else if largest > 0.0 && largest < small {
            v.iter_mut().for_each(|x| *x *= big);
            exponent -= i64::from(SCALE_BITS);
        }
    }
    scale_by_power_of_two(v[k - 1], exponent)
}

/// x · 2^e without intermediate overflow or underflow.
fn scale_by_power_of_two(mut x: f64, mut e: i64) -> f64 {
    while e > 1000 && x != 0.0 && x.is_finite() {
        x *= f64::powi(2.0, 1000);
        e -= 1000;
    }
    while e < -1000 && x != 0.0 {
        x *= f64::powi(2.0, -1000);
        e += 1000;
    }
    x * f64::powi(2.0, e as i32)
}

/// P(D_n ≤ d) by the Pelz & Good (1976) expansion in the form given by Simard & L'Ecuyer
/// (2011): K₀(z) + K₁(z)/√n + K₂(z)/n + K₃(z)/n^(3/2), z = √n d, each K a rapidly converging
/// sum of e^(−(2k−1)²π²/(8z²)) and e^(−k²π²/(2z²)) terms.
fn pelz_good_cdf(n: u64, d: f64) -> f64 {
    use std::f64::consts::PI;
    let nf = n as f64;
    let z = nf.sqrt() * d;
    let (z2, z4) = (z * z, z.powi(4));
    let (z6, z8) = (z.powi(6), z.powi(8));
    let (pi2, pi4, pi6) = (PI * PI, PI.powi(4), PI.powi(6));
    let sqrt_2pi = (2.0 * PI).sqrt();

    // Sums over odd m = 2k − 1 of polynomial(m) · e^(−m²π²/(8z²))
    let odd_rate = -pi2 / (8.0 * z2);
    let mut odd = [0.0f64; 4];
    for k in 1..1000u32 {
        let mo = f64::from(2 * k - 1);
        let (m2, m4, m6) = (mo * mo, mo.powi(4), mo.powi(6));
        let e = (odd_rate * m2).exp();
        if e == 0.0 {
            break;
        }
        odd[0] += e;
        odd[1] += (pi2 * m2 / 4.0 - z2) * e;
        odd[2] += (6.0 * z6
            + 2.0 * z4
            + pi2 * (2.0 * z4 - 5.0 * z2) * m2 / 4.0
            + pi4 * (1.0 - 2.0 * z2) * m4 / 16.0)
            * e;
        odd[3] += (pi6 * (5.0 - 30.0 * z2) * m6 / 64.0
            + pi4 * (212.0 * z4 - 60.0 * z2) * m4 / 16.0
            + pi2 * (135.0 * z4 - 96.0 * z6) * m2 / 4.0
            - 30.0 * z6
            - 90.0 * z8)
            * e;
        if e < 1e-20 * odd[0] {
            break;
        }
    }
    // Sums over all k ≥ 1 of polynomial(k) · e^(−k²π²/(2z²))
    let whole_rate = -pi2 / (2.0 * z2);
    let (mut whole2, mut whole3) = (0.0f64, 0.0f64);
    for k in 1..1000u32 {
        let kf = f64::from(k);
        let k2 = kf * kf;
        let e = (whole_rate * k2).exp();
        if e == 0.0 {
            break;
        }
        whole2 += k2 * e;
        whole3 += (3.0 * pi2 * k2 * z2 - pi4 * k2 * k2) * e;
        if e < 1e-20 * whole2.abs().max(f64::MIN_POSITIVE) {
            break;
        }
    }
    let k0 = sqrt_2pi / z * odd[0];
    let k1 = sqrt_2pi / (6.0 * z4) * odd[1];
    let k2 = sqrt_2pi / (72.0 * z.powi(7)) * odd[2] - sqrt_2pi * pi2 / (36.0 * z.powi(3)) * whole2;
    let k3 = sqrt_2pi / (6480.0 * z.powi(10)) * odd[3] + sqrt_2pi / (216.0 * z6) * whole3;
    let root_n = nf.sqrt();
    k0 + k1 / root_n + k2 / nf + k3 / (nf * root_n)
}

/// Two-sample Kolmogorov–Smirnov test, two-sided, on unsorted samples (sorted copies are made;
/// see [`ks_2samp_sorted`]). Statistic and p-value as `scipy.stats.ks_2samp(a, b,
/// method="asymp")`.
pub fn ks_2samp(a: &[f64], b: &[f64]) -> TestResult {
    if a.is_empty() || b.is_empty() || a.iter().chain(b).any(|v| v.is_nan()) {
        return TestResult::UNDEFINED;
    }
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort_unstable_by(f64::total_cmp);
    b.sort_unstable_by(f64::total_cmp);
    ks_2samp_sorted(&a, &b)
}

/// Two-sample Kolmogorov–Smirnov test, two-sided, on samples already sorted ascending (no
/// copies; O(n_a + n_b) for the statistic plus the p-value's cost: about 40 µs for 10,000
/// against 2,000 in a release build, against about 185 µs for [`ks_2samp`], which sorts).
///
/// Statistic: D = sup_x |F_a(x) − F_b(x)| over the empirical CDFs (ties handled as
/// `scipy.stats.ks_2samp`: the CDFs are compared after every distinct value). p-value:
/// [`kolmogorov_sf`]`(D, n)` with n = round(n_a n_b / (n_a + n_b)), rounding half to even as
/// numpy does — scipy's `method="asymp"`. Where that n rounds to 0 (one observation each)
/// scipy returns NaN; here n is at least 1.
///
/// An empty sample or a NaN gives [`TestResult::UNDEFINED`]. Unsorted input gives a
/// meaningless (but finite) result.
pub fn ks_2samp_sorted(a_sorted: &[f64], b_sorted: &[f64]) -> TestResult {
    let (n, m) = (a_sorted.len(), b_sorted.len());
    if n == 0 || m == 0 || a_sorted.iter().chain(b_sorted).any(|v| v.is_nan()) {
        return TestResult::UNDEFINED;
    }
    let statistic = ks_statistic_sorted(a_sorted, b_sorted);
    TestResult {
        statistic,
        p_value: kolmogorov_sf(statistic, effective_size(n, m)),
    }
}

/// sup |F_a − F_b| by merging the sorted samples; the largest |i·m − j·n| over the distinct
/// values is tracked in integers and divided once by n·m.
fn ks_statistic_sorted(a: &[f64], b: &[f64]) -> f64 {
    let (n, m) = (a.len(), b.len());
    let (mut i, mut j) = (0usize, 0usize);
    let mut largest: u128 = 0;
    while i < n && j < m {
        let v = if a[i] <= b[j] { a[i] } else { b[j] };
        while i < n && a[i] <= v {
            i += 1;
        }
        while j < m && b[j] <= v {
            j += 1;
        }
        let (left, right) = (i as u128 * m as u128, j as u128 * n as u128);
        largest = largest.max(left.abs_diff(right));
    }
    // Once a sample is exhausted its CDF is 1 and the gap only shrinks.
    largest as f64 / (n as f64 * m as f64)
}

/// round(n m / (n + m)) with ties to even (numpy), at least 1.
fn effective_size(n: usize, m: usize) -> u64 {
    let (large, small) = (n.max(m) as f64, n.min(m) as f64);
    let en = (large * small / (large + small)).round_ties_even();
    (en as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::super::fixture;
    use super::*;

    #[test]
    fn ks_2samp_matches_scipy() {
        let fixture = fixture::load();
        let cases = fixture["ks_2samp"].as_array().unwrap();
        assert!(cases.len() >= 8);
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let a = fixture::f64s(&case["a"]);
            let b = fixture::f64s(&case["b"]);
            let result = ks_2samp(&a, &b);
            fixture::assert_close(
                result.statistic,
                fixture::number(&case["statistic"]),
                1e-12,
                &format!("{name}: statistic"),
            );
            let want = fixture::number(&case["p_value"]);
            assert!(
                (result.p_value - want).abs() <= 1e-4,
                "{name}: p-value {} against scipy {want}",
                result.p_value
            );
            // The sorted entry point gives the same answer, in either order of the samples.
            let mut sa = a.clone();
            let mut sb = b.clone();
            sa.sort_by(f64::total_cmp);
            sb.sort_by(f64::total_cmp);
            assert_eq!(ks_2samp_sorted(&sa, &sb), result, "{name}: sorted");
            assert_eq!(ks_2samp_sorted(&sb, &sa), result, "{name}: swapped");
        }
    }

    #[test]
    fn kolmogorov_sf_matches_scipy_over_the_grid() {
        let fixture = fixture::load();
        let grid = fixture["kolmogorov_sf"].as_array().unwrap();
        assert!(grid.len() > 1000);
        let mut worst = (0.0f64, 0.0f64, 0u64);
        let mut worst_tail_relative = 0.0f64;
        let mut smallest = 1.0f64;
        for point in grid {
            let d = fixture::number(&point["d"]);
            let n = fixture::count(&point["n"]) as u64;
            let want = fixture::number(&point["sf"]);
            smallest = smallest.min(want);
            let got = kolmogorov_sf(d, n);
            let err = (got - want).abs();
            if err > worst.0 {
                worst = (err, d, n);
            }
            assert!(
                err <= 1e-5,
                "kolmogorov_sf({d}, {n}) = {got:e}, scipy {want:e}"
            );
            // Where both evaluate Smirnov's exact sum (scipy: n > 140 from n·d² = 2.2, and
            // n ≤ 140 from n·d² = 4), the agreement is relative too.
            let ndd = n as f64 * d * d;
            if n <= MATRIX_MAX_N && ndd < TAIL_NDD {
                // Both exact (scipy: Durbin's matrix or Pomeranz's recursion).
                assert!(
                    err <= 1e-10,
                    "matrix ({d}, {n}): {got:e} against scipy {want:e}"
                );
            }
            let both_exact_tail = n <= EXACT_TAIL_MAX_N
                && ((n > MATRIX_MAX_N && ndd >= TAIL_NDD) || ndd > 4.0 || d >= 0.5);
            if both_exact_tail && want > 1e-300 {
                let rel = fixture::relative_error(got, want);
                worst_tail_relative = worst_tail_relative.max(rel);
                assert!(
                    rel <= 1e-9,
                    "tail ({d}, {n}): {got:e} against scipy {want:e}"
                );
            }
        }
        assert!(smallest < 1e-10, "the grid reaches p = 1e-10");
        eprintln!(
            "kolmogorov_sf: worst absolute error against scipy {:e} at d = {}, n = {} over {} \
             points; worst relative error where both use the exact tail sum {:e}",
            worst.0,
            worst.1,
            worst.2,
            grid.len(),
            worst_tail_relative
        );
    }

    #[test]
    fn tail_expansion_agrees_with_the_exact_sum_past_the_switch() {
        // The relative error shrinks as n^(−3/2) and grows with n·d²; at the switch (n = 4001)
        // it is 2.4e-6 at n·d² = 2.2 (p ≈ 0.024) and 5e-5 at n·d² = 11.5 (p ≈ 2e-10).
        for &n in &[4001u64, 6000, 20000] {
            for &(ndd, tolerance) in &[
                (2.2, 3e-6),
                (3.0, 5e-6),
                (5.0, 1.2e-5),
                (8.0, 3e-5),
                (11.5, 6e-5),
            ] {
                let d = (ndd / n as f64).sqrt();
                let exact = smirnov_sf(n, d);
                let asymptotic = smirnov_sf_asymptotic(n, d);
                assert!(exact > 1e-11);
                fixture::assert_close(asymptotic, exact, tolerance, &format!("n {n}, n·d² {ndd}"));
            }
        }
    }

    #[test]
    fn matrix_and_pelz_good_agree_at_the_switch() {
        // Exact (Durbin) at n = 140 versus the asymptotic series evaluated at the same point.
        for i in 1..40 {
            let d = 0.01 + 0.003 * i as f64;
            if 140.0 * d * d >= TAIL_NDD {
                break;
            }
            let exact = durbin_matrix_cdf(140, d);
            let series = pelz_good_cdf(140, d);
            assert!((exact - series).abs() < 1e-5, "d {d}: {exact} vs {series}");
        }
    }

    #[test]
    fn kolmogorov_sf_closed_forms_and_limits() {
        // n = 1: D_1 = max(U, 1 − U), so P(D_1 ≥ d) = 2(1 − d) on [1/2, 1].
        for &d in &[0.5, 0.6, 0.75, 0.99] {
            fixture::assert_close(kolmogorov_sf(d, 1), 2.0 * (1.0 - d), 1e-14, "n = 1");
        }
        assert_eq!(kolmogorov_sf(0.0, 10), 1.0);
        assert_eq!(kolmogorov_sf(0.04, 10), 1.0);
        assert_eq!(kolmogorov_sf(1.0, 10), 0.0);
        assert_eq!(kolmogorov_sf(0.9, 100_000), 0.0);
        assert!(kolmogorov_sf(0.5, 0).is_nan());
        assert!(kolmogorov_sf(f64::NAN, 5).is_nan());
        assert_eq!(kolmogorov_sf(-1.0, 5), 1.0);
        // Monotone non-increasing in d for a fixed n, across every method switch.
        for &n in &[3u64, 20, 140, 141, 1000, 4000, 4001, 50_000] {
            let mut previous = 1.0;
            for i in 0..=400 {
                let d = i as f64 / 400.0;
                let p = kolmogorov_sf(d, n);
                assert!((0.0..=1.0).contains(&p), "n {n}, d {d}: {p}");
                assert!(
                    p <= previous + 1e-7,
                    "n {n}: sf rises at d {d}: {previous} → {p}"
                );
                previous = p;
            }
        }
    }

    #[test]
    fn identical_samples_give_zero_and_one() {
        let a: Vec<f64> = (0..50).map(|i| (i as f64 * 0.37).sin()).collect();
        let result = ks_2samp(&a, &a);
        assert_eq!(result.statistic, 0.0);
        assert_eq!(result.p_value, 1.0);
        let constant = [2.0; 30];
        let result = ks_2samp(&constant, &constant[..7]);
        assert_eq!(result.statistic, 0.0);
        assert_eq!(result.p_value, 1.0);
    }

    #[test]
    fn disjoint_samples_give_one_and_a_small_p_value() {
        let a: Vec<f64> = (0..200).map(f64::from).collect();
        let b: Vec<f64> = (0..300).map(|i| 1000.0 + f64::from(i)).collect();
        let result = ks_2samp(&a, &b);
        assert_eq!(result.statistic, 1.0);
        assert_eq!(result.p_value, 0.0);
        let result = ks_2samp(&b[..10], &a[..10]);
        assert_eq!(result.statistic, 1.0);
        // n = 5: P(D_5 ≥ 1) = 0 by the closed form, scipy agrees
        assert_eq!(result.p_value, 0.0);
    }

    #[test]
    fn degenerate_samples_are_undefined() {
        assert!(!ks_2samp(&[], &[1.0]).is_defined());
        assert!(!ks_2samp(&[1.0], &[]).is_defined());
        assert!(!ks_2samp(&[1.0, f64::NAN], &[1.0, 2.0]).is_defined());
        assert!(!ks_2samp_sorted(&[0.0], &[f64::NAN]).is_defined());
        // One observation each: n rounds to 0 in scipy (NaN); here n = 1.
        let one = ks_2samp(&[1.0], &[2.0]);
        assert_eq!(one.statistic, 1.0);
        assert_eq!(one.p_value, 0.0);
        let same = ks_2samp(&[1.0], &[1.0]);
        assert_eq!((same.statistic, same.p_value), (0.0, 1.0));
    }

    #[test]
    fn effective_size_rounds_half_to_even() {
        assert_eq!(effective_size(5, 5), 2); // 2.5
        assert_eq!(effective_size(3, 3), 2); // 1.5
        assert_eq!(effective_size(8, 12), 5); // 4.8
        assert_eq!(effective_size(1, 1), 1); // 0.5 → 0 → at least 1
        assert_eq!(effective_size(10_000, 2_000), 1667);
    }

    #[test]
    fn methods_join_at_the_tail_switch() {
        // On either side of n·d² = 2.2 the two methods differ by P(D⁺ ≥ d and D⁻ ≥ d), about
        // 4e-8, plus Pelz–Good's own error (n > 140) — for the monitor's largest n
        // (10,000 against 2,000) and at the ends of both exact ranges.
        for &(n, tolerance) in &[
            (effective_size(10_000, 2_000), 1e-6),
            (140, 1e-7),
            (141, 5e-6),
            (4000, 1e-6),
            (4001, 1e-6),
        ] {
            let d = (TAIL_NDD / n as f64).sqrt();
            let below = kolmogorov_sf(d * (1.0 - 1e-12), n);
            let above = kolmogorov_sf(d, n);
            assert!(
                (below - above).abs() < tolerance,
                "n {n}: {below} against {above}"
            );
            assert!(above > 0.02 && above < 0.025, "n {n}: {above}");
        }
    }
}
