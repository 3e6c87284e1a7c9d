//! The reference profile: what the model's outputs and inputs look like on validation data.
//!
//! The file (`shiftwatch reference` writes it, JSON, format `shiftwatch.reference/v1`) keeps
//! per-sample data, bounded in size: probability vectors, true labels when given, input
//! statistics and embeddings. Everything the tests need (class ratios, decile edges, sorted
//! samples, accuracy, ECE, the temperature, the ATC threshold, flag thresholds) is derived from
//! those samples by [`Reference::prepare`], so a profile means the same thing whether or not
//! served probabilities are temperature-scaled. The derived numbers are also written into the
//! file's `summary` for people to read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::window::INPUT_FEATURES;
use crate::image_stats::DESCRIPTOR_LEN;
use crate::monitor::correctness::CorrectnessProfile;
use crate::monitor::estimates::{MAX_TRANSPORT_ROWS, spaced};
use crate::prediction::{Flag, entropy, summarize};
use crate::stats;
use crate::stats::conformal::Regularization;
use crate::stats::random::SplitMix64;

pub const FORMAT: &str = "shiftwatch.reference/v1";

/// The profile as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceProfile {
    pub format: String,
    pub model: String,
    pub model_version: String,
    pub labels: Vec<String>,
    /// Images profiled (the samples below may be a seeded subsample when there were more).
    pub n_images: usize,
    /// One probability vector per sample, as the model served it (no temperature).
    pub probabilities: Vec<Vec<f32>>,
    /// True class per sample, when the profile was built with labels.
    pub true_classes: Option<Vec<usize>>,
    /// Input statistics per sample, by name (see `INPUT_FEATURES`).
    pub inputs: BTreeMap<String, Vec<f32>>,
    /// Embedding per sample, when the model has an embedding output.
    pub embeddings: Option<Vec<Vec<f32>>>,
    /// The image descriptor per sample (`image_stats::descriptor`), for the
    /// out-of-distribution score; absent from profiles built before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub descriptors: Option<Vec<Vec<f32>>>,
    /// The per-prediction correctness model behind the served accuracy estimate
    /// (`monitor::correctness`), fitted when the profile was built with labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correctness: Option<CorrectnessProfile>,
    /// Derived numbers, for people; recomputed on load.
    pub summary: Option<ReferenceSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceSummary {
    pub class_ratios: Vec<f64>,
    pub mean_confidence: f64,
    pub confidence_edges: Vec<f64>,
    pub entropy_edges: Vec<f64>,
    pub low_confidence_threshold: f64,
    pub accuracy: Option<f64>,
    pub ece: Option<f64>,
    pub temperature: Option<f64>,
    pub atc_threshold: Option<f64>,
}

/// What the labeled reference says about the model.
#[derive(Debug, Clone, PartialEq)]
pub struct LabeledReference {
    pub accuracy: f64,
    pub mean_confidence: f64,
    pub ece: f64,
    /// Fitted on the raw (served) probabilities.
    pub temperature: f64,
    /// On the probabilities as the monitor sees them (after the temperature when applied).
    pub atc_threshold: f64,
    /// ATC's threshold on 1 − the normalized entropy (ATC-NE).
    pub atc_ne_threshold: f64,
    /// The true class mix of the labeled reference (COT's target, BBSE's p(y)).
    pub label_prior: Vec<f64>,
    /// BBSE's joint distribution of predicted and true class, `[pred * k + true]`.
    pub confusion: Vec<f64>,
    /// Per reference row: its true class, and its brightness, contrast and sharpness (NaN where
    /// unknown), for the tests against the reference re-weighted by BBSE's class weights.
    pub truth: Vec<usize>,
    pub inputs: [Vec<f64>; 3],
    /// (reference row, leave-one-out distance to its 5th nearest neighbour) for every searched
    /// row.
    pub neighbor_rows: Vec<(usize, f64)>,
    /// Deng et al.'s nuclear-norm score → accuracy, fitted with the correctness model.
    pub nuclear_fit: Option<(f64, f64)>,
    /// COTT's threshold on 1 − transport cost: the reference's own rows transported onto its
    /// true class mix, the threshold at which the share above it equals the accuracy.
    pub cott_threshold: Option<f64>,
}

/// COTT's threshold from the labeled reference: its rows (evenly spaced, at most
/// [`MAX_TRANSPORT_ROWS`], as a window's) transported onto its own class mix, the threshold on
/// 1 − cost at which the share above equals their accuracy.
fn cott_threshold(probabilities: &[f32], k: usize, prior: &[f64], correct: &[bool]) -> Option<f64> {
    let rows = spaced(correct.len(), MAX_TRANSPORT_ROWS);
    let probs: Vec<f32> = rows
        .iter()
        .flat_map(|&i| probabilities[i * k..(i + 1) * k].iter().copied())
        .collect();
    let correct: Vec<bool> = rows.iter().map(|&i| correct[i]).collect();
    let c = stats::estimate::cot(&probs, k, prior)?;
    let fits: Vec<f64> = c.costs.iter().map(|cost| 1.0 - cost).collect();
    Some(stats::atc_threshold(&fits, &correct))
}

/// 1 − the entropy over ln k: ATC-NE's score (1 for a one-hot prediction).
pub fn entropy_certainty(entropy: f64, k: usize) -> f64 {
    if k > 1 {
        1.0 - entropy / (k as f64).ln()
    } else {
        1.0
    }
}

/// The profile prepared for evaluation.
#[derive(Debug, Clone)]
pub struct Reference {
    pub model_version: String,
    pub labels: Vec<String>,
    pub n: usize,
    pub class_ratios: Vec<f64>,
    pub mean_confidence: f64,
    pub confidence_sorted: Vec<f64>,
    pub entropy_sorted: Vec<f64>,
    pub confidence_edges: Vec<f64>,
    pub entropy_edges: Vec<f64>,
    pub confidence_proportions: Vec<f64>,
    pub entropy_proportions: Vec<f64>,
    /// Per class: that softmax output over the samples, sorted (BBSD).
    pub probability_columns: Vec<Vec<f64>>,
    /// Per input statistic: the samples, sorted, NaN removed.
    pub inputs_sorted: Vec<Vec<f64>>,
    /// Row-major embeddings (a bounded, seeded subsample) and their dimension.
    pub embeddings: Option<(Vec<f32>, usize)>,
    pub mmd_sigma: f64,
    pub labeled: Option<LabeledReference>,
    /// Confidence under which a prediction is flagged `low_confidence` (the reference's 5th percentile).
    pub low_confidence_threshold: f64,
    /// Confidence under which a prediction is flagged `ood_suspect` (the reference's 1st percentile).
    pub ood_confidence_threshold: f64,
    /// Per predicted class: the embedding centroid and the 99th percentile of distances to it.
    pub centroids: Option<Vec<(Vec<f32>, f64)>>,
    /// Every sample's distance to the centroid of the other samples of its predicted class
    /// (leave-one-out), sorted: the sequential embedding detector ranks live distances among
    /// them.
    pub centroid_distances_sorted: Vec<f64>,
    /// The embeddings the neighbour distance searches (a bounded, seeded subsample).
    pub neighbors: Option<stats::knn::KnnIndex>,
    /// Every searched sample's distance to its [`NEIGHBORS`]-th nearest other sample
    /// (leave-one-out), sorted: the sequential embedding detector ranks live distances among
    /// them.
    pub neighbor_distances_sorted: Vec<f64>,
    pub temperature_applied: Option<f64>,
    /// Conformal prediction sets, once calibrated ([`Reference::calibrate_prediction_sets`]).
    pub conformal: Option<Conformal>,
}

/// Conformal prediction sets calibrated on the labeled reference (randomized RAPS).
#[derive(Debug, Clone, PartialEq)]
pub struct Conformal {
    /// The target coverage, 1 − α.
    pub coverage: f64,
    /// The APS threshold q̂.
    pub threshold: f64,
    /// The set size of every reference sample (with its calibration draw), sorted.
    pub sizes_sorted: Vec<f64>,
    pub regularization: Regularization,
    /// The temperature the scores see: p ← softmax(ln p / T), fitted by NLL on the labeled
    /// reference (1: the probabilities as served).
    pub temperature: f64,
    /// The seed of the calibration draws and of each request's draw.
    pub seed: u64,
}

impl Conformal {
    /// The set of a prediction: its classes, highest probability first. `id` (the request id)
    /// fixes the randomization, so the same prediction always gets the same set.
    pub fn set(&self, probabilities: &[f32], id: &str) -> Vec<usize> {
        stats::conformal::raps_set(
            &self.scored(probabilities),
            self.threshold,
            stats::conformal::uniform_for(id, self.seed),
            self.regularization,
        )
    }

    /// The probability over the draw that `class` is in the set of a prediction (see
    /// [`stats::conformal::raps_inclusion`]).
    pub fn inclusion(&self, probabilities: &[f32], class: usize) -> f64 {
        stats::conformal::raps_inclusion(
            &self.scored(probabilities),
            class,
            self.threshold,
            self.regularization,
        )
    }

    /// The probabilities the scores are computed on: after the temperature.
    fn scored<'a>(&self, probabilities: &'a [f32]) -> std::borrow::Cow<'a, [f32]> {
        if self.temperature == 1.0 {
            std::borrow::Cow::Borrowed(probabilities)
        } else {
            let mut p = probabilities.to_vec();
            stats::apply_temperature(&mut p, probabilities.len(), self.temperature);
            std::borrow::Cow::Owned(p)
        }
    }
}

/// Linear-interpolation quantile of sorted values (numpy's default).
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.retain(|x| x.is_finite());
    v.sort_by(f64::total_cmp);
    v
}

fn distance(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = f64::from(*x - *y);
            d * d
        })
        .sum::<f64>()
        .sqrt()
}

impl ReferenceProfile {
    /// Structural checks, with messages that say what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("format is `{}`, expected `{FORMAT}`", self.format));
        }
        let k = self.labels.len();
        let n = self.probabilities.len();
        if n == 0 || k == 0 {
            return Err("the profile has no samples or no labels".into());
        }
        if let Some(bad) = self.probabilities.iter().position(|p| p.len() != k) {
            return Err(format!(
                "sample {bad} has a probability vector of the wrong length"
            ));
        }
        if let Some(t) = &self.true_classes
            && (t.len() != n || t.iter().any(|c| *c >= k))
        {
            return Err("true_classes must give one valid class per sample".into());
        }
        for (name, values) in &self.inputs {
            if !INPUT_FEATURES.contains(&name.as_str()) {
                return Err(format!("unknown input statistic `{name}`"));
            }
            if values.len() != n {
                return Err(format!(
                    "input statistic `{name}` has {} values for {n} samples",
                    values.len()
                ));
            }
        }
        if let Some(e) = &self.embeddings {
            let d = e.first().map_or(0, Vec::len);
            if e.len() != n || d == 0 || e.iter().any(|v| v.len() != d) {
                return Err("embeddings must give one vector of one size per sample".into());
            }
        }
        if let Some(d) = &self.descriptors
            && (d.len() != n
                || d.iter().any(|v| v.len() != DESCRIPTOR_LEN)
                || d.iter().flatten().any(|v| !v.is_finite()))
        {
            return Err(format!(
                "descriptors must give {DESCRIPTOR_LEN} finite values per sample; \
                 rebuild the profile with `shiftwatch reference`"
            ));
        }
        Ok(())
    }

    /// The derived numbers as they would be served without a temperature.
    pub fn summarize(&self) -> Result<ReferenceSummary, String> {
        let r = Reference::prepare(self, false, 1)?;
        Ok(ReferenceSummary {
            class_ratios: r.class_ratios.clone(),
            mean_confidence: r.mean_confidence,
            confidence_edges: r.confidence_edges.clone(),
            entropy_edges: r.entropy_edges.clone(),
            low_confidence_threshold: r.low_confidence_threshold,
            accuracy: r.labeled.as_ref().map(|l| l.accuracy),
            ece: r.labeled.as_ref().map(|l| l.ece),
            temperature: r.labeled.as_ref().map(|l| l.temperature),
            atc_threshold: r.labeled.as_ref().map(|l| l.atc_threshold),
        })
    }
}

impl Reference {
    /// Derives everything from the samples. With `apply_temperature` (and labels), the samples'
    /// probabilities are first scaled by the fitted temperature, as served ones will be.
    pub fn prepare(
        profile: &ReferenceProfile,
        apply_temperature: bool,
        seed: u64,
    ) -> Result<Self, String> {
        profile.validate()?;
        let k = profile.labels.len();
        let n = profile.probabilities.len();
        let mut flat: Vec<f32> = profile.probabilities.iter().flatten().copied().collect();

        let temperature = profile
            .true_classes
            .as_ref()
            .map(|t| stats::fit_temperature(&flat, k, t));
        let temperature_applied = match (apply_temperature, temperature) {
            (true, Some(t)) => {
                stats::apply_temperature(&mut flat, k, t);
                Some(t)
            }
            (true, None) => {
                return Err("applying a temperature needs a profile built with labels".into());
            }
            (false, _) => None,
        };

        let mut counts = vec![0f64; k];
        let mut confidence = Vec::with_capacity(n);
        let mut entropies = Vec::with_capacity(n);
        let mut predicted = Vec::with_capacity(n);
        let mut columns = vec![Vec::with_capacity(n); k];
        for row in flat.chunks_exact(k) {
            let s = summarize(row);
            counts[s.class] += 1.0;
            confidence.push(f64::from(s.confidence));
            entropies.push(f64::from(entropy(row)));
            predicted.push(s.class);
            for (c, p) in row.iter().enumerate() {
                columns[c].push(f64::from(*p));
            }
        }
        let class_ratios = stats::proportions(&counts);
        let confidence_edges = stats::decile_edges(&confidence);
        let entropy_edges = stats::decile_edges(&entropies);
        let confidence_proportions = stats::bin_proportions(&confidence, &confidence_edges);
        let entropy_proportions = stats::bin_proportions(&entropies, &entropy_edges);
        let mean_confidence = stats::mean(&confidence);

        let labeled = profile.true_classes.as_ref().map(|truth| {
            let correct: Vec<bool> = predicted.iter().zip(truth).map(|(p, t)| p == t).collect();
            let certainty: Vec<f64> = entropies.iter().map(|h| entropy_certainty(*h, k)).collect();
            let mut prior = vec![0f64; k];
            for t in truth {
                prior[*t] += 1.0;
            }
            let column = |name: &str| -> Vec<f64> {
                profile
                    .inputs
                    .get(name)
                    .filter(|v| v.len() == n)
                    .map_or_else(
                        || vec![f64::NAN; n],
                        |v| v.iter().map(|x| f64::from(*x)).collect(),
                    )
            };
            let label_prior = stats::proportions(&prior);
            LabeledReference {
                accuracy: correct.iter().filter(|c| **c).count() as f64 / n as f64,
                mean_confidence,
                ece: stats::ece(&confidence, &correct, 15),
                temperature: temperature.unwrap_or(1.0),
                atc_threshold: stats::atc_threshold(&confidence, &correct),
                atc_ne_threshold: stats::atc_threshold(&certainty, &correct),
                cott_threshold: cott_threshold(&flat, k, &label_prior, &correct),
                label_prior,
                confusion: stats::estimate::bbse_confusion(&predicted, truth, k),
                truth: truth.clone(),
                inputs: [
                    column("brightness"),
                    column("contrast"),
                    column("sharpness"),
                ],
                neighbor_rows: Vec::new(),
                nuclear_fit: profile.correctness.as_ref().and_then(|c| c.nuclear_fit),
            }
        });
        let mut labeled = labeled;

        let inputs_sorted = INPUT_FEATURES
            .iter()
            .map(|name| {
                profile
                    .inputs
                    .get(*name)
                    .map(|v| sorted(v.iter().map(|x| f64::from(*x)).collect()))
                    .unwrap_or_default()
            })
            .collect();

        let confidence_sorted = sorted(confidence);
        let mut centroid_distances = Vec::new();
        let mut neighbor_distances = Vec::new();
        let mut neighbors = None;
        let (embeddings, mmd_sigma, centroids) = match &profile.embeddings {
            None => (None, 1.0, None),
            Some(rows) => {
                let dim = rows[0].len();
                // Centroid per predicted class and the 99th percentile of distances to it.
                let mut centroids = Vec::with_capacity(k);
                for class in 0..k {
                    let members: Vec<&Vec<f32>> = rows
                        .iter()
                        .zip(&predicted)
                        .filter(|(_, p)| **p == class)
                        .map(|(r, _)| r)
                        .collect();
                    if members.is_empty() {
                        centroids.push((vec![f32::NAN; dim], f64::INFINITY));
                        continue;
                    }
                    let mut c = vec![0f32; dim];
                    for m in &members {
                        for (a, b) in c.iter_mut().zip(m.iter()) {
                            *a += *b / members.len() as f32;
                        }
                    }
                    let d = sorted(members.iter().map(|m| distance(m, &c)).collect());
                    centroids.push((c.clone(), quantile_sorted(&d, 0.99)));
                    // Leave-one-out: each sample against the centroid of the others, as a new
                    // prediction stands against a centroid it did not help make (in-sample
                    // distances are shorter).
                    let m = members.len() as f32;
                    if members.len() > 1 {
                        for x in &members {
                            let others: Vec<f32> = c
                                .iter()
                                .zip(x.iter())
                                .map(|(c, v)| (m * c - v) / (m - 1.0))
                                .collect();
                            centroid_distances.push(distance(x, &others));
                        }
                    }
                }
                let searched = subsample(rows.len(), NEIGHBOR_REFERENCE_MAX, seed);
                let flat: Vec<f32> = searched
                    .iter()
                    .flat_map(|&i| rows[i].iter().copied())
                    .collect();
                if let Ok(index) = stats::knn::KnnIndex::new(dim, flat) {
                    let loo = index.leave_one_out(NEIGHBORS);
                    if let Some(l) = labeled.as_mut() {
                        l.neighbor_rows = searched
                            .iter()
                            .zip(&loo)
                            .filter(|(_, d)| d.is_finite())
                            .map(|(&row, &d)| (row, d))
                            .collect();
                    }
                    neighbor_distances = loo.into_iter().filter(|d| d.is_finite()).collect();
                    neighbors = Some(index);
                }
                let sample = subsample(rows.len(), MMD_REFERENCE_MAX, seed);
                let flat_rows: Vec<f32> = sample
                    .iter()
                    .flat_map(|&i| rows[i].iter().copied())
                    .collect();
                let sigma = stats::median_heuristic_sigma(&flat_rows, &flat_rows, dim, 500);
                (Some((flat_rows, dim)), sigma, Some(centroids))
            }
        };

        Ok(Reference {
            model_version: profile.model_version.clone(),
            labels: profile.labels.clone(),
            n,
            class_ratios,
            mean_confidence,
            low_confidence_threshold: quantile_sorted(&confidence_sorted, 0.05),
            ood_confidence_threshold: quantile_sorted(&confidence_sorted, 0.01),
            confidence_sorted,
            entropy_sorted: sorted(entropies),
            confidence_edges,
            entropy_edges,
            confidence_proportions,
            entropy_proportions,
            probability_columns: columns.into_iter().map(sorted).collect(),
            inputs_sorted,
            embeddings,
            mmd_sigma,
            labeled,
            centroids,
            centroid_distances_sorted: sorted(centroid_distances),
            neighbors,
            neighbor_distances_sorted: sorted(neighbor_distances),
            temperature_applied,
            conformal: None,
        })
    }

    /// Calibrates prediction sets at `coverage` on the labeled samples (the probabilities as
    /// served, so after the temperature when one is applied). With `temperature`, the scores
    /// see the probabilities after a temperature fitted on the same samples.
    pub fn calibrate_prediction_sets(
        &mut self,
        profile: &ReferenceProfile,
        coverage: f64,
        regularization: Regularization,
        temperature: bool,
        seed: u64,
    ) -> Result<(), String> {
        let truth = profile
            .true_classes
            .as_ref()
            .ok_or("prediction sets need a reference profile built with labels")?;
        let k = self.labels.len();
        let mut flat: Vec<f32> = profile.probabilities.iter().flatten().copied().collect();
        if let Some(t) = self.temperature_applied {
            stats::apply_temperature(&mut flat, k, t);
        }
        let temperature = if temperature {
            stats::fit_temperature(&flat, k, truth)
        } else {
            1.0
        };
        if temperature != 1.0 {
            stats::apply_temperature(&mut flat, k, temperature);
        }
        let draws = stats::conformal::calibration_draws(truth.len(), seed);
        let threshold =
            stats::conformal::raps_threshold(&flat, k, truth, &draws, coverage, regularization)
                .ok_or_else(|| {
                    format!(
                        "{} labeled samples are too few for a coverage of {coverage}",
                        truth.len()
                    )
                })?;
        let sizes = flat
            .chunks_exact(k)
            .zip(&draws)
            .map(|(row, u)| {
                stats::conformal::raps_set(row, threshold, *u, regularization).len() as f64
            })
            .collect();
        self.conformal = Some(Conformal {
            coverage,
            threshold,
            sizes_sorted: sorted(sizes),
            regularization,
            temperature,
            seed,
        });
        Ok(())
    }

    /// The distance of `embedding` to the centroid of `class` (NaN when unknown).
    pub fn centroid_distance(&self, class: usize, embedding: &[f32]) -> f64 {
        match self.centroids.as_ref().and_then(|c| c.get(class)) {
            Some((centroid, _)) if centroid.len() == embedding.len() => {
                distance(embedding, centroid)
            }
            _ => f64::NAN,
        }
    }

    /// The distance from `embedding` to its [`NEIGHBORS`]-th nearest reference embedding (NaN
    /// without reference embeddings or for another dimension).
    pub fn neighbor_distance(&self, embedding: &[f32]) -> f64 {
        self.neighbors.as_ref().map_or(f64::NAN, |index| {
            index
                .nearest(embedding, NEIGHBORS, None)
                .get(NEIGHBORS - 1)
                .map_or(f64::NAN, |n| n.distance)
        })
    }

    /// The flags of one prediction against this reference.
    pub fn flags(&self, class: usize, confidence: f32, embedding: Option<&[f32]>) -> Vec<Flag> {
        let mut flags = Vec::new();
        let confidence = f64::from(confidence);
        if confidence < self.low_confidence_threshold {
            flags.push(Flag::LowConfidence);
        }
        let far = match (&self.centroids, embedding) {
            (Some(c), Some(e)) => c.get(class).is_some_and(|(centroid, radius)| {
                centroid.len() == e.len() && distance(e, centroid) > *radius
            }),
            _ => false,
        };
        if far || confidence < self.ood_confidence_threshold {
            flags.push(Flag::OodSuspect);
        }
        flags
    }
}

/// Most reference embeddings the neighbour distance searches: an exact search costs this many
/// distances per prediction on the monitor thread (and its square once, at load).
pub const NEIGHBOR_REFERENCE_MAX: usize = 2048;

/// Which nearest neighbour the neighbour distance is to: the 5th, so that one stray reference
/// sample near an unfamiliar input does not hide it.
pub const NEIGHBORS: usize = 5;

/// Most reference embeddings used by the MMD test.
pub const MMD_REFERENCE_MAX: usize = 200;

/// A seeded choice of at most `max` indices out of `n`, in increasing order.
pub fn subsample(n: usize, max: usize, seed: u64) -> Vec<usize> {
    if n <= max {
        return (0..n).collect();
    }
    // Partial Fisher–Yates.
    let mut idx: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64::new(seed);
    for i in 0..max {
        let j = i + rng.below((n - i) as u64) as usize;
        idx.swap(i, j);
    }
    let mut chosen = idx[..max].to_vec();
    chosen.sort_unstable();
    chosen
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn toy_profile() -> ReferenceProfile {
        let labels: Vec<String> = vec!["a".into(), "b".into()];
        let mut probabilities = Vec::new();
        let mut truth = Vec::new();
        let mut brightness = Vec::new();
        let mut embeddings = Vec::new();
        for i in 0..200 {
            let p = 0.55 + 0.4 * (i as f32 / 200.0);
            let (row, class) = if i % 2 == 0 {
                (vec![p, 1.0 - p], 0)
            } else {
                (vec![1.0 - p, p], 1)
            };
            probabilities.push(row);
            // 90% correct.
            truth.push(if i % 10 == 0 { 1 - class } else { class });
            brightness.push(0.3 + 0.001 * i as f32);
            embeddings.push(vec![class as f32 + 0.01 * (i % 7) as f32, 0.5]);
        }
        let mut inputs = BTreeMap::new();
        inputs.insert("brightness".to_string(), brightness);
        ReferenceProfile {
            format: FORMAT.into(),
            model: "toy".into(),
            model_version: "0123456789ab".into(),
            labels,
            n_images: 200,
            probabilities,
            true_classes: Some(truth),
            inputs,
            embeddings: Some(embeddings),
            descriptors: None,
            correctness: None,
            summary: None,
        }
    }

    #[test]
    fn derived_numbers() {
        let p = toy_profile();
        let r = Reference::prepare(&p, false, 1).unwrap();
        assert_eq!(r.class_ratios, vec![0.5, 0.5]);
        let l = r.labeled.as_ref().unwrap();
        assert!((l.accuracy - 0.9).abs() < 1e-12);
        assert_eq!(r.confidence_edges.len(), 9);
        assert_eq!(r.inputs_sorted[0].len(), 200);
        assert!(
            r.inputs_sorted[1].is_empty(),
            "no contrast in the toy profile"
        );
        assert!(r.low_confidence_threshold > r.ood_confidence_threshold);
        // A confident prediction near its centroid carries no flag; a far one does.
        assert!(r.flags(0, 0.9, Some(&[0.02, 0.5])).is_empty());
        assert_eq!(r.flags(0, 0.9, Some(&[5.0, 5.0])), vec![Flag::OodSuspect]);
        assert_eq!(
            r.flags(0, 0.5, None),
            vec![Flag::LowConfidence, Flag::OodSuspect]
        );
    }

    #[test]
    fn validation_names_the_problem() {
        let mut p = toy_profile();
        p.probabilities[3].pop();
        assert!(p.validate().unwrap_err().contains("sample 3"));
        let mut p = toy_profile();
        p.inputs.insert("colour".into(), vec![0.0; 200]);
        assert!(p.validate().unwrap_err().contains("colour"));
        let mut p = toy_profile();
        p.true_classes = None;
        assert!(Reference::prepare(&p, true, 1).is_err());
        let mut p = toy_profile();
        p.descriptors = Some(vec![vec![0.0; DESCRIPTOR_LEN - 1]; 200]);
        assert!(p.validate().unwrap_err().contains("descriptors"));
        p.descriptors = Some(vec![vec![0.0; DESCRIPTOR_LEN]; 199]);
        assert!(p.validate().unwrap_err().contains("descriptors"));
        p.descriptors = Some(vec![vec![0.0; DESCRIPTOR_LEN]; 200]);
        p.validate().unwrap();
    }

    #[test]
    fn profiles_without_descriptors_still_load() {
        // Written before descriptors existed: no `descriptors` key at all.
        let mut json = serde_json::to_value(toy_profile()).unwrap();
        assert!(
            json.as_object_mut()
                .unwrap()
                .remove("descriptors")
                .is_none()
        );
        let p: ReferenceProfile = serde_json::from_value(json).unwrap();
        assert_eq!(p.descriptors, None);
        p.validate().unwrap();
        // With them, they survive the round trip.
        let mut with = toy_profile();
        with.descriptors = Some(vec![vec![0.125; DESCRIPTOR_LEN]; 200]);
        let back: ReferenceProfile =
            serde_json::from_slice(&serde_json::to_vec(&with).unwrap()).unwrap();
        assert_eq!(back, with);
    }

    #[test]
    fn neighbor_distances_match_scipy() {
        let f = crate::stats::fixture::load_named("sequential_fixture.json");
        let case = &f["neighbors"];
        assert_eq!(crate::stats::fixture::count(&case["k"]), NEIGHBORS);
        let dim = crate::stats::fixture::count(&case["dim"]);
        let rows = crate::stats::fixture::f32s(&case["rows"]);
        let index = stats::knn::KnnIndex::new(dim, rows).unwrap();
        let loo = crate::stats::fixture::f64s(&case["leave_one_out"]);
        for (got, want) in index.leave_one_out(NEIGHBORS).iter().zip(&loo) {
            crate::stats::fixture::assert_close(*got, *want, 1e-6, "leave-one-out distance");
        }
        let queries = crate::stats::fixture::f32s(&case["queries"]);
        let want = crate::stats::fixture::f64s(&case["query_distances"]);
        for (q, want) in queries.chunks_exact(dim).zip(&want) {
            let got = index.nearest(q, NEIGHBORS, None)[NEIGHBORS - 1].distance;
            crate::stats::fixture::assert_close(got, *want, 1e-6, "query distance");
        }
    }

    #[test]
    fn prepared_neighbor_distances_are_leave_one_out() {
        let p = toy_profile();
        let r = Reference::prepare(&p, false, 1).unwrap();
        assert_eq!(r.neighbor_distances_sorted.len(), 200);
        // The toy's embeddings repeat every 7 rows within a class: each has many exact twins.
        assert_eq!(r.neighbor_distances_sorted.last(), Some(&0.0));
        assert_eq!(r.neighbor_distance(&[0.02, 0.5]), 0.0);
        // Class 1's farthest-out embeddings sit at 1.06 (dozens of them): 1.94 away.
        assert!((r.neighbor_distance(&[3.0, 0.5]) - 1.94).abs() < 1e-5);
        assert!(r.neighbor_distance(&[3.0]).is_nan(), "another dimension");
    }

    #[test]
    fn prediction_sets_with_a_fitted_temperature() {
        let p = toy_profile();
        let mut r = Reference::prepare(&p, false, 1).unwrap();
        let reg = Regularization {
            penalty: 0.0,
            free_ranks: 0,
        };
        r.calibrate_prediction_sets(&p, 0.8, reg, true, 3).unwrap();
        let c = r.conformal.clone().unwrap();
        let flat: Vec<f32> = p.probabilities.iter().flatten().copied().collect();
        let truth = p.true_classes.as_ref().unwrap();
        assert_eq!(c.temperature, stats::fit_temperature(&flat, 2, truth));
        assert!(c.temperature != 1.0);
        // The scores see the tempered probabilities: the set is the one of those.
        let mut tempered = vec![0.9f32, 0.1];
        stats::apply_temperature(&mut tempered, 2, c.temperature);
        let u = stats::conformal::uniform_for("req-1", c.seed);
        assert_eq!(
            c.set(&[0.9, 0.1], "req-1"),
            stats::conformal::raps_set(&tempered, c.threshold, u, reg)
        );
        // Coverage on the calibration rows themselves (their own draws) is at least the target.
        let draws = stats::conformal::calibration_draws(truth.len(), 3);
        let mut rows = flat.clone();
        stats::apply_temperature(&mut rows, 2, c.temperature);
        let covered = rows
            .chunks_exact(2)
            .zip(truth)
            .zip(&draws)
            .filter(|((row, t), u)| {
                stats::conformal::raps_set(row, c.threshold, **u, reg).contains(t)
            })
            .count();
        assert!(covered as f64 >= 0.8 * 200.0, "{covered}");
        r.calibrate_prediction_sets(&p, 0.8, reg, false, 3).unwrap();
        assert_eq!(r.conformal.unwrap().temperature, 1.0);
    }

    #[test]
    fn subsample_is_seeded_and_bounded() {
        let a = subsample(1000, 10, 7);
        assert_eq!(a.len(), 10);
        assert_eq!(a, subsample(1000, 10, 7));
        assert_ne!(a, subsample(1000, 10, 8));
        assert_eq!(subsample(5, 10, 7), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn quantiles_interpolate() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile_sorted(&v, 0.5), 2.5);
        assert_eq!(quantile_sorted(&v, 0.0), 1.0);
        assert_eq!(quantile_sorted(&v, 1.0), 4.0);
    }
}
