//! The statistics behind the monitor: two-sample tests for shift, distances between
//! distributions, calibration metrics and label-free accuracy estimates.
//!
//! Pure: functions of slices, no IO, no global state. Every definition follows DESIGN.md
//! ("Statistics") and is checked against scipy, scikit-learn or a plain numpy implementation on
//! the committed fixture `tests/data/statistics_fixture.json`, written by
//! `tests/data/make_statistics_fixture.py` (run `.venv/bin/python tests/data/make_statistics_fixture.py`
//! from the repository root).
//!
//! Degenerate input never panics. A result that is undefined for its input (an empty sample,
//! slices of different lengths, a NaN inside, a parameter out of range) is NaN, or a
//! [`TestResult`] whose statistic and p-value are both NaN; each function's documentation names
//! the exceptions (for instance a temperature falls back to 1, the identity).
//!
//! Built on statrs where it has the thing: the chi-square distribution ([`chi2_sf`]), ln n!
//! (in the Kolmogorov distribution), the mean, the standard deviation and the median. The rest
//! is hand-written because statrs lacks it or gets it wrong for these fixtures, each said where
//! it is: the Kolmogorov distribution and the two-sample KS p-value (`kolmogorov`), the
//! chi-square test's p-value in the far tail ([`chi_square`]), numpy's linear quantiles
//! ([`decile_edges`]). PSI, Jensen–Shannon, Wasserstein, MMD, the calibration metrics and the
//! temperature fit, conformal sets, e-detectors, nearest neighbours and whitening have no statrs
//! counterpart.
//!
//! Map:
//! - `kolmogorov`: the two-sample Kolmogorov–Smirnov test and the distribution of the
//!   Kolmogorov statistic D_n;
//! - `shift`: chi-square goodness of fit on class counts (the distribution from statrs), PSI,
//!   decile bins, Jensen–Shannon, Wasserstein;
//! - `mmd`: maximum mean discrepancy with a permutation p-value;
//! - `calibration`: reliability bins, ECE, adaptive ECE, MCE, Brier, NLL, temperature
//!   scaling, ATC and DoC;
//! - `sequential`: Shiryaev–Roberts e-detectors (sequential change detection by betting),
//!   mid-ranks and reference tails (checked against `tests/data/sequential_fixture.json`,
//!   written by `tests/data/make_sequential_fixture.py`);
//! - `conformal`: randomized APS prediction sets (same fixture);
//! - `knn`: exact nearest-neighbour search and Mahalanobis whitening (checked against
//!   `tests/data/knn_fixture.json`, written by `tests/data/make_knn_fixture.py`).

pub mod boost;
mod calibration;
pub mod conformal;
pub mod estimate;
pub mod knn;
mod kolmogorov;
mod mmd;
pub mod random;
pub mod sequential;
mod shift;

#[cfg(test)]
pub(crate) mod fixture;

pub use calibration::{
    PROBABILITY_FLOOR, ReliabilityBin, TEMPERATURE_RANGE, adaptive_ece, apply_temperature,
    atc_estimate, atc_threshold, brier, doc_estimate, ece, fit_temperature, mce, nll,
    reliability_bins,
};
pub use kolmogorov::{kolmogorov_sf, ks_2samp, ks_2samp_sorted};
pub use mmd::{median_heuristic_sigma, mmd_permutation_test, mmd2_unbiased};
pub use shift::{
    PROPORTION_FLOOR, bin_proportions, chi_square, chi2_sf, decile_edges, js_distance, proportions,
    psi, wasserstein_distance, wasserstein_normalized,
};

/// The outcome of a hypothesis test: its statistic and p-value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TestResult {
    pub statistic: f64,
    pub p_value: f64,
}

impl TestResult {
    /// The result of a test whose input does not define it (empty sample, NaN inside).
    pub const UNDEFINED: TestResult = TestResult {
        statistic: f64::NAN,
        p_value: f64::NAN,
    };

    /// Whether both the statistic and the p-value are numbers.
    pub fn is_defined(&self) -> bool {
        !self.statistic.is_nan() && !self.p_value.is_nan()
    }
}

/// P(Z > z) for a standard normal Z (statrs's normal distribution).
pub fn normal_sf(z: f64) -> f64 {
    use statrs::distribution::{ContinuousCDF, Normal};
    if z.is_nan() {
        return f64::NAN;
    }
    Normal::standard().sf(z)
}

/// Arithmetic mean (statrs's running mean); NaN for an empty slice (and when a value is NaN).
pub fn mean(values: &[f64]) -> f64 {
    statrs::statistics::Statistics::mean(values)
}

/// Population standard deviation (ddof = 0, as `numpy.std`; statrs's running moments); NaN for
/// an empty slice.
fn population_std(values: &[f64]) -> f64 {
    statrs::statistics::Statistics::population_std_dev(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_std_follow_numpy() {
        let fixture = fixture::load();
        for case in fixture["mean"].as_array().unwrap() {
            let values = fixture::f64s(&case["values"]);
            fixture::assert_close(mean(&values), fixture::number(&case["mean"]), 1e-12, "mean");
            fixture::assert_close(
                population_std(&values),
                fixture::number(&case["std"]),
                1e-12,
                "std",
            );
        }
        assert!(mean(&[]).is_nan());
        assert!(mean(&[1.0, f64::NAN]).is_nan());
    }

    #[test]
    fn undefined_result_is_nan() {
        assert!(!TestResult::UNDEFINED.is_defined());
        let ok = TestResult {
            statistic: 0.0,
            p_value: 1.0,
        };
        assert!(ok.is_defined());
    }
}
