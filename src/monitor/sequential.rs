//! The sequential detectors: one e-detector per test family, fed every prediction once, in
//! arrival order, and checked at every evaluation. Pure: takes rows and the reference.
//!
//! The guarantee: the average run length to a false alarm of the whole monitor (any family) is
//! at least `monitor.run_length` predictions of traffic that matches the reference up to the
//! tolerances. Each family's evidence is a Shiryaev–Roberts e-detector
//! ([`crate::stats::sequential`]) averaged over its components; the families' evidences are
//! compared with `F × run_length` (F families with a detector), so any family over its threshold
//! puts the average of all F over `run_length`, and that average is itself an e-detector.
//!
//! Components, each a score per prediction with a known mean on reference-like traffic:
//! - `class_chi2`: the likelihood ratio q̂(c)/π(c) of the predicted class, q̂ an exponentially
//!   weighted estimate of the live class mix made before the prediction was seen, π the
//!   reference mix (mean 1; the tolerance is in χ²-divergence units);
//! - `bbsd_ks` (each class's probability), `confidence_ks`, `entropy_ks`, `input_ks` (each input
//!   statistic the reference has), `embedding_mmd` (the distance to the 5th nearest reference
//!   embedding) and `set_size_ks` (the prediction set's size): the mid-rank of the value
//!   among the reference's (mean ½) in the direction(s) a shift can take, and the indicators of
//!   the reference's `tail_quantile` tail (mean k/(n + 1)) and of its most extreme value (mean
//!   1/(n + 1)) where a shift sends values out of the reference's range (low confidence, high
//!   entropy, both ends of an input statistic, far embeddings, large sets). Ranks bet beyond the
//!   family's tolerance, tails beyond `tail_tolerance`, extremes beyond `extreme_tolerance`. A
//!   feature the reference holds constant
//!   (an image size) gets its tails only.

use serde::Serialize;

use super::evaluate::{Status, TestKind};
use super::reference::Reference;
use super::window::WindowData;
use crate::stats::PROPORTION_FLOOR;
use crate::stats::sequential::{BetDetector, Tail, mid_rank};

/// How the sequential detectors decide (`[monitor]` run_length, tail_quantile, tail_tolerance,
/// `[monitor.tolerance]`).
#[derive(Debug, Clone, PartialEq)]
pub struct SequentialSettings {
    /// The average run length to a false alarm, in predictions.
    pub run_length: f64,
    pub tail_quantile: f64,
    pub tail_tolerance: f64,
    /// How far over 1/(n + 1) the share of predictions beyond the reference's most extreme
    /// value must be before a bet on it wins.
    pub extreme_tolerance: f64,
    /// Per family (order of [`TestKind::ALL`]); `None` for a family without a detector.
    pub tolerance: [Option<f64>; TestKind::COUNT],
    /// The weight of each new prediction in the class-mix estimate.
    pub class_mix_rate: f64,
}

impl Default for SequentialSettings {
    fn default() -> Self {
        SequentialSettings {
            run_length: 1e6,
            tail_quantile: 0.02,
            tail_tolerance: 0.02,
            extreme_tolerance: 0.01,
            tolerance: TestKind::ALL.map(TestKind::default_tolerance),
            class_mix_rate: 1.0 / 32.0,
        }
    }
}

/// How far over the threshold the evidence may climb: it falls back under the threshold
/// within a bounded time once a shift is over.
const CAP_OVER_THRESHOLD: f64 = 1e3;

/// What a component measures on a prediction.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Feature {
    Confidence,
    Entropy,
    Probability(usize),
    Input(usize),
    NeighborDistance,
    SetSize,
}

/// How a component scores its feature.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Score {
    /// Mid-rank among the reference's values (higher values bet).
    RankUp,
    /// One minus the mid-rank (lower values bet).
    RankDown,
    Tail(Tail),
}

#[derive(Debug, Clone)]
struct Component {
    feature: Feature,
    /// The reference's values of the feature, sorted (index into `Family::references`).
    reference: usize,
    score: Score,
    detector: BetDetector,
}

#[derive(Debug, Clone)]
struct ClassMix {
    /// Reference mix, floored and renormalised.
    reference: Vec<f64>,
    /// The live mix as estimated before the current prediction.
    estimate: Vec<f64>,
    detector: BetDetector,
}

#[derive(Debug, Clone)]
struct Family {
    kind: TestKind,
    tolerance: f64,
    references: Vec<Vec<f64>>,
    components: Vec<Component>,
    class_mix: Option<ClassMix>,
    alarms: u64,
    alarm_at_us: Option<i64>,
    above: bool,
}

impl Family {
    fn evidence(&self) -> f64 {
        let n = self.components.len() + usize::from(self.class_mix.is_some());
        if n == 0 {
            return 0.0;
        }
        let sum: f64 = self
            .components
            .iter()
            .map(|c| c.detector.evidence())
            .sum::<f64>()
            + self
                .class_mix
                .as_ref()
                .map_or(0.0, |m| m.detector.evidence());
        sum / n as f64
    }
}

/// One family's sequential state, as `/v1/monitor` reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SequentialReport {
    pub test: &'static str,
    pub evidence: f64,
    pub threshold: f64,
    pub tolerance: f64,
    /// `alert` while the evidence is at or over the threshold, `ok` otherwise.
    pub status: Status,
    /// Alarms (upward crossings seen at an evaluation) since the monitor started.
    pub alarms: u64,
    /// When the last alarm was raised (RFC 3339), if any.
    pub alarm_at: Option<String>,
    /// Score streams averaged into the evidence.
    pub components: usize,
}

/// A newly raised alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alarm {
    pub kind: TestKind,
}

/// Every family's detector for one model version.
#[derive(Debug, Clone)]
pub struct Sequential {
    families: Vec<Family>,
    threshold: f64,
    run_length: f64,
    classes: usize,
    class_mix_rate: f64,
    seen: u64,
    skipped: u64,
}

impl Sequential {
    /// The detectors that `reference` supports.
    pub fn new(reference: &Reference, settings: &SequentialSettings) -> Self {
        let k = reference.labels.len();
        let q = settings.tail_quantile;
        let tail_tolerance = settings.tail_tolerance;
        let extreme_tolerance = settings.extreme_tolerance;
        // Threshold and cap depend on the number of families: fixed below, detectors rebuilt.
        let build = |cap: f64| -> Vec<Family> {
            let mut out = Vec::new();
            for kind in TestKind::ALL {
                let Some(tolerance) = settings.tolerance[kind.index()] else {
                    continue;
                };
                let mut f = Family {
                    kind,
                    tolerance,
                    references: Vec::new(),
                    components: Vec::new(),
                    class_mix: None,
                    alarms: 0,
                    alarm_at_us: None,
                    above: false,
                };
                let add = |f: &mut Family, feature: Feature, values: &[f64], scores: &[&str]| {
                    if values.len() < 2 {
                        return;
                    }
                    // A feature the reference holds constant (an image size) has no ranks to
                    // bet on: only its tails, where any other value lands.
                    let constant = values[0] == values[values.len() - 1];
                    let reference = f.references.len();
                    f.references.push(values.to_vec());
                    for s in scores {
                        if constant && matches!(*s, "up" | "down") {
                            continue;
                        }
                        let (score, detector) = match *s {
                            "up" => (Score::RankUp, BetDetector::new(0.5, tolerance, cap)),
                            "down" => (Score::RankDown, BetDetector::new(0.5, tolerance, cap)),
                            tail => match match tail {
                                "min" => {
                                    Tail::extreme(values, false).map(|t| (t, extreme_tolerance))
                                }
                                "max" => {
                                    Tail::extreme(values, true).map(|t| (t, extreme_tolerance))
                                }
                                _ => Tail::new(values, q, tail == "high")
                                    .map(|t| (t, tail_tolerance)),
                            } {
                                Some((t, tolerance)) => (
                                    Score::Tail(t),
                                    BetDetector::new(t.null_rate, tolerance, cap),
                                ),
                                None => continue,
                            },
                        };
                        if let Some(detector) = detector {
                            f.components.push(Component {
                                feature,
                                reference,
                                score,
                                detector,
                            });
                        }
                    }
                };
                match kind {
                    TestKind::ClassChi2 => {
                        let floored: Vec<f64> = reference
                            .class_ratios
                            .iter()
                            .map(|r| r.max(PROPORTION_FLOOR))
                            .collect();
                        let sum: f64 = floored.iter().sum();
                        let mix: Vec<f64> = floored.iter().map(|r| r / sum).collect();
                        if let Some(detector) = BetDetector::new(1.0, tolerance, cap)
                            && k > 1
                        {
                            f.class_mix = Some(ClassMix {
                                estimate: mix.clone(),
                                reference: mix,
                                detector,
                            });
                        }
                    }
                    TestKind::BbsdKs => {
                        for (c, column) in reference.probability_columns.iter().enumerate() {
                            add(&mut f, Feature::Probability(c), column, &["up", "down"]);
                        }
                    }
                    TestKind::ConfidenceKs => add(
                        &mut f,
                        Feature::Confidence,
                        &reference.confidence_sorted,
                        &["low", "min", "down", "up"],
                    ),
                    TestKind::EntropyKs => add(
                        &mut f,
                        Feature::Entropy,
                        &reference.entropy_sorted,
                        &["high", "max", "up", "down"],
                    ),
                    TestKind::InputKs => {
                        for (i, values) in reference.inputs_sorted.iter().enumerate() {
                            add(
                                &mut f,
                                Feature::Input(i),
                                values,
                                &["low", "high", "min", "max", "up", "down"],
                            );
                        }
                    }
                    TestKind::EmbeddingMmd => add(
                        &mut f,
                        Feature::NeighborDistance,
                        &reference.neighbor_distances_sorted,
                        &["high", "max", "up"],
                    ),
                    TestKind::SetSizeKs => {
                        if let Some(c) = &reference.conformal {
                            add(
                                &mut f,
                                Feature::SetSize,
                                &c.sizes_sorted,
                                &["high", "max", "up"],
                            );
                        }
                    }
                    TestKind::ClassPsi
                    | TestKind::ClassJs
                    | TestKind::ConfidencePsi
                    | TestKind::EntropyPsi => {}
                }
                if !f.components.is_empty() || f.class_mix.is_some() {
                    out.push(f);
                }
            }
            out
        };
        let count = build(1.0).len().max(1);
        let threshold = settings.run_length * count as f64;
        Sequential {
            families: build(threshold * CAP_OVER_THRESHOLD),
            threshold,
            run_length: settings.run_length,
            classes: k,
            class_mix_rate: settings.class_mix_rate.clamp(1e-6, 1.0),
            seen: 0,
            skipped: 0,
        }
    }

    /// The evidence every family's alarm needs: `run_length` × the number of families.
    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    pub fn run_length(&self) -> f64 {
        self.run_length
    }

    /// Rows fed so far (the window's push count at the last feed).
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Rows that scrolled out of the window before the monitor thread saw them.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The families with a detector.
    pub fn kinds(&self) -> impl Iterator<Item = TestKind> + '_ {
        self.families.iter().map(|f| f.kind)
    }

    /// Feeds new rows, in order; `pushed` and `skipped` come from the window.
    pub fn feed(&mut self, rows: &WindowData, reference: &Reference, pushed: u64, skipped: u64) {
        self.seen = pushed;
        self.skipped += skipped;
        if rows.classes != self.classes {
            return;
        }
        let k = self.classes;
        let embedded = rows.all_embedded();
        let dim = rows.embedding_dim;
        for i in 0..rows.len {
            let class = rows.class[i] as usize;
            let probabilities = &rows.probabilities[i * k..(i + 1) * k];
            let inputs = &rows.inputs[i * 6..(i + 1) * 6];
            let mut distance = None;
            for family in &mut self.families {
                if let Some(mix) = &mut family.class_mix {
                    if let (Some(q), Some(p)) = (mix.estimate.get(class), mix.reference.get(class))
                    {
                        mix.detector.update(q / p);
                    }
                    let rate = self.class_mix_rate;
                    for (c, q) in mix.estimate.iter_mut().enumerate() {
                        *q = (1.0 - rate) * *q + if c == class { rate } else { 0.0 };
                    }
                }
                for comp in &mut family.components {
                    let x = match comp.feature {
                        Feature::Confidence => f64::from(rows.confidence[i]),
                        Feature::Entropy => f64::from(rows.entropy[i]),
                        Feature::Probability(c) => f64::from(probabilities[c]),
                        Feature::Input(f) => f64::from(inputs[f]),
                        Feature::NeighborDistance => *distance.get_or_insert_with(|| {
                            if embedded {
                                reference
                                    .neighbor_distance(&rows.embeddings[i * dim..(i + 1) * dim])
                            } else {
                                f64::NAN
                            }
                        }),
                        Feature::SetSize => f64::from(rows.set_size(i)),
                    };
                    if !x.is_finite() {
                        continue;
                    }
                    let values = &family.references[comp.reference];
                    let s = match comp.score {
                        Score::RankUp => mid_rank(values, x),
                        Score::RankDown => 1.0 - mid_rank(values, x),
                        Score::Tail(t) => t.indicator(x),
                    };
                    comp.detector.update(s);
                }
            }
        }
    }

    /// Checks every family against the threshold at `now_us`: the alarms raised since the last
    /// check (an upward crossing), and every family's report.
    pub fn check(&mut self, now_us: i64) -> (Vec<Alarm>, Vec<SequentialReport>) {
        let mut alarms = Vec::new();
        let mut reports = Vec::with_capacity(self.families.len());
        for f in &mut self.families {
            let evidence = f.evidence();
            let above = evidence >= self.threshold;
            if above && !f.above {
                f.alarms += 1;
                f.alarm_at_us = Some(now_us);
                alarms.push(Alarm { kind: f.kind });
            }
            f.above = above;
            reports.push(SequentialReport {
                test: f.kind.as_str(),
                evidence,
                threshold: self.threshold,
                tolerance: f.tolerance,
                status: if above { Status::Alert } else { Status::Ok },
                alarms: f.alarms,
                alarm_at: f.alarm_at_us.map(crate::time::rfc3339),
                components: f.components.len() + usize::from(f.class_mix.is_some()),
            });
        }
        (alarms, reports)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::monitor::reference::{FORMAT, ReferenceProfile};
    use crate::monitor::window::{Observation, Window};
    use crate::prediction::{entropy, summarize};
    use crate::stats::conformal::Regularization;
    use crate::stats::random::SplitMix64;

    /// One synthetic prediction: class c with probability in 0.6..1, brightness uniform
    /// (+ `brightness_shift`), an embedding near the class's corner.
    struct Draw {
        probabilities: Vec<f32>,
        inputs: [f32; 6],
        embedding: Vec<f32>,
        truth: usize,
    }

    fn draw(rng: &mut SplitMix64, class: usize, brightness_shift: f32) -> Draw {
        let top = 0.6 + 0.4 * rng.unit() as f32;
        let mut p = vec![(1.0 - top) / 2.0; 3];
        p[class] = top;
        Draw {
            probabilities: p,
            inputs: [
                rng.unit() as f32 + brightness_shift,
                0.5 + 0.1 * rng.unit() as f32,
                f32::NAN,
                f32::NAN,
                8.0,
                8.0,
            ],
            embedding: vec![
                class as f32 + 0.3 * rng.unit() as f32,
                0.3 * rng.unit() as f32,
            ],
            truth: class,
        }
    }

    fn reference() -> Reference {
        let mut rng = SplitMix64::new(1);
        let draws: Vec<Draw> = (0..600).map(|i| draw(&mut rng, i % 3, 0.0)).collect();
        let mut inputs = BTreeMap::new();
        for (f, name) in ["brightness", "contrast", "width", "height"]
            .iter()
            .enumerate()
        {
            let idx = [0, 1, 4, 5][f];
            inputs.insert(
                name.to_string(),
                draws.iter().map(|d| d.inputs[idx]).collect(),
            );
        }
        let profile = ReferenceProfile {
            format: FORMAT.into(),
            model: "toy".into(),
            model_version: "0123456789ab".into(),
            labels: vec!["a".into(), "b".into(), "c".into()],
            n_images: 600,
            probabilities: draws.iter().map(|d| d.probabilities.clone()).collect(),
            true_classes: Some(draws.iter().map(|d| d.truth).collect()),
            inputs,
            embeddings: Some(draws.iter().map(|d| d.embedding.clone()).collect()),
            descriptors: None,
            correctness: None,
            summary: None,
        };
        let mut r = Reference::prepare(&profile, false, 1).unwrap();
        let reg = Regularization {
            penalty: 0.01,
            free_ranks: 1,
        };
        r.calibrate_prediction_sets(&profile, 0.9, reg, true, 1)
            .unwrap();
        r
    }

    /// Feeds `n` draws in blocks of 50; returns the first alarm's family and position.
    fn run(
        seq: &mut Sequential,
        r: &Reference,
        n: usize,
        rng: &mut SplitMix64,
        mut class: impl FnMut(&mut SplitMix64) -> usize,
        brightness_shift: f32,
    ) -> Option<(TestKind, usize)> {
        let mut block = Window::new(50, 3, 2);
        for i in 0..n {
            let c = class(rng);
            let d = draw(rng, c, brightness_shift);
            let s = summarize(&d.probabilities);
            let set = r
                .conformal
                .as_ref()
                .unwrap()
                .set(&d.probabilities, &i.to_string());
            block.push(&Observation {
                ts_us: i as i64,
                class: s.class,
                confidence: s.confidence,
                entropy: entropy(&d.probabilities),
                probabilities: &d.probabilities,
                inputs: d.inputs,
                embedding: Some(&d.embedding),
                set_size: set.len() as f32,
                correct: f32::NAN,
            });
            if (i + 1) % 50 == 0 {
                let fresh = block.since(seq.seen());
                seq.feed(&fresh.data, r, fresh.pushed, fresh.skipped);
                if let Some(a) = seq.check(i as i64).0.first() {
                    return Some((a.kind, i + 1));
                }
            }
        }
        None
    }

    #[test]
    fn families_and_threshold() {
        let r = reference();
        let seq = Sequential::new(&r, &SequentialSettings::default());
        let kinds: Vec<&str> = seq.kinds().map(TestKind::as_str).collect();
        assert_eq!(
            kinds,
            [
                "class_chi2",
                "bbsd_ks",
                "confidence_ks",
                "entropy_ks",
                "input_ks",
                "embedding_mmd",
                "set_size_ks"
            ]
        );
        assert_eq!(seq.threshold(), 7e6);
        let mut off = SequentialSettings::default();
        off.tolerance[TestKind::BbsdKs.index()] = None;
        assert_eq!(Sequential::new(&r, &off).threshold(), 6e6);
    }

    #[test]
    fn quiet_on_reference_like_traffic_and_quick_on_shifts() {
        let r = reference();
        let settings = SequentialSettings::default();
        let mut rng = SplitMix64::new(7);
        let mut seq = Sequential::new(&r, &settings);
        let alarm = run(&mut seq, &r, 50_000, &mut rng, |g| g.below(3) as usize, 0.0);
        assert_eq!(alarm, None, "no alarm on 50,000 unshifted predictions");
        assert_eq!(seq.seen(), 50_000);

        // Brighter inputs: the input statistics' detector alarms within a few hundred.
        let mut seq = Sequential::new(&r, &settings);
        let alarm = run(&mut seq, &r, 2000, &mut rng, |g| g.below(3) as usize, 0.6);
        assert!(
            matches!(alarm, Some((TestKind::InputKs, n)) if n <= 300),
            "{alarm:?}"
        );

        // Only class "a": the class mix (or a class's probabilities) alarms.
        let mut seq = Sequential::new(&r, &settings);
        let alarm = run(&mut seq, &r, 2000, &mut rng, |_| 0, 0.0);
        assert!(
            matches!(alarm, Some((TestKind::ClassChi2 | TestKind::BbsdKs, n)) if n <= 300),
            "{alarm:?}"
        );
    }

    #[test]
    fn tolerance_ignores_a_small_class_mix_change() {
        // 40/30/30 instead of a third each: chi-square divergence 0.03, under the tolerance.
        let r = reference();
        let mut settings = SequentialSettings::default();
        for k in TestKind::ALL {
            if k != TestKind::ClassChi2 {
                settings.tolerance[k.index()] = None;
            }
        }
        let mut seq = Sequential::new(&r, &settings);
        let mut rng = SplitMix64::new(5);
        let pick = |g: &mut SplitMix64| {
            let u = g.unit();
            if u < 0.4 {
                0
            } else if u < 0.7 {
                1
            } else {
                2
            }
        };
        assert_eq!(run(&mut seq, &r, 30_000, &mut rng, pick, 0.0), None);
    }
}
