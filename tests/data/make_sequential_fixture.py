"""Writes tests/data/sequential_fixture.json: inputs and expected values for
src/stats/sequential.rs (Shiryaev-Roberts e-detectors, mid-ranks) and src/stats/conformal.rs
(randomized RAPS prediction sets; APS is a penalty of 0) and src/monitor/reference.rs (the
k-th nearest neighbour distance).

Independent of the Rust recursion: the Shiryaev-Roberts statistic is computed from its
definition R_t = sum_{j<=t} prod_{i=j..t} e_i (log-space cumulative sums), the mid-rank by
scipy.stats.percentileofscore(kind="mean"), the APS threshold by numpy's "higher" quantile at
ceil((n+1)(1-alpha))/n (the inverted CDF: the ceil((n+1)(1-alpha))-th smallest score, as in
Angelopoulos & Bates' "gentle introduction"). Only the capped case
follows the recursion (a cap has no closed form). Seeded: a rerun reproduces the file.

Run from the repository root:

    .venv/bin/python tests/data/make_sequential_fixture.py
"""

import json
import math
import pathlib

import numpy as np
import scipy
from scipy import stats

OUT = pathlib.Path(__file__).with_name("sequential_fixture.json")
RNG = np.random.default_rng(20261206)
GRID = 6  # bet sizes lambda_max / 2 ... lambda_max / 2**GRID


def lambdas(null_mean, tolerance):
    m = null_mean + tolerance
    return [(1.0 / m) / 2.0 ** (j + 1) for j in range(GRID)]


def sr_closed_form(scores, null_mean, tolerance):
    """Mean over bet sizes of sum_j prod_{i=j..t} e_i, for every t."""
    m = null_mean + tolerance
    out = np.zeros(len(scores))
    for lam in lambdas(null_mean, tolerance):
        e = 1.0 + lam * (np.asarray(scores) - m)
        assert np.all(e > 0)
        log_cum = np.concatenate([[0.0], np.cumsum(np.log(e))])
        for t in range(1, len(scores) + 1):
            out[t - 1] += np.sum(np.exp(log_cum[t] - log_cum[:t])) / GRID
    return out


def sr_capped(scores, null_mean, tolerance, cap):
    m = null_mean + tolerance
    out = np.zeros(len(scores))
    for lam in lambdas(null_mean, tolerance):
        r = 0.0
        for t, s in enumerate(scores):
            r = min(cap, (1.0 + r) * max(0.0, 1.0 + lam * (s - m)))
            out[t] += r / GRID
    return out


def detector_cases():
    cases = []
    n = 300
    streams = [
        ("uniform ranks", RNG.uniform(size=n), 0.5, 0.05),
        ("shifted ranks", RNG.beta(3.0, 1.0, size=n), 0.5, 0.05),
        ("tail indicators at 15%", (RNG.uniform(size=n) < 0.15).astype(float), 0.02, 0.02),
        ("likelihood ratios", RNG.gamma(2.0, 0.6, size=n), 1.0, 0.1),
    ]
    for name, scores, null_mean, tol in streams:
        cases.append({
            "name": name, "null_mean": null_mean, "tolerance": tol, "cap": 1e300,
            "lambdas": lambdas(null_mean, tol), "scores": [float(s) for s in scores],
            "evidence": [float(v) for v in sr_closed_form(scores, null_mean, tol)],
        })
    scores = (RNG.uniform(size=n) < 0.5).astype(float)
    cases.append({
        "name": "capped", "null_mean": 0.02, "tolerance": 0.02, "cap": 1e4,
        "lambdas": lambdas(0.02, 0.02), "scores": [float(s) for s in scores],
        "evidence": [float(v) for v in sr_capped(scores, 0.02, 0.02, 1e4)],
    })
    return cases


def mid_rank_cases():
    out = []
    for sorted_values in (np.sort(np.round(RNG.normal(size=40), 1)), np.sort(RNG.uniform(size=25))):
        x = np.concatenate([sorted_values[::5], RNG.normal(size=6), [-10.0, 10.0]])
        out.append({
            "sorted": [float(v) for v in sorted_values], "x": [float(v) for v in x],
            "rank": [stats.percentileofscore(sorted_values, v, kind="mean") / 100.0 for v in x],
        })
    return out


def raps_case(penalty, free_ranks):
    k, n, n_test = 6, 199, 40
    logits = RNG.normal(size=(n + n_test, k)) * 2.0
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p = (p / p.sum(axis=1, keepdims=True)).astype(np.float32)
    truth = np.array([RNG.choice(k, p=row / row.sum()) for row in p.astype(np.float64)])
    u = RNG.uniform(size=n + n_test)
    cal, test = p[:n].astype(np.float64), p[n:].astype(np.float64)
    order = np.array([np.lexsort((np.arange(k), -row)) for row in cal])
    sorted_p = np.take_along_axis(cal, order, axis=1)
    # Each class adds its probability plus the penalty when its rank is beyond free_ranks; the
    # score is what the classes before it add plus u times what it adds (randomized RAPS).
    adds = sorted_p + penalty * (np.arange(1, k + 1) > free_ranks)
    before = np.cumsum(adds, axis=1) - adds
    position = np.argmax(order == truth[:n, None], axis=1)
    scores = before[np.arange(n), position] + u[:n] * adds[np.arange(n), position]
    coverage = 0.9
    level = math.ceil((n + 1) * coverage) / n
    threshold = float(np.quantile(scores, level, method="inverted_cdf"))
    # numpy's "higher" (as in some published code) would take one rank more than the
    # definition: the ceil((n+1)(1-alpha))-th smallest score.
    assert threshold == float(np.sort(scores)[math.ceil((n + 1) * coverage) - 1])
    sets = []
    for row, uu in zip(test, u[n:]):
        o = np.lexsort((np.arange(k), -row))
        sp = row[o]
        add = sp + penalty * (np.arange(1, k + 1) > free_ranks)
        sc = np.cumsum(add) - add + uu * add
        sets.append([int(c) for c, s in zip(o, sc) if s <= threshold])
    return {
        "penalty": penalty, "free_ranks": free_ranks, "classes": k, "coverage": coverage,
        "probabilities": [float(v) for v in p[:n].ravel()], "truth": [int(t) for t in truth[:n]],
        "u": [float(v) for v in u[:n]], "scores": [float(s) for s in scores],
        "threshold": threshold,
        "test_probabilities": [float(v) for v in p[n:].ravel()], "test_u": [float(v) for v in u[n:]],
        "test_sets": sets,
    }


def neighbors_case():
    """The k-th nearest neighbour distance (src/monitor/reference.rs), by scipy's cdist and a
    full sort: each reference row's to the others (leave-one-out), and each query's."""
    k, n, dim, n_query = 5, 60, 5, 12
    rows = RNG.normal(size=(n, dim)).astype(np.float32)
    queries = (RNG.normal(size=(n_query, dim)) * 1.5).astype(np.float32)
    from scipy.spatial.distance import cdist
    d = cdist(rows.astype(np.float64), rows.astype(np.float64))
    np.fill_diagonal(d, np.inf)
    loo = np.sort(d, axis=1)[:, k - 1]
    q = np.sort(cdist(queries.astype(np.float64), rows.astype(np.float64)), axis=1)[:, k - 1]
    return {
        "k": k, "dim": dim, "rows": [float(v) for v in rows.ravel()],
        "queries": [float(v) for v in queries.ravel()],
        "leave_one_out": [float(v) for v in loo], "query_distances": [float(v) for v in q],
    }


def main():
    fixture = {
        "generator": {"script": "tests/data/make_sequential_fixture.py",
                      "numpy": np.__version__, "scipy": scipy.__version__},
        "detectors": detector_cases(),
        "mid_rank": mid_rank_cases(),
        "raps": [raps_case(0.0, 0), raps_case(0.05, 2)],
        "neighbors": neighbors_case(),
    }
    OUT.write_text(json.dumps(fixture, separators=(",", ":"), allow_nan=False) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
