"""tests/data/knn_fixture.json: exact nearest neighbours (scikit-learn) and Mahalanobis whitening
(numpy) on seeded clustered data, for src/stats/knn.rs.

usage: .venv/bin/python tests/data/make_knn_fixture.py   (from the repository root)
"""

import json
import os

import numpy as np
from sklearn.neighbors import NearestNeighbors

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "knn_fixture.json")
DIM, N, Q, K, SHRINKAGE = 6, 80, 25, 4, 0.1


def main():
    rng = np.random.default_rng(1307)
    centres = rng.normal(0, 4, size=(5, DIM))
    scales = rng.uniform(0.3, 3.0, size=DIM)  # unequal spreads: whitening matters
    reference = (centres[rng.integers(5, size=N)] + rng.normal(size=(N, DIM)) * scales).astype(np.float32)
    queries = (centres[rng.integers(5, size=Q)] + rng.normal(size=(Q, DIM)) * scales * 1.5).astype(np.float32)
    ref64, q64 = reference.astype(np.float64), queries.astype(np.float64)

    nn = NearestNeighbors(n_neighbors=K, algorithm="brute").fit(ref64)
    distances, rows = nn.kneighbors(q64)
    # Leave-one-out: the k+1 nearest of each reference row, itself (distance 0) first.
    loo_d, loo_i = NearestNeighbors(n_neighbors=K + 1, algorithm="brute").fit(ref64).kneighbors(ref64)
    assert np.all(loo_i[:, 0] == np.arange(N))

    mean = ref64.mean(axis=0)
    s = np.cov(ref64, rowvar=False)
    s = (1 - SHRINKAGE) * s + SHRINKAGE * np.trace(s) / DIM * np.eye(DIM)
    chol = np.linalg.cholesky(s)
    whiten = lambda x: np.linalg.solve(chol, (x - mean).T).T  # noqa: E731
    wref, wq = whiten(ref64), whiten(q64)
    whitened_nearest = NearestNeighbors(n_neighbors=1, algorithm="brute").fit(wref).kneighbors(wq)[0][:, 0]
    # The same as the Mahalanobis distance under the shrunk covariance.
    inv = np.linalg.inv(s)
    maha = np.array([min(np.sqrt((q - r) @ inv @ (q - r)) for r in ref64) for q in q64])
    assert np.allclose(maha, whitened_nearest)

    fixture = {
        "dim": DIM,
        "k": K,
        "shrinkage": SHRINKAGE,
        "reference": reference.tolist(),
        "queries": queries.tolist(),
        "raw_rows": rows.tolist(),
        "raw_distances": distances.tolist(),
        "raw_leave_one_out": loo_d[:, K].tolist(),
        "whitened_queries": wq.tolist(),
        "whitened_nearest": whitened_nearest.tolist(),
    }
    with open(OUT, "w") as f:
        json.dump(fixture, f)
        f.write("\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
