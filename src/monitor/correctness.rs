//! The per-prediction correctness model behind the served accuracy estimate: the probability
//! that one prediction is right, from what the sidecar knows about it beyond its confidence.
//!
//! Features ([`FEATURES`]): the top-1 confidence, the normalized entropy and the margin of the
//! model's own probabilities (before any served temperature); where the prediction lies among
//! the reference embeddings (Mahalanobis-whitened, the out-of-distribution detector's space):
//! the share of its [`NEIGHBORS`] nearest reference rows whose true class is the predicted one,
//! the log ratio of the distance to the nearest one of that class over the nearest one of
//! another, the log distance to the nearest; the same three among the reference image
//! descriptors (a second view: a nearest-neighbour classifier on the pixels, which agrees with
//! the model on familiar inputs and not on unfamiliar ones); and how far the brightness and
//! contrast lie from the reference's (log(1 + |z|)). Not the sharpness: noise raises it as far
//! as blur lowers it, and the fit's alterations only lower it, so with it the model took noisy
//! but readable digits for wrong ones (unseen `noisy` shift: error 0.045 with it, 0.010
//! without). A profile without embeddings or descriptors drops the features it cannot give.
//!
//! Fitted at `shiftwatch reference` time (`profile.rs`) by gradient-boosted trees
//! (`stats::boost`) on the labeled reference images and on altered copies of them
//! (`monitor::augment`), each measured against the other reference rows (its own source left
//! out), the clean rows weighted as much as all the altered ones together. The window's
//! estimate is the mean of its predictions' probabilities. Pure.

use serde::{Deserialize, Serialize};

use crate::prediction::summarize;
use crate::relabel::ood::Proximity;
use crate::stats::boost::{BoostParams, Boosted};
use crate::stats::knn::Neighbor;

/// Reference neighbours looked at per prediction.
pub const NEIGHBORS: usize = 10;

/// Every feature the model can use, in this order.
pub const FEATURES: [&str; 11] = [
    "confidence",
    "entropy",
    "margin",
    "neighbor_agreement",
    "class_distance_ratio",
    "embedding_distance",
    "descriptor_distance",
    "brightness_z",
    "contrast_z",
    "descriptor_agreement",
    "descriptor_class_distance_ratio",
];

/// Features that need the reference embeddings.
const EMBEDDING_FEATURES: [usize; 3] = [3, 4, 5];
const DESCRIPTOR_FEATURES: [usize; 3] = [6, 9, 10];

/// The boosting settings of the fit.
pub const PARAMS: BoostParams = BoostParams {
    trees: 200,
    depth: 3,
    learning_rate: 0.1,
    min_leaf: 20,
};

/// The fitted model as the reference profile stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CorrectnessProfile {
    /// The names of the features used, a subset of [`FEATURES`] in its order.
    pub features: Vec<String>,
    /// Brightness and contrast: the reference's mean and standard deviation.
    pub input_mean: [f64; 2],
    pub input_std: [f64; 2],
    pub model: Boosted,
    /// Deng et al.'s nuclear-norm score mapped to accuracy, fitted on the same sets:
    /// (intercept, slope).
    pub nuclear_fit: Option<(f64, f64)>,
    /// Each set the fit used (the clean reference and every altered copy): name, accuracy,
    /// mean confidence.
    pub sets: Vec<FitSet>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitSet {
    pub name: String,
    pub n: usize,
    pub accuracy: f64,
    pub mean_confidence: f64,
}

/// What one prediction brings to the model.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The model's probabilities, before any served temperature.
    pub probabilities: &'a [f32],
    pub proximity: &'a Proximity,
    /// Brightness and contrast; `None` for a tensor request.
    pub stats: Option<[f32; 2]>,
}

/// Every feature of [`FEATURES`], NaN where unknown. `classes`: the reference rows' true
/// classes (the neighbours' indices point into it).
pub fn all_features(
    inputs: &Inputs<'_>,
    classes: &[usize],
    mean: &[f64; 2],
    std: &[f64; 2],
) -> [f64; 11] {
    let mut f = [f64::NAN; 11];
    let s = summarize(inputs.probabilities);
    let k = inputs.probabilities.len();
    f[0] = f64::from(s.confidence);
    f[1] = if k > 1 {
        f64::from(s.entropy) / (k as f64).ln()
    } else {
        0.0
    };
    f[2] = f64::from(s.margin);
    let class_of = |row: usize| classes.get(row).copied();
    // The share of the neighbours of the predicted class, and the log ratio of the nearest
    // distance within that class over the nearest outside it.
    let agreement = |nb: &[Neighbor]| -> Option<(f64, f64)> {
        if nb.is_empty() || nb.iter().any(|n| class_of(n.row).is_none()) {
            return None;
        }
        let same = nb
            .iter()
            .filter(|n| class_of(n.row) == Some(s.class))
            .count();
        let last = nb[nb.len() - 1].distance;
        let d_same = nb
            .iter()
            .find(|n| class_of(n.row) == Some(s.class))
            .map_or(last, |n| n.distance);
        let d_other = nb
            .iter()
            .find(|n| class_of(n.row) != Some(s.class))
            .map_or(last, |n| n.distance);
        Some((
            same as f64 / nb.len() as f64,
            ((d_same + 1e-6) / (d_other + 1e-6)).ln(),
        ))
    };
    let nb = &inputs.proximity.embedding_neighbors;
    if let Some((share, ratio)) = agreement(nb) {
        f[3] = share;
        f[4] = ratio;
        f[5] = (nb[0].distance + 1e-6).ln();
    }
    if let Some((share, ratio)) = agreement(&inputs.proximity.descriptor_neighbors) {
        f[9] = share;
        f[10] = ratio;
    }
    if let Some(nearest) = inputs.proximity.descriptor_neighbors.first() {
        f[6] = (nearest.distance + 1e-6).ln();
    }
    if let Some(st) = inputs.stats {
        for (j, x) in st.iter().enumerate() {
            let z = (f64::from(*x) - mean[j]) / std[j].max(1e-12);
            f[7 + j] = z.abs().ln_1p();
        }
    }
    f
}

/// Which features a reference with or without embeddings and descriptors supports.
pub fn usable_features(embeddings: bool, descriptors: bool) -> Vec<usize> {
    (0..FEATURES.len())
        .filter(|i| embeddings || !EMBEDDING_FEATURES.contains(i))
        .filter(|i| descriptors || !DESCRIPTOR_FEATURES.contains(i))
        .collect()
}

/// The fitted model, ready to score predictions.
#[derive(Debug, Clone)]
pub struct Correctness {
    profile: CorrectnessProfile,
    used: Vec<usize>,
    classes: Vec<usize>,
}

impl Correctness {
    /// From the profile's model and the reference rows' true classes.
    pub fn new(profile: CorrectnessProfile, classes: Vec<usize>) -> Result<Correctness, String> {
        let used: Vec<usize> = profile
            .features
            .iter()
            .map(|name| {
                FEATURES
                    .iter()
                    .position(|f| f == name)
                    .ok_or_else(|| format!("unknown correctness feature `{name}`"))
            })
            .collect::<Result<_, _>>()?;
        if used.len() != profile.model.n_features {
            return Err(format!(
                "the correctness model takes {} features, the profile names {}",
                profile.model.n_features,
                used.len()
            ));
        }
        Ok(Correctness {
            profile,
            used,
            classes,
        })
    }

    pub fn profile(&self) -> &CorrectnessProfile {
        &self.profile
    }

    /// The probability that this prediction is right; `None` when a feature the model uses is
    /// unknown (a tensor request has no image statistics or descriptor).
    pub fn probability(&self, inputs: &Inputs<'_>) -> Option<f64> {
        let all = all_features(
            inputs,
            &self.classes,
            &self.profile.input_mean,
            &self.profile.input_std,
        );
        let x: Vec<f64> = self.used.iter().map(|&i| all[i]).collect();
        if x.iter().any(|v| !v.is_finite()) {
            return None;
        }
        Some(self.profile.model.predict(&x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::boost::{self, BoostParams};

    fn neighbor(row: usize, distance: f64) -> Neighbor {
        Neighbor { row, distance }
    }

    #[test]
    fn features_follow_their_definitions() {
        let probabilities = [0.7f32, 0.2, 0.1];
        // Reference rows' classes: rows 0, 1 of class 0, row 2 of class 1, row 3 of class 2.
        let classes = [0, 0, 1, 2];
        let proximity = Proximity {
            embedding_ratio: Some(0.5),
            descriptor_ratio: Some(2.0),
            embedding_neighbors: vec![neighbor(2, 1.0), neighbor(0, 2.0), neighbor(1, 4.0)],
            descriptor_neighbors: vec![neighbor(3, 0.5), neighbor(2, 1.5)],
        };
        let f = all_features(
            &Inputs {
                probabilities: &probabilities,
                proximity: &proximity,
                stats: Some([0.6, 0.1]),
            },
            &classes,
            &[0.5, 0.2],
            &[0.05, 0.1],
        );
        let h: f64 = probabilities
            .iter()
            .map(|p| -f64::from(*p) * f64::from(*p).ln())
            .sum();
        let expect = [
            0.7,
            h / 3f64.ln(),
            0.5,
            2.0 / 3.0,
            ((2.0 + 1e-6) / (1.0 + 1e-6f64)).ln(),
            (1.0 + 1e-6f64).ln(),
            (0.5 + 1e-6f64).ln(),
            2f64.ln_1p(),
            1f64.ln_1p(),
            0.0,
            // No neighbour of the predicted class: its distance is the farthest one's.
            ((1.5 + 1e-6) / (0.5 + 1e-6f64)).ln(),
        ];
        for (i, (got, want)) in f.iter().zip(expect).enumerate() {
            assert!(
                (got - want).abs() < 1e-6,
                "{}: {got} != {want}",
                FEATURES[i]
            );
        }
        // A tensor request: no image statistics, no descriptor.
        let bare = Proximity {
            descriptor_ratio: None,
            descriptor_neighbors: vec![],
            ..proximity
        };
        let f = all_features(
            &Inputs {
                probabilities: &probabilities,
                proximity: &bare,
                stats: None,
            },
            &classes,
            &[0.0; 2],
            &[1.0; 2],
        );
        for i in [6, 7, 8, 9, 10] {
            assert!(f[i].is_nan(), "{} should be unknown", FEATURES[i]);
        }
        assert!(f[3].is_finite());
    }

    #[test]
    fn the_model_scores_predictions_with_every_feature_it_uses() {
        assert_eq!(usable_features(true, true).len(), 11);
        assert_eq!(usable_features(false, true), vec![0, 1, 2, 6, 7, 8, 9, 10]);
        assert_eq!(usable_features(true, false), vec![0, 1, 2, 3, 4, 5, 7, 8]);
        // A model on confidence alone: right when confident.
        let rows: Vec<f64> = (0..200).map(|i| f64::from(i) / 200.0).collect();
        let y: Vec<bool> = rows.iter().map(|c| *c > 0.5).collect();
        let model = boost::fit(&rows, 1, &y, &vec![1.0; 200], BoostParams::default()).unwrap();
        let profile = CorrectnessProfile {
            features: vec!["confidence".into()],
            input_mean: [0.0; 2],
            input_std: [1.0; 2],
            model,
            nuclear_fit: Some((0.1, 0.5)),
            sets: vec![],
        };
        let c = Correctness::new(profile.clone(), vec![]).unwrap();
        let proximity = Proximity::default();
        let p = |probabilities: &[f32]| {
            c.probability(&Inputs {
                probabilities,
                proximity: &proximity,
                stats: None,
            })
        };
        assert!(p(&[0.9, 0.1]).unwrap() > 0.9);
        assert!(p(&[0.4, 0.3, 0.3]).unwrap() < 0.1);
        // A model that needs the descriptor cannot score a tensor request.
        let mut needs = profile.clone();
        needs.features = vec!["descriptor_distance".into()];
        let c = Correctness::new(needs, vec![]).unwrap();
        assert_eq!(
            c.probability(&Inputs {
                probabilities: &[0.9, 0.1],
                proximity: &proximity,
                stats: None,
            }),
            None
        );
        // Names the code does not know, or a count the trees do not take: refused.
        let mut unknown = profile.clone();
        unknown.features = vec!["colour".into()];
        assert!(Correctness::new(unknown, vec![]).is_err());
        let mut two = profile;
        two.features = vec!["confidence".into(), "margin".into()];
        assert!(Correctness::new(two, vec![]).is_err());
    }
}
