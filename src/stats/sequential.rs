//! Sequential change detection by betting: Shiryaev–Roberts e-detectors (Shin, Ramdas &
//! Rinaldo 2023, "E-detectors: a nonparametric framework for sequential change detection").
//!
//! Each prediction yields a score `s ≥ 0` whose mean before any change is at most `μ₀` (a
//! mid-rank against the reference has mean ½; a reference-tail indicator has mean k/(n+1); a
//! likelihood ratio against the reference class mix has mean 1). A bet of size λ turns it into
//! the e-value `e = 1 + λ (s − μ₀ − τ)`, with `0 ≤ λ ≤ 1 / (μ₀ + τ)` so that `e ≥ 0`. Before a
//! change `E[e] = 1 − λτ ≤ 1`: the tolerance τ is the effect size the detector does not bet on,
//! so it gains evidence only from a shift larger than τ.
//!
//! The Shiryaev–Roberts statistic `R_t = (1 + R_{t−1}) e_t` (R₀ = 0) starts a new bet at every
//! step and keeps all of them: `R_t − t` is a supermartingale before the change, so by optional
//! stopping (Lorden's argument, Ville's inequality for the e-process) the first time `R_t ≥ c`
//! comes on average after at least `c` observations: the threshold *is* the average run length
//! to a false alarm. An average of such statistics (over bet sizes, over features, over test
//! families) is again one, so a detector may mix several and keep the guarantee; and checking
//! it only every so often can only lengthen the run. The statistic is capped (`cap`, a multiple
//! of the threshold): capping lowers it, which keeps the guarantee, and bounds how long it stays
//! over the threshold once a shift is over.

/// How many bet sizes a detector mixes: λ_max/2, λ_max/4, … λ_max/2^BET_GRID.
pub const BET_GRID: usize = 6;

/// A Shiryaev–Roberts e-detector on one score stream, mixed over [`BET_GRID`] bet sizes.
#[derive(Debug, Clone, PartialEq)]
pub struct BetDetector {
    /// μ₀ + τ: the mean the detector bets against.
    null_mean: f64,
    lambdas: [f64; BET_GRID],
    /// R_t per bet size.
    statistics: [f64; BET_GRID],
    cap: f64,
}

impl BetDetector {
    /// A detector betting that scores average more than `null_mean + tolerance`; `None` when
    /// no bet is possible (the sum is not positive and finite) or `cap` is not positive.
    pub fn new(null_mean: f64, tolerance: f64, cap: f64) -> Option<Self> {
        let m = null_mean + tolerance;
        if !(m.is_finite() && m > 0.0 && null_mean >= 0.0 && tolerance >= 0.0 && cap > 0.0) {
            return None;
        }
        let max = 1.0 / m;
        let mut lambdas = [0.0; BET_GRID];
        for (j, l) in lambdas.iter_mut().enumerate() {
            *l = max / f64::powi(2.0, j as i32 + 1);
        }
        Some(BetDetector {
            null_mean: m,
            lambdas,
            statistics: [0.0; BET_GRID],
            cap,
        })
    }

    /// Takes one score (a NaN or negative score is not a bet: the statistic is left alone).
    pub fn update(&mut self, score: f64) {
        if !(score.is_finite() && score >= 0.0) {
            return;
        }
        for (r, l) in self.statistics.iter_mut().zip(&self.lambdas) {
            let e = (1.0 + l * (score - self.null_mean)).max(0.0);
            *r = ((1.0 + *r) * e).min(self.cap);
        }
    }

    /// The evidence: the mean over bet sizes of the Shiryaev–Roberts statistics.
    pub fn evidence(&self) -> f64 {
        self.statistics.iter().sum::<f64>() / BET_GRID as f64
    }

    /// The bet sizes, largest first.
    pub fn lambdas(&self) -> &[f64; BET_GRID] {
        &self.lambdas
    }
}

/// The mid-rank of `x` among `sorted` values, in [0, 1]: `(#{< x} + ½ #{= x}) / n`. Its mean
/// is ½ when `x` comes from the distribution the values were drawn from. NaN for an empty
/// reference or a NaN `x`.
pub fn mid_rank(sorted: &[f64], x: f64) -> f64 {
    if sorted.is_empty() || x.is_nan() {
        return f64::NAN;
    }
    let below = sorted.partition_point(|v| *v < x);
    let not_above = sorted.partition_point(|v| *v <= x);
    (below as f64 + 0.5 * (not_above - below) as f64) / sorted.len() as f64
}

/// A one-sided tail of a reference sample: a value beyond its k-th most extreme reference
/// value, k = ⌊q (n + 1)⌋, where a value from the reference's distribution lands with
/// probability at most k / (n + 1) (exchangeability; ties only lower it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tail {
    pub cut: f64,
    pub upper: bool,
    /// k / (n + 1): the indicator's mean before a change.
    pub null_rate: f64,
}

impl Tail {
    /// The lower (`upper` false) or upper tail at level `q`; `None` when the reference is too
    /// small for that level (k = 0) or `q` is not in (0, 1).
    pub fn new(sorted: &[f64], q: f64, upper: bool) -> Option<Tail> {
        if !(q > 0.0 && q < 1.0) {
            return None;
        }
        let n = sorted.len();
        let k = (q * (n + 1) as f64).floor() as usize;
        if k == 0 || k > n {
            return None;
        }
        let cut = if upper { sorted[n - k] } else { sorted[k - 1] };
        Some(Tail {
            cut,
            upper,
            null_rate: k as f64 / (n + 1) as f64,
        })
    }

    /// Beyond the reference's most extreme value (k = 1): null rate 1 / (n + 1). `None` for an
    /// empty reference.
    pub fn extreme(sorted: &[f64], upper: bool) -> Option<Tail> {
        let n = sorted.len();
        if n == 0 {
            return None;
        }
        Some(Tail {
            cut: if upper { sorted[n - 1] } else { sorted[0] },
            upper,
            null_rate: 1.0 / (n + 1) as f64,
        })
    }

    /// 1 when `x` lies beyond the cut, 0 otherwise, NaN for NaN.
    pub fn indicator(&self, x: f64) -> f64 {
        if x.is_nan() {
            return f64::NAN;
        }
        let beyond = if self.upper {
            x > self.cut
        } else {
            x < self.cut
        };
        if beyond { 1.0 } else { 0.0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::fixture;
    use crate::stats::random::SplitMix64;

    /// The Shiryaev–Roberts statistics and mid-ranks agree with the numpy recomputation in
    /// `tests/data/make_sequential_fixture.py`.
    #[test]
    fn detector_follows_numpy() {
        let f = fixture::load_named("sequential_fixture.json");
        for case in f["detectors"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let mut d = BetDetector::new(
                fixture::number(&case["null_mean"]),
                fixture::number(&case["tolerance"]),
                fixture::number(&case["cap"]),
            )
            .unwrap();
            let want_lambdas = fixture::f64s(&case["lambdas"]);
            for (a, b) in d.lambdas().iter().zip(&want_lambdas) {
                fixture::assert_close(*a, *b, 1e-12, name);
            }
            let scores = fixture::f64s(&case["scores"]);
            let want = fixture::f64s(&case["evidence"]);
            for (t, (s, w)) in scores.iter().zip(&want).enumerate() {
                d.update(*s);
                fixture::assert_close(d.evidence(), *w, 1e-9, &format!("{name} at {t}"));
            }
        }
        for case in f["mid_rank"].as_array().unwrap() {
            let sorted = fixture::f64s(&case["sorted"]);
            for (x, want) in fixture::f64s(&case["x"])
                .iter()
                .zip(fixture::f64s(&case["rank"]))
            {
                fixture::assert_close(mid_rank(&sorted, *x), want, 1e-12, "mid_rank");
            }
        }
    }

    #[test]
    fn unshifted_scores_rarely_cross_and_shifted_ones_soon_do() {
        // Uniform ranks (mean ½) for 200,000 steps: a threshold of 10^5 is not reached even
        // without a tolerance worth mentioning.
        let mut rng = SplitMix64::new(3);
        let mut d = BetDetector::new(0.5, 0.01, 1e9).unwrap();
        let mut max = 0f64;
        for _ in 0..200_000 {
            d.update(rng.unit());
            max = max.max(d.evidence());
        }
        assert!(max < 1e5, "{max}");
        // Ranks averaging 0.75: over 10^5 within 300 steps.
        let mut d = BetDetector::new(0.5, 0.05, 1e9).unwrap();
        let crossed = (0..300).position(|_| {
            d.update(0.5 + 0.5 * rng.unit());
            d.evidence() >= 1e5
        });
        assert!(crossed.is_some_and(|t| t < 300), "{crossed:?}");
    }

    #[test]
    fn tolerance_absorbs_a_small_shift() {
        // Ranks averaging 0.55 against a tolerance of 0.1: the evidence stays far under a
        // threshold of 10^6.
        let mut rng = SplitMix64::new(9);
        let mut d = BetDetector::new(0.5, 0.1, 1e9).unwrap();
        let mut max = 0f64;
        for _ in 0..100_000 {
            d.update(0.1 + 0.9 * rng.unit());
            max = max.max(d.evidence());
        }
        assert!(max < 1e4, "{max}");
    }

    #[test]
    fn cap_bounds_the_statistic_and_nan_is_no_bet() {
        let mut d = BetDetector::new(0.5, 0.0, 1e3).unwrap();
        for _ in 0..1000 {
            d.update(1.0);
        }
        assert!(d.evidence() <= 1e3 && d.evidence() > 1e2);
        let before = d.evidence();
        d.update(f64::NAN);
        d.update(-1.0);
        assert_eq!(d.evidence(), before);
        assert!(BetDetector::new(0.0, 0.0, 1.0).is_none());
        assert!(BetDetector::new(0.5, f64::NAN, 1.0).is_none());
        assert!(BetDetector::new(0.5, 0.1, 0.0).is_none());
    }

    #[test]
    fn ranks_and_tails() {
        let s = [1.0, 2.0, 2.0, 3.0];
        assert_eq!(mid_rank(&s, 0.0), 0.0);
        assert_eq!(mid_rank(&s, 2.0), 0.5);
        assert_eq!(mid_rank(&s, 9.0), 1.0);
        assert!(mid_rank(&[], 1.0).is_nan());
        let sorted: Vec<f64> = (0..99).map(f64::from).collect();
        let lo = Tail::new(&sorted, 0.05, false).unwrap();
        assert_eq!((lo.cut, lo.null_rate), (4.0, 0.05));
        assert_eq!(lo.indicator(3.5), 1.0);
        assert_eq!(lo.indicator(4.0), 0.0);
        let hi = Tail::new(&sorted, 0.05, true).unwrap();
        assert_eq!(hi.cut, 94.0);
        assert_eq!(hi.indicator(94.5), 1.0);
        assert!(Tail::new(&sorted[..5], 0.05, true).is_none());
        let max = Tail::extreme(&sorted, true).unwrap();
        assert_eq!((max.cut, max.null_rate), (98.0, 0.01));
        assert_eq!(Tail::extreme(&sorted, false).unwrap().indicator(-0.5), 1.0);
        assert!(Tail::extreme(&[], true).is_none());
        assert!(hi.indicator(f64::NAN).is_nan());
    }
}
