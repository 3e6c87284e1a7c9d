//! Out-of-distribution score of a prediction that does not lean on the model's own uncertainty:
//! how far it lies from the reference images, calibrated on the reference itself, in two spaces.
//!
//! - The model's embedding, when it has one: a Mahalanobis whitening (shrunk covariance,
//!   [`SHRINKAGE`]), then the whitened distance to the nearest reference embedding.
//! - The image descriptor (`image_stats::descriptor`: a normalized 8×8 gray thumbnail, the same
//!   for every model), when the reference profile holds the reference images' descriptors: the
//!   Euclidean distance to the nearest reference descriptor.
//!
//! Each distance is divided by the `quantile` (default 0.99) of the reference's own
//! leave-one-out nearest distances in its space; the score is the mean of the two (the one there
//! is when a space is missing: a profile built before descriptors, a model without an embedding,
//! a tensor request without an image). Above 1 is `ood_suspect`. A confidently wrong input (a
//! photograph the model calls "8" at 0.99) scores high while its entropy says nothing; the
//! descriptor catches what the model's embedding folds onto the digits (letters, shapes).
//!
//! On the bundled digits model (reference: 300 images) the mean of the two flags 3 of 540 normal
//! traffic images (0.6%), 192 of 200 bundled out-of-distribution images (96%) and every
//! natural-photo crop; the embedding alone flagged 10 (1.9%) and 181 (90.5%)
//! (tests/candidates.rs measures it through the sidecar; the README compares the choices).

use crate::stats::knn::{KnnError, KnnIndex, Neighbor, Whitening};

/// Shrinkage of the covariance towards a multiple of the identity (a few hundred reference
/// rows estimate a 32 × 32 covariance poorly).
pub const SHRINKAGE: f64 = 0.1;

/// Why a detector cannot be fitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OodError {
    #[error("the reference has neither embeddings nor image descriptors")]
    NothingToSearch,
    #[error("reference embeddings: {0}")]
    Embeddings(KnnError),
    #[error("reference descriptors: {0}")]
    Descriptors(KnnError),
}

/// One space's calibrated nearest distance.
#[derive(Debug, Clone)]
struct Calibrated {
    /// `None`: plain Euclidean distances.
    whitening: Option<Whitening>,
    index: KnnIndex,
    /// A score is the nearest distance over it.
    radius: f64,
}

impl Calibrated {
    fn fit(vectors: &[Vec<f32>], whiten: bool, quantile: f64) -> Result<Calibrated, KnnError> {
        let dim = vectors.first().map_or(0, Vec::len);
        if let Some(row) = vectors.iter().position(|e| e.len() != dim) {
            return Err(KnnError::Ragged {
                values: vectors[row].len(),
                dim,
            });
        }
        if vectors.len() < 3 {
            return Err(KnnError::Singular);
        }
        let rows = vectors.concat();
        let (whitening, rows) = if whiten {
            let whitening = Whitening::fit(dim, &rows, SHRINKAGE)?;
            let whitened = vectors
                .iter()
                .flat_map(|e| whitening.apply(e).unwrap_or_default())
                .collect();
            (Some(whitening), whitened)
        } else {
            (None, rows)
        };
        let index = KnnIndex::new(dim, rows)?;
        let mut loo = index.leave_one_out(1);
        loo.sort_by(f64::total_cmp);
        let q = if quantile.is_finite() {
            quantile.clamp(0.0, 1.0)
        } else {
            0.99
        };
        let radius = quantile_sorted(&loo, q);
        if !(radius.is_finite() && radius > 0.0) {
            return Err(KnnError::Singular);
        }
        Ok(Calibrated {
            whitening,
            index,
            radius,
        })
    }

    /// The `k` nearest reference rows (at least one) leaving out row `skip`, and the nearest
    /// distance over the radius.
    fn search(&self, v: &[f32], k: usize, skip: Option<usize>) -> Option<(f64, Vec<Neighbor>)> {
        let nearest = match &self.whitening {
            Some(w) => self.index.nearest(&w.apply(v)?, k.max(1), skip),
            None => self.index.nearest(v, k.max(1), skip),
        };
        Some((nearest.first()?.distance / self.radius, nearest))
    }
}

/// Where a prediction lies among the reference rows: each space's nearest distance over its
/// radius, and the nearest reference rows in the (whitened) embedding space.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Proximity {
    pub embedding_ratio: Option<f64>,
    pub descriptor_ratio: Option<f64>,
    /// Nearest first; indices are rows of the reference profile.
    pub embedding_neighbors: Vec<Neighbor>,
    /// The same in the descriptor space.
    pub descriptor_neighbors: Vec<Neighbor>,
}

impl Proximity {
    /// The out-of-distribution score: the mean of the ratios there are.
    pub fn score(&self) -> Option<f64> {
        let (sum, n) = [self.embedding_ratio, self.descriptor_ratio]
            .into_iter()
            .flatten()
            .fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
        (n > 0).then(|| sum / n as f64)
    }
}

/// The fitted detector.
#[derive(Debug, Clone)]
pub struct OodDetector {
    embedding: Option<Calibrated>,
    descriptor: Option<Calibrated>,
}

impl OodDetector {
    /// Fits on the reference embeddings and descriptors, either of which may be missing (at
    /// least 3 rows each, all of one length and finite); `quantile` in (0, 1] of each space's
    /// leave-one-out nearest distances is its radius.
    pub fn fit(
        embeddings: Option<&[Vec<f32>]>,
        descriptors: Option<&[Vec<f32>]>,
        quantile: f64,
    ) -> Result<OodDetector, OodError> {
        if embeddings.is_none() && descriptors.is_none() {
            return Err(OodError::NothingToSearch);
        }
        let embedding = embeddings
            .map(|e| Calibrated::fit(e, true, quantile))
            .transpose()
            .map_err(OodError::Embeddings)?;
        let descriptor = descriptors
            .map(|d| Calibrated::fit(d, false, quantile))
            .transpose()
            .map_err(OodError::Descriptors)?;
        Ok(OodDetector {
            embedding,
            descriptor,
        })
    }

    /// The score of a prediction: the mean, over the spaces that both the detector and the
    /// prediction have, of its nearest distance to the reference over that space's radius
    /// (above 1: out of distribution). `None` when no space applies (a vector of another length,
    /// or with a value that is not finite, does not apply).
    pub fn score(&self, embedding: Option<&[f32]>, descriptor: Option<&[f32]>) -> Option<f64> {
        self.proximity(embedding, descriptor, 1, None).score()
    }

    /// Both spaces' ratios and the `k` nearest reference rows in each (one scan per space),
    /// leaving out reference row `skip` (a reference image, or an altered copy of it, measured
    /// against the others).
    pub fn proximity(
        &self,
        embedding: Option<&[f32]>,
        descriptor: Option<&[f32]>,
        k: usize,
        skip: Option<usize>,
    ) -> Proximity {
        let e = self
            .embedding
            .as_ref()
            .zip(embedding)
            .and_then(|(space, v)| space.search(v, k, skip));
        let d = self
            .descriptor
            .as_ref()
            .zip(descriptor)
            .and_then(|(space, v)| space.search(v, k, skip));
        // A space that does not apply has no ratio and no neighbours.
        let split = |found: Option<(f64, Vec<Neighbor>)>| {
            found.map_or((None, Vec::new()), |(r, n)| (Some(r), n))
        };
        let (embedding_ratio, embedding_neighbors) = split(e);
        let (descriptor_ratio, descriptor_neighbors) = split(d);
        Proximity {
            embedding_ratio,
            descriptor_ratio,
            embedding_neighbors,
            descriptor_neighbors,
        }
    }

    /// Whether a score says out of distribution.
    pub fn is_ood(score: f64) -> bool {
        score > 1.0
    }

    /// Whether the detector searches the embeddings and the image descriptors.
    pub fn spaces(&self) -> (bool, bool) {
        (self.embedding.is_some(), self.descriptor.is_some())
    }
}

/// Linear-interpolation quantile of sorted values (numpy's default); NaN when empty.
fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    let Some(last) = sorted.len().checked_sub(1) else {
        return f64::NAN;
    };
    let pos = q * last as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(last);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::random::SplitMix64;

    #[test]
    fn far_points_score_above_one_and_the_reference_mostly_below() {
        let mut rng = SplitMix64::new(21);
        let mut normal = || (0..12).map(|_| rng.unit()).sum::<f64>() - 6.0;
        // Two elongated clusters in 4-d: whitening keeps the long axis from dominating.
        let mut draw = |n: usize| -> Vec<Vec<f32>> {
            (0..n)
                .map(|i| {
                    let c = if i % 2 == 0 { 0.0 } else { 8.0 };
                    vec![
                        (c + 10.0 * normal()) as f32,
                        (c + normal()) as f32,
                        normal() as f32,
                        normal() as f32,
                    ]
                })
                .collect()
        };
        let reference = draw(400);
        let fresh = draw(2000);
        let detector = OodDetector::fit(Some(&reference), None, 0.99).unwrap();
        assert_eq!(detector.spaces(), (true, false));
        let score = |e: &[f32]| detector.score(Some(e), None);
        let flagged = fresh
            .iter()
            .filter(|e| OodDetector::is_ood(score(e).unwrap()))
            .count();
        // New draws from the reference's distribution pass the 99% radius about 1% of the time.
        println!(
            "{flagged} of {} fresh in-distribution points flagged",
            fresh.len()
        );
        assert!(flagged <= 60, "{flagged}");
        // A reference point is its own nearest neighbour.
        assert_eq!(score(&reference[3]), Some(0.0));
        // Off the short axes by a few of their spreads: far; along the long axis: not.
        assert!(score(&[0.0, 0.0, 6.0, 6.0]).unwrap() > 1.5);
        assert!(score(&[15.0, 0.0, 0.0, 0.0]).unwrap() < 1.0);
        assert!(score(&[1.0, 2.0]).is_none());
        assert!(score(&[f32::NAN, 0.0, 0.0, 0.0]).is_none());
        // A descriptor the detector has no space for changes nothing.
        assert_eq!(
            detector.score(Some(&[0.0, 0.0, 6.0, 6.0]), Some(&[1.0; 64])),
            score(&[0.0, 0.0, 6.0, 6.0])
        );
    }

    #[test]
    fn the_score_is_the_mean_of_the_spaces_the_prediction_has() {
        // Embeddings on a line, descriptors on another: each space's radius is its own.
        let embeddings: Vec<Vec<f32>> = (0..50).map(|i| vec![i as f32, 0.0]).collect();
        let descriptors: Vec<Vec<f32>> = (0..50).map(|i| vec![0.0, 0.0, 3.0 * i as f32]).collect();
        let both = OodDetector::fit(Some(&embeddings), Some(&descriptors), 0.99).unwrap();
        assert_eq!(both.spaces(), (true, true));
        let e_only = OodDetector::fit(Some(&embeddings), None, 0.99).unwrap();
        let d_only = OodDetector::fit(None, Some(&descriptors), 0.99).unwrap();
        assert_eq!(d_only.spaces(), (false, true));
        let (e, d) = ([10.0, 5.0], [12.0, 0.0, 30.0]);
        let se = e_only.score(Some(&e), None).unwrap();
        let sd = d_only.score(None, Some(&d)).unwrap();
        // Unwhitened, the descriptor space's radius is the spacing 3: 12 away scores 4.
        assert!((sd - 4.0).abs() < 1e-9, "{sd}");
        assert!(se > 0.0);
        let mean = both.score(Some(&e), Some(&d)).unwrap();
        assert!((mean - (se + sd) / 2.0).abs() < 1e-12, "{mean}");
        // A tensor request has no image: the embedding alone; a descriptor of another length
        // does not apply.
        assert_eq!(both.score(Some(&e), None), Some(se));
        assert_eq!(both.score(Some(&e), Some(&[1.0])), Some(se));
        assert_eq!(both.score(None, Some(&d)), Some(sd));
        assert_eq!(both.score(None, None), None);
    }

    #[test]
    fn scores_are_exact_and_their_request_path_cost_is_printed() {
        // The bundled model's shape: 300 reference images, embeddings of 32 values and
        // descriptors of 64.
        let mut rng = SplitMix64::new(5);
        let mut rows = |n: usize, dim: usize| -> Vec<Vec<f32>> {
            (0..n)
                .map(|_| (0..dim).map(|_| (rng.unit() * 10.0) as f32).collect())
                .collect()
        };
        let (reference, descriptors) = (rows(300, 32), rows(300, 64));
        let (queries, query_descriptors) = (rows(1000, 32), rows(1000, 64));
        let detector = OodDetector::fit(Some(&reference), Some(&descriptors), 0.99).unwrap();
        // The f32 ranking of the scan finds the same nearest rows as plain f64 scans.
        let embedding = detector.embedding.as_ref().unwrap();
        let whitening = embedding.whitening.as_ref().unwrap();
        let whitened: Vec<Vec<f32>> = reference
            .iter()
            .map(|r| whitening.apply(r).unwrap())
            .collect();
        let radius_d = detector.descriptor.as_ref().unwrap().radius;
        for (q, qd) in queries.iter().zip(&query_descriptors).take(200) {
            let z = whitening.apply(q).unwrap();
            let nearest = |rows: &[Vec<f32>], v: &[f32]| {
                rows.iter()
                    .map(|r| crate::stats::knn::euclidean(v, r))
                    .fold(f64::INFINITY, f64::min)
            };
            let plain = (nearest(&whitened, &z) / embedding.radius
                + nearest(&descriptors, qd) / radius_d)
                / 2.0;
            let score = detector.score(Some(q), Some(qd)).unwrap();
            assert!((score - plain).abs() <= 1e-9 * score, "{score} vs {plain}");
        }
        // The fastest of 30 rounds of 1,000 (2 in a debug build): the machine is shared,
        // interference only slows. `cargo test --release --lib scores_are_exact -- --nocapture`.
        let rounds = if cfg!(debug_assertions) { 2 } else { 30 };
        let mut flagged = 0;
        let per = (0..rounds)
            .map(|_| {
                let started = std::time::Instant::now();
                for (q, qd) in queries.iter().zip(&query_descriptors) {
                    let score = detector.score(Some(q), Some(qd)).unwrap();
                    flagged += usize::from(OodDetector::is_ood(score));
                }
                started.elapsed().as_nanos() as f64 / queries.len() as f64
            })
            .fold(f64::INFINITY, f64::min);
        println!(
            "score: {per:.0} ns per prediction (300 reference rows, both spaces; fastest of \
             {rounds} rounds; {flagged} flagged)"
        );
    }

    #[test]
    fn too_little_or_inconsistent_reference_is_refused() {
        let fit = |e: &[Vec<f32>], q| OodDetector::fit(Some(e), None, q);
        assert_eq!(
            OodDetector::fit(None, None, 0.99).unwrap_err(),
            OodError::NothingToSearch
        );
        assert!(fit(&[], 0.99).is_err());
        assert!(fit(&[vec![1.0, 2.0], vec![2.0, 1.0]], 0.99).is_err());
        assert!(fit(&[vec![1.0, 2.0], vec![2.0], vec![0.0, 0.0]], 0.99).is_err());
        assert!(fit(&vec![vec![1.0, 2.0]; 5], 0.99).is_err());
        let ok = [
            vec![0.0, 0.0],
            vec![1.0, 0.5],
            vec![0.0, 2.0],
            vec![3.0, 1.0],
        ];
        for q in [f64::NAN, -1.0, 2.0, 0.5] {
            assert!(fit(&ok, q).is_ok(), "{q}");
        }
        // Identical descriptors have no spread to calibrate on.
        assert!(matches!(
            OodDetector::fit(Some(&ok), Some(&vec![vec![0.5; 3]; 4]), 0.99),
            Err(OodError::Descriptors(_))
        ));
    }
}
