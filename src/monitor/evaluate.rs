//! One evaluation of the window against the reference: every test, its effect size and its
//! verdict, and the label-free accuracy estimates. Pure: takes a window copy and a reference.
//!
//! A test family alerts only when its shift is both significant (p-value after Bonferroni
//! correction under `alpha`) and large (effect size at or over the family's minimum); it warns
//! when significant and at least half that large. Effect sizes: Cohen's w = √(χ²/n) for the
//! class chi-square, PSI for the PSI tests, the Jensen–Shannon distance, the KS statistic D for
//! KS tests, MMD² for embeddings. Below `min_samples` there is no verdict.

use serde::Serialize;

use super::reference::{Reference, subsample};
use super::window::{INPUT_FEATURES, WindowData};
use crate::stats;

/// The test families (the `test` label values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TestKind {
    ClassChi2,
    ClassPsi,
    ClassJs,
    BbsdKs,
    ConfidenceKs,
    ConfidencePsi,
    EntropyKs,
    EntropyPsi,
    InputKs,
    EmbeddingMmd,
    SetSizeKs,
}

impl TestKind {
    /// How many families there are.
    pub const COUNT: usize = 11;

    pub const ALL: [TestKind; Self::COUNT] = [
        TestKind::ClassChi2,
        TestKind::ClassPsi,
        TestKind::ClassJs,
        TestKind::BbsdKs,
        TestKind::ConfidenceKs,
        TestKind::ConfidencePsi,
        TestKind::EntropyKs,
        TestKind::EntropyPsi,
        TestKind::InputKs,
        TestKind::EmbeddingMmd,
        TestKind::SetSizeKs,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TestKind::ClassChi2 => "class_chi2",
            TestKind::ClassPsi => "class_psi",
            TestKind::ClassJs => "class_js",
            TestKind::BbsdKs => "bbsd_ks",
            TestKind::ConfidenceKs => "confidence_ks",
            TestKind::ConfidencePsi => "confidence_psi",
            TestKind::EntropyKs => "entropy_ks",
            TestKind::EntropyPsi => "entropy_psi",
            TestKind::InputKs => "input_ks",
            TestKind::EmbeddingMmd => "embedding_mmd",
            TestKind::SetSizeKs => "set_size_ks",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Its position in [`TestKind::ALL`] (the index of per-family arrays).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The smallest effect size that alerts, by default: the conventional magnitudes (KS D
    /// 0.2, PSI 0.2 for a significant shift, Cohen's w 0.3 for a medium one), checked with the
    /// monitor benchmark (README).
    pub fn default_min_effect(self) -> f64 {
        match self {
            TestKind::ClassChi2 => 0.3,
            TestKind::ClassJs => 0.15,
            TestKind::EmbeddingMmd => 0.05,
            TestKind::ClassPsi
            | TestKind::BbsdKs
            | TestKind::ConfidenceKs
            | TestKind::ConfidencePsi
            | TestKind::EntropyKs
            | TestKind::EntropyPsi
            | TestKind::InputKs
            | TestKind::SetSizeKs => 0.2,
        }
    }

    /// The family whose sequential detector decides this family's alert: itself, or for a
    /// family without a detector the one watching the same feature (class mix, confidence,
    /// entropy).
    pub fn sequential_family(self) -> TestKind {
        match self {
            TestKind::ClassPsi | TestKind::ClassJs => TestKind::ClassChi2,
            TestKind::ConfidencePsi => TestKind::ConfidenceKs,
            TestKind::EntropyPsi => TestKind::EntropyKs,
            other => other,
        }
    }

    /// The tolerance of the family's sequential detector by default, `None` for a family
    /// without one (PSI and JS watch what the chi-square and KS families' detectors watch).
    /// Class mix: the χ² divergence of the live mix from the reference's (Cohen's w²: 0.1 is
    /// w ≈ 0.32); the others: how far the mean mid-rank of a feature against the reference may
    /// stray from ½ (0.1 is a probability of superiority of 0.6, a small-to-medium effect).
    /// Chosen with the detection benchmark (README) on the bundled test split, which differs
    /// from the reference split by sampling alone.
    pub fn default_tolerance(self) -> Option<f64> {
        match self {
            TestKind::ClassChi2 => Some(0.1),
            TestKind::BbsdKs
            | TestKind::ConfidenceKs
            | TestKind::EntropyKs
            | TestKind::InputKs
            | TestKind::EmbeddingMmd
            | TestKind::SetSizeKs => Some(0.1),
            TestKind::ClassPsi
            | TestKind::ClassJs
            | TestKind::ConfidencePsi
            | TestKind::EntropyPsi => None,
        }
    }
}

/// A verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    InsufficientData,
    Ok,
    Warn,
    Alert,
}

impl Status {
    /// The `shiftwatch_drift_status` value.
    pub fn gauge(self) -> i64 {
        match self {
            Status::InsufficientData => -1,
            Status::Ok => 0,
            Status::Warn => 1,
            Status::Alert => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::InsufficientData => "insufficient_data",
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Alert => "alert",
        }
    }
}

/// How tests decide.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub min_samples: usize,
    pub alpha: f64,
    /// Average confidence minus the served accuracy estimate that alerts (half of it warns).
    pub overconfidence_min_effect: f64,
    /// Minimum effect size for an alert, per family (same order as [`TestKind::ALL`]).
    pub min_effect: [f64; TestKind::COUNT],
    pub mmd_permutations: usize,
    pub mmd_max_window: usize,
    pub seed: u64,
}

impl Settings {
    pub fn min_effect(&self, kind: TestKind) -> f64 {
        self.min_effect[kind.index()]
    }
}

/// One feature's result within a test.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeatureResult {
    pub feature: String,
    pub statistic: f64,
    /// After the family's Bonferroni correction.
    pub p_value: f64,
    pub effect_size: f64,
}

/// One test family's result.
#[derive(Debug, Clone, PartialEq)]
pub struct TestOutcome {
    pub kind: TestKind,
    /// The family's overall result (feature `all` for multi-feature tests).
    pub overall: FeatureResult,
    /// Per-feature results (BBSD: each class; input: each statistic), empty for single tests.
    pub features: Vec<FeatureResult>,
    pub n_window: usize,
    pub n_reference: usize,
    /// This evaluation's verdict, before hysteresis.
    pub raw: Status,
}

pub use crate::monitor::estimates::Estimates;

/// The verdict of one result: see the module docs.
pub fn verdict(
    settings: &Settings,
    kind: TestKind,
    n_window: usize,
    p: f64,
    effect: f64,
) -> Status {
    if n_window < settings.min_samples {
        return Status::InsufficientData;
    }
    let threshold = settings.min_effect(kind);
    let significant = p < settings.alpha;
    if significant && effect >= threshold {
        Status::Alert
    } else if significant && effect >= threshold / 2.0 {
        Status::Warn
    } else {
        Status::Ok
    }
}

fn sorted_f64(values: impl Iterator<Item = f32>) -> Vec<f64> {
    let mut v: Vec<f64> = values.map(f64::from).filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    v
}

/// Runs every test family that the reference and window support.
pub fn evaluate(
    reference: &Reference,
    window: &WindowData,
    settings: &Settings,
) -> (Vec<TestOutcome>, Estimates) {
    let n = window.len;
    let k = reference.labels.len();
    let mut out = Vec::with_capacity(TestKind::COUNT);
    let mut push = |kind: TestKind,
                    overall: FeatureResult,
                    features: Vec<FeatureResult>,
                    n_window: usize,
                    n_reference: usize| {
        let raw = verdict(
            settings,
            kind,
            n_window,
            overall.p_value,
            overall.effect_size,
        );
        out.push(TestOutcome {
            kind,
            overall,
            features,
            n_window,
            n_reference,
            raw,
        });
    };
    let single = |feature: &str, statistic: f64, p_value: f64, effect_size: f64| FeatureResult {
        feature: feature.to_string(),
        statistic,
        p_value,
        effect_size,
    };

    // Prediction shift on the class mix.
    let mut counts = vec![0f64; k];
    for &c in &window.class {
        if let Some(slot) = counts.get_mut(c as usize) {
            *slot += 1.0;
        }
    }
    let chi = stats::chi_square(&counts, &reference.class_ratios);
    let window_props = stats::proportions(&counts);
    let cohen_w = if n > 0 {
        (chi.statistic / n as f64).sqrt()
    } else {
        0.0
    };
    let class_psi = stats::psi(&reference.class_ratios, &window_props);
    let class_js = stats::js_distance(&reference.class_ratios, &window_props);
    push(
        TestKind::ClassChi2,
        single("predicted_class", chi.statistic, chi.p_value, cohen_w),
        vec![],
        n,
        reference.n,
    );
    push(
        TestKind::ClassPsi,
        single("predicted_class", class_psi, chi.p_value, class_psi),
        vec![],
        n,
        reference.n,
    );
    push(
        TestKind::ClassJs,
        single("predicted_class", class_js, chi.p_value, class_js),
        vec![],
        n,
        reference.n,
    );

    // BBSD: KS on each softmax output, Bonferroni over the classes.
    let mut features = Vec::with_capacity(k);
    for (c, ref_col) in reference.probability_columns.iter().enumerate() {
        let col = sorted_f64((0..n).map(|i| window.probabilities[i * k + c]));
        let r = stats::ks_2samp_sorted(&col, ref_col);
        features.push(single(
            &reference.labels[c],
            r.statistic,
            (r.p_value * k as f64).min(1.0),
            r.statistic,
        ));
    }
    push(
        TestKind::BbsdKs,
        family_overall(&features),
        features,
        n,
        reference.n,
    );

    // Confidence and entropy: KS and PSI on the reference's deciles.
    for (name, values, ref_sorted, edges, ref_props, ks_kind, psi_kind) in [
        (
            "confidence",
            &window.confidence,
            &reference.confidence_sorted,
            &reference.confidence_edges,
            &reference.confidence_proportions,
            TestKind::ConfidenceKs,
            TestKind::ConfidencePsi,
        ),
        (
            "entropy",
            &window.entropy,
            &reference.entropy_sorted,
            &reference.entropy_edges,
            &reference.entropy_proportions,
            TestKind::EntropyKs,
            TestKind::EntropyPsi,
        ),
    ] {
        let w = sorted_f64(values.iter().copied());
        let ks = stats::ks_2samp_sorted(&w, ref_sorted);
        let psi = stats::psi(ref_props, &stats::bin_proportions(&w, edges));
        push(
            ks_kind,
            single(name, ks.statistic, ks.p_value, ks.statistic),
            vec![],
            n,
            ref_sorted.len(),
        );
        push(
            psi_kind,
            single(name, psi, ks.p_value, psi),
            vec![],
            n,
            ref_sorted.len(),
        );
    }

    // Input shift: KS on each input statistic the reference has, Bonferroni over them.
    let mut features = Vec::new();
    let mut n_inputs = 0;
    let tested: Vec<usize> = (0..INPUT_FEATURES.len())
        .filter(|&f| reference.inputs_sorted[f].len() >= 2)
        .collect();
    for &f in &tested {
        let w = sorted_f64((0..n).map(|i| window.inputs[i * 6 + f]));
        n_inputs = n_inputs.max(w.len());
        if w.is_empty() {
            continue;
        }
        let r = stats::ks_2samp_sorted(&w, &reference.inputs_sorted[f]);
        features.push(single(
            INPUT_FEATURES[f],
            r.statistic,
            (r.p_value * tested.len() as f64).min(1.0),
            r.statistic,
        ));
    }
    if !tested.is_empty() {
        let n_ref = tested
            .iter()
            .map(|&f| reference.inputs_sorted[f].len())
            .min()
            .unwrap_or(0);
        push(
            TestKind::InputKs,
            family_overall(&features),
            features,
            n_inputs,
            n_ref,
        );
    }

    // Embeddings: MMD with a permutation p-value on bounded, seeded subsamples.
    if let Some((ref_rows, dim)) = &reference.embeddings
        && window.embedding_dim == *dim
    {
        let rows = window.embeddings.len() / dim;
        // The most recent rows when there are more than the bound.
        let take = rows.min(settings.mmd_max_window);
        let x = &window.embeddings[(rows - take) * dim..];
        let r = if take >= 2 {
            stats::mmd_permutation_test(
                x,
                ref_rows,
                *dim,
                reference.mmd_sigma,
                settings.mmd_permutations,
                settings.seed,
            )
        } else {
            stats::TestResult {
                statistic: 0.0,
                p_value: 1.0,
            }
        };
        push(
            TestKind::EmbeddingMmd,
            single("embedding", r.statistic, r.p_value, r.statistic.max(0.0)),
            vec![],
            take,
            ref_rows.len() / dim,
        );
    }
    let _ = subsample;

    // Prediction set sizes: KS against the reference's set sizes.
    if let Some(conformal) = &reference.conformal {
        let sizes = sorted_f64(window.set_size.iter().copied());
        if !sizes.is_empty() {
            let r = stats::ks_2samp_sorted(&sizes, &conformal.sizes_sorted);
            push(
                TestKind::SetSizeKs,
                single("prediction_set_size", r.statistic, r.p_value, r.statistic),
                vec![],
                sizes.len(),
                conformal.sizes_sorted.len(),
            );
        }
    }

    // Label-free estimates.
    let estimates = crate::monitor::estimates::estimate(reference, window, settings, &out);
    (out, estimates)
}

/// A multi-feature family's overall result: largest statistic and effect, smallest corrected p.
fn family_overall(features: &[FeatureResult]) -> FeatureResult {
    FeatureResult {
        feature: "all".into(),
        statistic: features.iter().map(|f| f.statistic).fold(0.0, f64::max),
        p_value: features.iter().map(|f| f.p_value).fold(1.0, f64::min),
        effect_size: features.iter().map(|f| f.effect_size).fold(0.0, f64::max),
    }
}

/// Hysteresis: a status rises at once and falls only after `clear_after` evaluations in a row
/// below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hysteresis {
    pub status: Status,
    calm: u32,
}

impl Default for Hysteresis {
    fn default() -> Self {
        Hysteresis {
            status: Status::InsufficientData,
            calm: 0,
        }
    }
}

impl Hysteresis {
    pub fn update(&mut self, raw: Status, clear_after: u32) -> Status {
        if raw == Status::InsufficientData
            || raw >= self.status
            || self.status == Status::InsufficientData
        {
            self.status = raw;
            self.calm = 0;
        } else {
            self.calm += 1;
            if self.calm >= clear_after {
                self.status = raw;
                self.calm = 0;
            }
        }
        self.status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hysteresis_rises_at_once_and_falls_slowly() {
        let mut h = Hysteresis::default();
        assert_eq!(h.update(Status::Ok, 3), Status::Ok);
        assert_eq!(h.update(Status::Alert, 3), Status::Alert);
        assert_eq!(h.update(Status::Ok, 3), Status::Alert);
        assert_eq!(h.update(Status::Ok, 3), Status::Alert);
        assert_eq!(
            h.update(Status::Alert, 3),
            Status::Alert,
            "a relapse resets the count"
        );
        assert_eq!(h.update(Status::Ok, 3), Status::Alert);
        assert_eq!(h.update(Status::Warn, 3), Status::Alert);
        assert_eq!(h.update(Status::Ok, 3), Status::Ok);
        assert_eq!(
            h.update(Status::InsufficientData, 3),
            Status::InsufficientData
        );
    }

    #[test]
    fn verdict_needs_significance_and_size() {
        let s = Settings {
            min_samples: 50,
            alpha: 0.01,
            overconfidence_min_effect: 0.1,
            min_effect: [0.2; TestKind::COUNT],
            mmd_permutations: 10,
            mmd_max_window: 10,
            seed: 1,
        };
        let k = TestKind::ConfidenceKs;
        assert_eq!(verdict(&s, k, 10, 0.0, 1.0), Status::InsufficientData);
        assert_eq!(
            verdict(&s, k, 1000, 1e-9, 0.05),
            Status::Ok,
            "significant but trivial"
        );
        assert_eq!(
            verdict(&s, k, 1000, 0.2, 0.9),
            Status::Ok,
            "large but not significant"
        );
        assert_eq!(verdict(&s, k, 1000, 1e-9, 0.15), Status::Warn);
        assert_eq!(verdict(&s, k, 1000, 1e-9, 0.25), Status::Alert);
    }
}
