//! Label-free accuracy estimates of a window, the overconfidence verdict and the class-mix
//! analysis (BBSE). Pure: a window copy and the prepared reference in, numbers out.
//!
//! Methods (every one listed in `/v1/monitor` and `shiftwatch_estimated_accuracy{method}`):
//! - `ac`: the mean top-1 confidence;
//! - `doc`: the reference accuracy minus the drop in mean confidence (clamped to [0, 1]);
//! - `atc`, `atc_ne`: the share of the window above a threshold fitted on the labeled
//!   reference, on the confidence and on 1 − the normalized entropy (Garg et al. 2022);
//! - `cot`: 1 − the mean cost of the optimal transport of the window's probability vectors
//!   onto the reference's true class mix (Lu et al. 2023); `cott`: the share of the window's
//!   transport costs under a threshold fitted, as ATC's, on the labeled reference's own costs;
//! - `nuclear`: the normalized nuclear norm of the window's probability matrix (Deng et al.
//!   2023) mapped to accuracy by a line fitted on the reference and its altered copies;
//! - `correctness`: the mean of the correctness model's per-prediction probabilities
//!   (`monitor::correctness`).
//!
//! The served estimate (`accuracy`, `method`) is `correctness` when at least
//! [`MIN_SCORED`] predictions of the window have a probability, else `atc`. The README's table
//! (`shiftwatch estimates`) is how it was chosen: on shifts the fit never saw, it alone stays
//! within a few points of the truth.

use serde::Serialize;

use crate::monitor::evaluate::{Settings, Status, TestKind, TestOutcome};
use crate::monitor::reference::{Reference, entropy_certainty};
use crate::monitor::window::WindowData;
use crate::stats;

/// Predictions with a correctness probability needed before `correctness` is served.
pub const MIN_SCORED: usize = 30;

/// How far below BBSE's prior-corrected accuracy the served estimate may fall in a window
/// still read as a change of class mix alone.
pub const PRIOR_CORRECTED_TOLERANCE: f64 = 0.05;

/// COT and the nuclear norm look at this many of the window's predictions at most (evenly
/// spaced): the exact transport is O(n²k).
pub const MAX_TRANSPORT_ROWS: usize = 1000;

/// Label-free estimates of the window's accuracy (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Estimates {
    /// The served estimate, in [0, 1].
    pub accuracy: Option<f64>,
    /// Which method `accuracy` is.
    pub method: Option<&'static str>,
    pub ac: Option<f64>,
    pub doc: Option<f64>,
    pub atc: Option<f64>,
    pub atc_ne: Option<f64>,
    pub cot: Option<f64>,
    pub cott: Option<f64>,
    pub nuclear: Option<f64>,
    pub correctness: Option<f64>,
    /// Average confidence minus the served estimate.
    pub overconfidence_gap: Option<f64>,
    /// The gap's verdict: significant (one-sided, at `monitor.alpha`) and at least
    /// `monitor.overconfidence_min_effect` alerts, half of it warns.
    pub overconfidence: Option<Status>,
    /// BBSE's reading of the class mix; `None` without a labeled reference.
    pub class_mix: Option<ClassMix>,
}

impl Estimates {
    /// Every method's value, by its metric label.
    pub fn methods(&self) -> [(&'static str, Option<f64>); 8] {
        [
            ("ac", self.ac),
            ("doc", self.doc),
            ("atc", self.atc),
            ("atc_ne", self.atc_ne),
            ("cot", self.cot),
            ("cott", self.cott),
            ("nuclear", self.nuclear),
            ("correctness", self.correctness),
        ]
    }
}

/// What changed, as far as the window can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShiftKind {
    InsufficientData,
    /// No class, input or embedding test alerts.
    None,
    /// The class mix changed and nothing else did: the class tests alert, while the input
    /// statistics and the neighbour distances match the reference re-weighted by BBSE's
    /// class weights, and the served accuracy estimate stays within
    /// [`PRIOR_CORRECTED_TOLERANCE`] of the prior-corrected accuracy.
    ClassMix,
    /// The inputs changed: they differ from the reference even after re-weighting, or the
    /// served estimate fell below what the class mix explains.
    Inputs,
}

/// BBSE (Lipton et al. 2018) on the window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassMix {
    /// The estimated share of each true class in the window.
    pub estimated: Vec<f64>,
    /// q(y) / p(y) against the labeled reference.
    pub weights: Vec<f64>,
    /// The accuracy the reference's per-class recall gives under the estimated mix.
    pub prior_corrected_accuracy: f64,
    pub shift: ShiftKind,
    /// The largest KS distance of the input statistics and neighbour distances from the
    /// re-weighted reference, and its p-value (the evidence for `inputs`).
    pub reweighted_ks: Option<f64>,
    pub reweighted_p_value: Option<f64>,
}

/// Evenly spaced row indices, at most `max`.
pub fn spaced(n: usize, max: usize) -> Vec<usize> {
    if n <= max {
        return (0..n).collect();
    }
    (0..max).map(|i| i * n / max).collect()
}

/// One-sided p-value that the mean of `d` is above 0 (normal approximation).
fn mean_above_zero_p(d: &[f64]) -> f64 {
    let n = d.len() as f64;
    if d.len() < 2 {
        return 1.0;
    }
    let m = d.iter().sum::<f64>() / n;
    let var = d.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0);
    let se = (var / n).sqrt();
    if se <= 0.0 {
        return if m > 0.0 { 0.0 } else { 1.0 };
    }
    stats::normal_sf(m / se)
}

/// Every estimate of the window. `outcomes`: this evaluation's test results (the class-mix
/// verdict reads the class tests').
pub fn estimate(
    reference: &Reference,
    window: &WindowData,
    settings: &Settings,
    outcomes: &[TestOutcome],
) -> Estimates {
    let n = window.len;
    let k = reference.labels.len();
    let mut e = Estimates::default();
    if n == 0 {
        return e;
    }
    let confidences: Vec<f64> = window.confidence.iter().map(|c| f64::from(*c)).collect();
    let ac = stats::mean(&confidences);
    e.ac = Some(ac);
    let scored: Vec<(f64, f64)> = (0..n)
        .filter_map(|i| {
            let c = window.correct(i);
            c.is_finite().then(|| (confidences[i], f64::from(c)))
        })
        .collect();
    if !scored.is_empty() {
        e.correctness = Some(scored.iter().map(|(_, p)| p).sum::<f64>() / scored.len() as f64);
    }
    let rows = spaced(n, MAX_TRANSPORT_ROWS);
    let probs: Vec<f32> = rows
        .iter()
        .flat_map(|&i| window.probabilities[i * k..(i + 1) * k].iter().copied())
        .collect();
    let mut atc_pairs: Vec<(f64, f64)> = Vec::new();
    if let Some(l) = &reference.labeled {
        e.doc = Some(stats::doc_estimate(l.accuracy, l.mean_confidence, ac).clamp(0.0, 1.0));
        e.atc = Some(stats::atc_estimate(l.atc_threshold, &confidences));
        let certainty: Vec<f64> = window
            .entropy
            .iter()
            .map(|h| entropy_certainty(f64::from(*h), k))
            .collect();
        e.atc_ne = Some(stats::atc_estimate(l.atc_ne_threshold, &certainty));
        if let Some(c) = stats::estimate::cot(&probs, k, &l.label_prior) {
            e.cot = Some(c.accuracy);
            let fits: Vec<f64> = c.costs.iter().map(|cost| 1.0 - cost).collect();
            e.cott = l.cott_threshold.map(|t| stats::atc_estimate(t, &fits));
        }
        e.nuclear = l.nuclear_fit.and_then(|(a, b)| {
            stats::estimate::nuclear_norm_score(&probs, k).map(|s| (a + b * s).clamp(0.0, 1.0))
        });
        atc_pairs = confidences
            .iter()
            .map(|c| (*c, f64::from(u8::from(*c > l.atc_threshold))))
            .collect();
    }
    // The served estimate and the overconfidence verdict on the same per-prediction pairs.
    let pairs = if scored.len() >= MIN_SCORED {
        e.accuracy = e.correctness;
        e.method = Some("correctness");
        scored
    } else if e.atc.is_some() {
        e.accuracy = e.atc;
        e.method = Some("atc");
        atc_pairs
    } else {
        Vec::new()
    };
    if reference.labeled.is_some() {
        e.class_mix = class_mix(reference, window, settings, outcomes, e.accuracy);
    }
    if let Some(acc) = e.accuracy {
        let gap = pairs.iter().map(|(c, _)| c).sum::<f64>() / pairs.len().max(1) as f64 - acc;
        e.overconfidence_gap = Some(gap);
        let d: Vec<f64> = pairs.iter().map(|(c, p)| c - p).collect();
        let p = mean_above_zero_p(&d);
        let min = settings.overconfidence_min_effect;
        e.overconfidence = Some(if pairs.len() < settings.min_samples {
            Status::InsufficientData
        } else if p < settings.alpha && gap >= min {
            Status::Alert
        } else if p < settings.alpha && gap >= min / 2.0 {
            Status::Warn
        } else {
            Status::Ok
        });
    }
    e
}

/// BBSE's class mix and what kind of shift the window shows.
fn class_mix(
    reference: &Reference,
    window: &WindowData,
    settings: &Settings,
    outcomes: &[TestOutcome],
    served: Option<f64>,
) -> Option<ClassMix> {
    let l = reference.labeled.as_ref()?;
    let k = reference.labels.len();
    let mut counts = vec![0f64; k];
    for c in &window.class {
        if let Some(x) = counts.get_mut(*c as usize) {
            *x += 1.0;
        }
    }
    let mix = stats::proportions(&counts);
    let b = stats::estimate::bbse(&l.confusion, k, &mix)?;
    // The window against the reference re-weighted by the class weights: what label shift
    // alone predicts the inputs and the neighbour distances look like.
    let row_weight = |row: usize| l.truth.get(row).map_or(0.0, |t| b.weights[*t]);
    let mut worst: Option<(f64, f64)> = None;
    let mut consider = |window_values: Vec<f64>, reference_values: Vec<(f64, f64)>| {
        let mut w: Vec<f64> = window_values
            .into_iter()
            .filter(|v| v.is_finite())
            .collect();
        w.sort_by(f64::total_cmp);
        let (values, weights): (Vec<f64>, Vec<f64>) = reference_values
            .into_iter()
            .filter(|(v, _)| v.is_finite())
            .unzip();
        if w.len() < settings.min_samples {
            return;
        }
        if let Some(r) = stats::estimate::weighted_ks(&w, &values, &weights) {
            let p = (r.p_value * 4.0).min(1.0); // Bonferroni over the four features
            if worst.is_none_or(|(d, _)| r.statistic > d) {
                worst = Some((r.statistic, p));
            }
        }
    };
    for (j, feature) in [0usize, 1, 2].into_iter().enumerate() {
        let window_values = (0..window.len)
            .map(|i| f64::from(window.inputs[i * 6 + feature]))
            .collect();
        let reference_values = l.inputs[j]
            .iter()
            .enumerate()
            .map(|(row, v)| (*v, row_weight(row)))
            .collect();
        consider(window_values, reference_values);
    }
    if let Some(index) = &reference.neighbors
        && window.all_embedded()
        && !l.neighbor_rows.is_empty()
    {
        let dim = window.embedding_dim;
        let rows = spaced(window.len, MAX_TRANSPORT_ROWS);
        let window_values = rows
            .iter()
            .map(|&i| {
                index
                    .nearest(&window.embeddings[i * dim..(i + 1) * dim], 5, None)
                    .get(4)
                    .map_or(f64::NAN, |n| n.distance)
            })
            .collect();
        let reference_values = l
            .neighbor_rows
            .iter()
            .map(|(row, d)| (*d, row_weight(*row)))
            .collect();
        consider(window_values, reference_values);
    }
    let class_alert = outcomes
        .iter()
        .filter(|o| o.kind == TestKind::ClassChi2)
        .any(|o| matches!(o.raw, Status::Alert | Status::Warn));
    // Label shift alone leaves each class's accuracy as it was: the served estimate stays
    // with the accuracy the reference's recall gives under the estimated mix.
    let accuracy_fell =
        served.is_some_and(|a| a < b.prior_corrected_accuracy - PRIOR_CORRECTED_TOLERANCE);
    let inputs_moved = accuracy_fell
        || worst.is_some_and(|(d, p)| {
            p < settings.alpha && d >= settings.min_effect(TestKind::InputKs)
        });
    let shift = if window.len < settings.min_samples || worst.is_none() {
        ShiftKind::InsufficientData
    } else if inputs_moved {
        ShiftKind::Inputs
    } else if class_alert {
        ShiftKind::ClassMix
    } else {
        ShiftKind::None
    };
    Some(ClassMix {
        estimated: b.class_mix,
        weights: b.weights,
        prior_corrected_accuracy: b.prior_corrected_accuracy,
        shift,
        reweighted_ks: worst.map(|(d, _)| d),
        reweighted_p_value: worst.map(|(_, p)| p),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::reference::tests::toy_profile;

    fn settings() -> Settings {
        Settings {
            min_samples: 50,
            alpha: 0.01,
            overconfidence_min_effect: 0.1,
            min_effect: TestKind::ALL.map(TestKind::default_min_effect),
            mmd_permutations: 20,
            mmd_max_window: 100,
            seed: 3,
        }
    }

    /// A window of the toy reference's rows `rows`, brightness moved by `shift`, each with the
    /// correctness probability `correct`.
    fn window(rows: &[usize], shift: f32, correct: f32) -> WindowData {
        let p = toy_profile();
        let mut d = WindowData {
            classes: 2,
            embedding_dim: 2,
            ..WindowData::default()
        };
        for (t, &i) in rows.iter().enumerate() {
            let probs = &p.probabilities[i];
            let s = crate::prediction::summarize(probs);
            d.len += 1;
            d.ts_us.push(t as i64);
            d.class.push(s.class as u32);
            d.confidence.push(s.confidence);
            d.entropy.push(s.entropy);
            d.probabilities.extend_from_slice(probs);
            let mut inputs = [f32::NAN; 6];
            inputs[0] = p.inputs["brightness"][i] + shift;
            d.inputs.extend_from_slice(&inputs);
            d.embeddings
                .extend_from_slice(&p.embeddings.as_ref().unwrap()[i]);
            d.set_size.push(f32::NAN);
            d.correct.push(correct);
        }
        d
    }

    fn reference() -> Reference {
        Reference::prepare(&toy_profile(), false, 1).unwrap()
    }

    #[test]
    fn served_is_the_correctness_mean_and_falls_back_to_atc() {
        let r = reference();
        let all: Vec<usize> = (0..200).collect();
        let (_, e) = crate::monitor::evaluate::evaluate(&r, &window(&all, 0.0, 0.8), &settings());
        assert_eq!(e.method, Some("correctness"));
        assert!((e.accuracy.unwrap() - 0.8).abs() < 1e-6, "{e:?}");
        // Without per-prediction probabilities: ATC, whose estimate on the reference itself
        // is the reference's accuracy.
        let (_, e) =
            crate::monitor::evaluate::evaluate(&r, &window(&all, 0.0, f32::NAN), &settings());
        assert_eq!(e.method, Some("atc"));
        assert_eq!(e.accuracy, e.atc);
        assert!((e.accuracy.unwrap() - 0.9).abs() < 1e-9, "{e:?}");
        // Every method is listed, each in [0, 1].
        for (m, v) in e.methods() {
            // No correctness model in the toy profile: neither it nor the nuclear-norm line.
            if m == "correctness" || m == "nuclear" {
                assert_eq!(v, None);
                continue;
            }
            let v = v.unwrap_or_else(|| panic!("{m} missing"));
            assert!((0.0..=1.0).contains(&v), "{m} = {v}");
        }
    }

    #[test]
    fn overconfidence_alerts_when_confidence_exceeds_the_estimate() {
        let r = reference();
        let all: Vec<usize> = (0..200).collect();
        // Mean confidence 0.75; estimated accuracy 0.3: confidently wrong.
        let (_, e) = crate::monitor::evaluate::evaluate(&r, &window(&all, 0.0, 0.3), &settings());
        assert!((e.overconfidence_gap.unwrap() - (e.ac.unwrap() - 0.3)).abs() < 1e-6);
        assert_eq!(e.overconfidence, Some(Status::Alert), "{e:?}");
        // Estimated accuracy 0.68, seven points under confidence: half the minimum warns.
        let (_, e) = crate::monitor::evaluate::evaluate(&r, &window(&all, 0.0, 0.68), &settings());
        assert_eq!(e.overconfidence, Some(Status::Warn), "{e:?}");
        // Underconfident: ok.
        let (_, e) = crate::monitor::evaluate::evaluate(&r, &window(&all, 0.0, 0.9), &settings());
        assert_eq!(e.overconfidence, Some(Status::Ok), "{e:?}");
        // Too few predictions: no verdict.
        let (_, e) =
            crate::monitor::evaluate::evaluate(&r, &window(&all[..40], 0.0, 0.3), &settings());
        assert_eq!(e.overconfidence, Some(Status::InsufficientData), "{e:?}");
    }

    #[test]
    fn a_class_mix_change_is_told_from_an_input_change() {
        let r = reference();
        // A label shift: only images of true class 0 (every one predicted right). The class
        // tests alert; the brightness and the embeddings are those of the reference's class-0
        // rows.
        let truth = toy_profile().true_classes.unwrap();
        let class0: Vec<usize> = (0..200).filter(|i| truth[*i] == 0).collect();
        let zeros: Vec<usize> = class0.iter().chain(&class0).copied().collect();
        let (_, e) =
            crate::monitor::evaluate::evaluate(&r, &window(&zeros, 0.0, 0.98), &settings());
        let mix = e.class_mix.expect("labeled reference");
        assert_eq!(mix.shift, ShiftKind::ClassMix, "{mix:?}");
        assert!(mix.estimated[0] > 0.95, "{mix:?}");
        assert!(mix.prior_corrected_accuracy > 0.97, "{mix:?}");
        // The same rows, brighter: the inputs changed.
        let (_, e) =
            crate::monitor::evaluate::evaluate(&r, &window(&zeros, 0.2, 0.98), &settings());
        assert_eq!(e.class_mix.unwrap().shift, ShiftKind::Inputs);
        // The same rows with the estimate fallen far below what the mix explains.
        let (_, e) = crate::monitor::evaluate::evaluate(&r, &window(&zeros, 0.0, 0.6), &settings());
        assert_eq!(e.class_mix.unwrap().shift, ShiftKind::Inputs);
        // The reference itself: nothing changed.
        let all: Vec<usize> = (0..200).collect();
        let (_, e) = crate::monitor::evaluate::evaluate(&r, &window(&all, 0.0, 0.9), &settings());
        assert_eq!(e.class_mix.unwrap().shift, ShiftKind::None);
    }
}
