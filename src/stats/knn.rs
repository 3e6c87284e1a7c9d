//! Exact nearest-neighbour search over a fixed set of vectors, and the Mahalanobis whitening
//! that makes its distances comparable across dimensions.
//!
//! [`KnnIndex`] holds row-major `f32` vectors and answers "the k nearest rows to this query"
//! by a full scan (Euclidean distance, accumulated in `f64`): O(n·d) per query, which is what
//! a few microseconds buy for thousands of 32-d rows and stays fine up to about 10⁵ rows;
//! beyond that an approximate index (HNSW, IVF-PQ) replaces the scan behind the same calls.
//! [`Whitening`] fits a mean and a shrunk covariance `(1 − λ)·S + λ·tr(S)/d·I` (S the sample
//! covariance with `n − 1`) and maps a vector to `L⁻¹(x − mean)`, `L` the Cholesky factor,
//! so that Euclidean distances between whitened vectors are Mahalanobis distances.
//!
//! Pure. Checked against scikit-learn's `NearestNeighbors` and numpy on the committed fixture
//! `tests/data/knn_fixture.json` (written by `tests/data/make_knn_fixture.py`).

use std::cmp::Ordering;

/// Why an index or a whitening cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KnnError {
    #[error("vectors must have at least one dimension")]
    NoDimensions,
    #[error("{values} values are not a whole number of {dim}-dimensional rows")]
    Ragged { values: usize, dim: usize },
    #[error("row {row} holds a value that is not finite")]
    NotFinite { row: usize },
    #[error("the covariance is not positive definite (too few or identical rows)")]
    Singular,
}

/// Rows to search, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct KnnIndex {
    dim: usize,
    rows: Vec<f32>,
}

/// One neighbour: its row and its distance to the query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neighbor {
    pub row: usize,
    pub distance: f64,
}

impl KnnIndex {
    /// An index over `rows` (row-major, `dim` values each, all finite).
    pub fn new(dim: usize, rows: Vec<f32>) -> Result<KnnIndex, KnnError> {
        if dim == 0 {
            return Err(KnnError::NoDimensions);
        }
        if !rows.len().is_multiple_of(dim) {
            return Err(KnnError::Ragged {
                values: rows.len(),
                dim,
            });
        }
        if let Some(at) = rows.iter().position(|v| !v.is_finite()) {
            return Err(KnnError::NotFinite { row: at / dim });
        }
        Ok(KnnIndex { dim, rows })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn len(&self) -> usize {
        self.rows.len() / self.dim
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Row `i` (panics when out of range, like slice indexing).
    pub fn row(&self, i: usize) -> &[f32] {
        &self.rows[i * self.dim..(i + 1) * self.dim]
    }

    /// The `k` rows nearest to `query`, nearest first (ties: the lower row first), leaving out
    /// row `skip` when given. Empty when `query` has another length than the rows or holds a
    /// value that is not finite.
    pub fn nearest(&self, query: &[f32], k: usize, skip: Option<usize>) -> Vec<Neighbor> {
        if query.len() != self.dim || query.iter().any(|v| !v.is_finite()) || k == 0 {
            return Vec::new();
        }
        // Candidates are ranked by the squared distance in f32 (vectorized, no square root),
        // then the k kept get their distance in f64.
        let mut best: Vec<(f32, usize)> = Vec::with_capacity(k + 1);
        for (row, values) in self.rows.chunks_exact(self.dim).enumerate() {
            if Some(row) == skip {
                continue;
            }
            let d2 = squared_distance(query, values);
            let before = |b: &(f32, usize)| d2.total_cmp(&b.0).then(row.cmp(&b.1)).is_lt();
            if best.len() == k && !before(&best[k - 1]) {
                continue;
            }
            let at = best.partition_point(|b| !before(b));
            best.insert(at, (d2, row));
            best.truncate(k);
        }
        let mut found: Vec<Neighbor> = best
            .into_iter()
            .map(|(_, row)| Neighbor {
                row,
                distance: euclidean(query, self.row(row)),
            })
            .collect();
        found.sort_by(closer_order);
        found
    }

    /// For every row, the distance to its `k`-th nearest other row (leave-one-out); NaN for
    /// every row when there are `k` rows or fewer.
    pub fn leave_one_out(&self, k: usize) -> Vec<f64> {
        (0..self.len())
            .map(|i| {
                self.nearest(self.row(i), k, Some(i))
                    .get(k.wrapping_sub(1))
                    .map_or(f64::NAN, |n| n.distance)
            })
            .collect()
    }
}

/// Nearest first, ties by the lower row.
fn closer_order(a: &Neighbor, b: &Neighbor) -> Ordering {
    a.distance.total_cmp(&b.distance).then(a.row.cmp(&b.row))
}

/// Squared Euclidean distance in f32, eight lanes at a time (what the compiler vectorizes).
fn squared_distance(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| (x - y) * (x - y))
        .sum();
    for (x, y) in a8.zip(b8) {
        for ((lane, x), y) in lanes.iter_mut().zip(x).zip(y) {
            *lane += (x - y) * (x - y);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Euclidean distance, accumulated in f64.
pub fn euclidean(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = f64::from(*x) - f64::from(*y);
            d * d
        })
        .sum::<f64>()
        .sqrt()
}

/// A fitted whitening: `x ↦ L⁻¹(x − mean)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Whitening {
    mean: Vec<f64>,
    /// Lower-triangular Cholesky factor of the shrunk covariance, row-major `d × d`.
    chol: Vec<f64>,
}

impl Whitening {
    /// Fits the mean and the covariance of `rows` (row-major, `dim` each, finite), shrunk
    /// towards `tr(S)/d·I` by `shrinkage` (clamped to [0, 1]; NaN counts as 0).
    pub fn fit(dim: usize, rows: &[f32], shrinkage: f64) -> Result<Whitening, KnnError> {
        let index = KnnIndex::new(dim, rows.to_vec())?;
        let n = index.len();
        if n < 2 {
            return Err(KnnError::Singular);
        }
        let lambda = if shrinkage.is_nan() {
            0.0
        } else {
            shrinkage.clamp(0.0, 1.0)
        };
        let mut mean = vec![0f64; dim];
        for row in rows.chunks_exact(dim) {
            for (m, v) in mean.iter_mut().zip(row) {
                *m += f64::from(*v);
            }
        }
        for m in &mut mean {
            *m /= n as f64;
        }
        let mut cov = vec![0f64; dim * dim];
        for row in rows.chunks_exact(dim) {
            for i in 0..dim {
                let di = f64::from(row[i]) - mean[i];
                for j in 0..=i {
                    cov[i * dim + j] += di * (f64::from(row[j]) - mean[j]);
                }
            }
        }
        let trace: f64 = (0..dim).map(|i| cov[i * dim + i]).sum::<f64>() / (n - 1) as f64;
        for i in 0..dim {
            for j in 0..=i {
                let s = cov[i * dim + j] / (n - 1) as f64;
                let target = if i == j { trace / dim as f64 } else { 0.0 };
                cov[i * dim + j] = (1.0 - lambda) * s + lambda * target;
                cov[j * dim + i] = cov[i * dim + j];
            }
        }
        let chol = cholesky(&cov, dim).ok_or(KnnError::Singular)?;
        Ok(Whitening { mean, chol })
    }

    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// `L⁻¹(x − mean)` by forward substitution; `None` when `x` has another length or a value
    /// that is not finite.
    pub fn apply(&self, x: &[f32]) -> Option<Vec<f32>> {
        let d = self.dim();
        if x.len() != d || x.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let mut z = vec![0f64; d];
        for i in 0..d {
            let row = &self.chol[i * d..i * d + i];
            let s = f64::from(x[i])
                - self.mean[i]
                - row.iter().zip(&z).map(|(l, v)| l * v).sum::<f64>();
            z[i] = s / self.chol[i * d + i];
        }
        Some(z.into_iter().map(|v| v as f32).collect())
    }
}

/// The lower Cholesky factor of a symmetric `d × d` matrix, or `None` when it is not positive
/// definite.
fn cholesky(a: &[f64], d: usize) -> Option<Vec<f64>> {
    let mut l = vec![0f64; d * d];
    for i in 0..d {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i * d + k] * l[j * d + k]).sum();
            if i == j {
                let v = a[i * d + i] - s;
                if !(v > 0.0 && v.is_finite()) {
                    return None;
                }
                l[i * d + i] = v.sqrt();
            } else {
                l[i * d + j] = (a[i * d + j] - s) / l[j * d + j];
            }
        }
    }
    Some(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Fixture {
        dim: usize,
        k: usize,
        shrinkage: f64,
        reference: Vec<Vec<f32>>,
        queries: Vec<Vec<f32>>,
        /// scikit-learn, on the raw rows: per query, the k nearest (rows, distances).
        raw_rows: Vec<Vec<usize>>,
        raw_distances: Vec<Vec<f64>>,
        /// Leave-one-out k-th distances of the reference rows (raw).
        raw_leave_one_out: Vec<f64>,
        /// numpy: the whitened queries and the nearest distance after whitening.
        whitened_queries: Vec<Vec<f64>>,
        whitened_nearest: Vec<f64>,
    }

    fn fixture() -> Fixture {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/knn_fixture.json"),
        )
        .expect("tests/data/knn_fixture.json (tests/data/make_knn_fixture.py)");
        serde_json::from_str(&text).expect("the fixture parses")
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-6 * b.abs().max(1.0)
    }

    #[test]
    fn nearest_neighbours_agree_with_scikit_learn() {
        let f = fixture();
        let index = KnnIndex::new(f.dim, f.reference.concat()).unwrap();
        assert_eq!(index.len(), f.reference.len());
        for (q, query) in f.queries.iter().enumerate() {
            let found = index.nearest(query, f.k, None);
            let rows: Vec<usize> = found.iter().map(|n| n.row).collect();
            assert_eq!(rows, f.raw_rows[q], "query {q}");
            for (n, d) in found.iter().zip(&f.raw_distances[q]) {
                assert!(close(n.distance, *d), "query {q}: {} vs {d}", n.distance);
            }
        }
        for (got, want) in index.leave_one_out(f.k).iter().zip(&f.raw_leave_one_out) {
            assert!(close(*got, *want), "{got} vs {want}");
        }
    }

    #[test]
    fn whitening_gives_numpys_mahalanobis_distances() {
        let f = fixture();
        let rows = f.reference.concat();
        let w = Whitening::fit(f.dim, &rows, f.shrinkage).unwrap();
        let whitened: Vec<f32> = f
            .reference
            .iter()
            .flat_map(|r| w.apply(r).unwrap())
            .collect();
        let index = KnnIndex::new(f.dim, whitened).unwrap();
        for (q, query) in f.queries.iter().enumerate() {
            let z = w.apply(query).unwrap();
            // The factor is unique, so the whitened vector itself matches numpy's.
            for (a, b) in z.iter().zip(&f.whitened_queries[q]) {
                assert!(close(f64::from(*a), *b), "query {q}: {a} vs {b}");
            }
            let nearest = index.nearest(&z, 1, None)[0].distance;
            assert!(
                (nearest - f.whitened_nearest[q]).abs() <= 1e-5 * f.whitened_nearest[q],
                "query {q}: {nearest} vs {}",
                f.whitened_nearest[q]
            );
        }
    }

    #[test]
    fn degenerate_input_is_refused_or_empty_never_a_panic() {
        assert_eq!(KnnIndex::new(0, vec![]), Err(KnnError::NoDimensions));
        assert!(matches!(
            KnnIndex::new(2, vec![1.0; 3]),
            Err(KnnError::Ragged { .. })
        ));
        assert_eq!(
            KnnIndex::new(2, vec![0.0, 1.0, f32::NAN, 0.0]),
            Err(KnnError::NotFinite { row: 1 })
        );
        let index = KnnIndex::new(2, vec![0.0, 0.0, 3.0, 4.0, 3.0, 4.0]).unwrap();
        assert!(index.nearest(&[1.0], 1, None).is_empty());
        assert!(index.nearest(&[f32::INFINITY, 0.0], 1, None).is_empty());
        assert!(index.nearest(&[0.0, 0.0], 0, None).is_empty());
        // Ties go to the lower row; asking for more than there are gives them all.
        let all = index.nearest(&[3.0, 4.0], 10, None);
        assert_eq!(all.iter().map(|n| n.row).collect::<Vec<_>>(), vec![1, 2, 0]);
        assert_eq!(all[2].distance, 5.0);
        assert_eq!(index.leave_one_out(1), vec![5.0, 0.0, 0.0]);
        assert!(index.leave_one_out(3).iter().all(|d| d.is_nan()));
        // One row, identical rows: no covariance to whiten with (unless shrunk from a trace).
        assert_eq!(Whitening::fit(2, &[1.0, 2.0], 0.1), Err(KnnError::Singular));
        assert_eq!(
            Whitening::fit(2, &[1.0, 2.0, 1.0, 2.0], 0.5),
            Err(KnnError::Singular)
        );
        let w = Whitening::fit(2, &[0.0, 0.0, 1.0, 1.0, 2.0, 0.0], f64::NAN).unwrap();
        assert!(w.apply(&[1.0]).is_none());
        assert!(w.apply(&[f32::NAN, 1.0]).is_none());
    }
}
