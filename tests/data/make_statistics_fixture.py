"""Writes tests/data/statistics_fixture.json: inputs and expected values for src/stats.

Every expected value comes from an independent implementation: scipy (ks_2samp, kstwo, chi2,
chisquare, jensenshannon, wasserstein_distance, minimize_scalar), scikit-learn (brier_score_loss,
log_loss as a cross-check) or plain numpy from the definitions in DESIGN.md ("Statistics").
Seeded, so a rerun reproduces the file byte for byte with the same library versions.

Run from the repository root:

    .venv/bin/python tests/data/make_statistics_fixture.py
"""

import json
import math
import pathlib
import warnings

import numpy as np
import scipy
import sklearn
from scipy import optimize, spatial, stats
from sklearn import metrics

OUT = pathlib.Path(__file__).with_name("statistics_fixture.json")
RNG = np.random.default_rng(20260214)
FLOOR = 1e-4  # PSI proportions and chi-square reference ratios
CLIP = 1e-12  # NLL and temperature scaling


def rounded(values, digits=6):
    """Sample values rounded so the JSON stays small; the rounded values are the input."""
    return [float(v) for v in np.round(np.asarray(values, dtype=np.float64), digits)]


def f32_list(values):
    """float32 data stored as the exact float64 value of each float32."""
    return [float(v) for v in np.asarray(values, dtype=np.float32)]


# --- Kolmogorov-Smirnov -----------------------------------------------------------------------


def ks_cases():
    r = RNG
    pairs = [
        ("small 8 vs 12", r.normal(size=8), r.normal(0.3, 1.0, size=12)),
        ("small 12 vs 8 with ties", r.integers(0, 5, size=12), r.integers(1, 6, size=8)),
        ("5 vs 5 (n rounds half to even)", r.normal(size=5), r.normal(1.0, 1.0, size=5)),
        ("identical 50", *(lambda a: (a, a.copy()))(r.normal(size=50))),
        ("shifted 60 vs 40 (exact matrix region)", r.normal(size=60), r.normal(0.4, 1.0, size=40)),
        ("strongly shifted 90 vs 120 (one-sided tail)", r.normal(size=90), r.normal(1.5, 1.0, size=120)),
        ("unshifted 200 vs 150", r.normal(size=200), r.normal(size=150)),
        ("shifted 400 vs 300", r.normal(size=400), r.normal(0.25, 1.0, size=300)),
        ("unshifted 1000 vs 1000", r.normal(size=1000), r.normal(size=1000)),
        ("scale change 800 vs 1500", r.normal(size=800), r.normal(0.0, 1.3, size=1500)),
        ("heavy ties 300 vs 3000", np.round(r.normal(size=300), 1), np.round(r.normal(0.1, 1.0, size=3000), 1)),
        ("small shift 2000 vs 5000", r.normal(size=2000), r.normal(0.06, 1.0, size=5000)),
        ("large shift 2000 vs 5000", r.normal(size=2000), r.normal(0.5, 1.0, size=5000)),
        ("one each", np.array([1.0]), np.array([2.0])),
    ]
    cases = []
    for name, a, b in pairs:
        a, b = rounded(a, 4), rounded(b, 4)
        with warnings.catch_warnings():
            # "one each": scipy's n rounds to 0 and it divides by zero on the way to NaN.
            warnings.simplefilter("ignore", RuntimeWarning)
            result = stats.ks_2samp(a, b, method="asymp")
        p = float(result.pvalue)
        if name == "one each":
            # scipy's n = round(0.5) = 0 gives NaN; the module documents n >= 1 instead.
            assert math.isnan(p)
            p = float(stats.kstwo.sf(result.statistic, 1))
        cases.append({"name": name, "a": a, "b": b, "statistic": float(result.statistic), "p_value": p})
    return cases


def kolmogorov_limit_sf(t):
    """Kolmogorov's limiting survival function, only used to place grid points."""
    if t < 0.2:
        return 1.0
    k = np.arange(1, 101)
    return float(np.clip(2 * np.sum((-1.0) ** (k - 1) * np.exp(-2 * k * k * t * t)), 0, 1))


def limit_isf(p):
    lo, hi = 0.2, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if kolmogorov_limit_sf(mid) > p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def kolmogorov_grid():
    ns = [1, 2, 3, 4, 5, 7, 8, 10, 13, 16, 20, 32, 50, 64, 100, 139, 140, 141, 142, 200, 333, 500,
          1000, 1667, 2000, 3999, 4000, 4001, 4500, 5000, 10000, 20000, 50000, 100000]
    targets = [0.999, 0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.15, 0.1, 0.07, 0.05,
               0.03, 0.02, 0.01, 5e-3, 2e-3, 1e-3, 5e-4, 1e-4, 3e-5, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9,
               1e-10, 1e-11]
    points = set()
    for n in ns:
        ds = set()
        for p in targets:
            ds.add(limit_isf(p) / math.sqrt(n))
        # Method boundaries: n d^2 at 0.754693, 2.2 and 4 (scipy's switches), t = n d at 1 and n - 1,
        # d at 1/2, n d^1.5 at 1.4, and d on the lattice k/n (integer n d).
        for ndd in (0.754693, 2.2, 4.0, 18.0):
            for f in (0.999999, 1.000001):
                ds.add(math.sqrt(ndd / n) * f)
        for t in (0.5000001, 0.75, 1.0, 1.0000001, n - 1.0, n - 0.5):
            ds.add(t / n)
        for d in (0.4999999, 0.5, 0.5000001, 0.6, 0.8, 0.95, (1.4 / n) ** (2 / 3)):
            ds.add(d)
        for k in range(2, min(n, 12)):
            ds.add(k / n)
        if n <= 20:
            ds.update(np.linspace(0.5 / n, 1.0, 41)[1:-1].tolist())
        for d in ds:
            if 0 < d < 1:
                points.add((n, float(d)))
    grid = []
    for n, d in sorted(points):
        sf = float(stats.kstwo.sf(d, n))
        grid.append({"d": d, "n": n, "sf": sf})
    return grid


# --- chi-square ---------------------------------------------------------------------------------


def chi2_sf_grid():
    grid = []
    for dof in [1, 2, 3, 4, 5, 7.5, 9, 10, 19, 30, 99, 500, 2000]:
        xs = {0.0, 1e-6, 0.01, 0.5, float(dof), float(dof) + 1.0}
        for p in [0.999999, 0.999, 0.9, 0.5, 0.1, 0.01, 1e-4, 1e-8, 1e-12, 1e-20, 1e-50]:
            xs.add(float(stats.chi2.isf(p, dof)))
        for x in sorted(xs):
            grid.append({"x": x, "dof": float(dof), "sf": float(scipy.special.chdtrc(dof, x))})
    return grid


def expected_counts(counts, ratios):
    """DESIGN.md's expected counts with the module's documented zero rule."""
    counts = np.asarray(counts, dtype=np.float64)
    ratios = np.asarray(ratios, dtype=np.float64) / np.sum(ratios)
    keep = (counts > 0) | (ratios > 0)
    floored = np.maximum(ratios[keep], FLOOR)
    floored /= floored.sum()
    return counts[keep], floored * counts.sum()


def chi_square_cases():
    r = RNG
    ten = r.dirichlet(np.ones(10) * 3)
    cases = [
        ("matching mix", r.multinomial(2000, ten), ten),
        ("shifted mix", r.multinomial(2000, np.roll(ten, 1) * 0.3 + ten * 0.7), ten),
        ("small window", r.multinomial(40, ten), ten),
        ("class unseen in the reference", [300, 250, 0, 40, 410], [0.3, 0.3, 0.0, 0.0, 0.4]),
        ("class absent from both", [120, 0, 80], [0.55, 0.0, 0.45]),
        ("unnormalised ratios", [30, 50, 20], [3.0, 4.0, 3.0]),
        ("tiny ratio floored", [500, 499, 1], [0.5, 0.49995, 0.00005]),
        ("huge statistic", [5000, 10, 10], [0.2, 0.4, 0.4]),
    ]
    out = []
    for name, counts, ratios in cases:
        counts = [float(c) for c in counts]
        ratios = [float(v) for v in ratios]
        observed, expected = expected_counts(counts, ratios)
        result = stats.chisquare(observed, expected)
        out.append({
            "name": name, "counts": counts, "reference_ratios": ratios,
            "expected": expected.tolist(), "statistic": float(result.statistic),
            "p_value": float(result.pvalue),
        })
    return out


# --- PSI, deciles, Jensen-Shannon, Wasserstein -----------------------------------------------------


def psi_numpy(reference, window):
    r = np.maximum(np.asarray(reference, dtype=np.float64), FLOOR)
    w = np.maximum(np.asarray(window, dtype=np.float64), FLOOR)
    return float(np.sum((w - r) * np.log(w / r)))


def psi_cases():
    r = RNG
    base = r.dirichlet(np.ones(10))
    cases = [
        ("identical", base, base),
        ("shifted", base, r.dirichlet(np.ones(10))),
        ("zeros on both sides", [0.5, 0.5, 0.0, 0.0], [0.25, 0.5, 0.25, 0.0]),
        ("window empty bin", [0.1] * 10, [0.2, 0.0] * 5),
    ]
    return [{"name": n, "reference": [float(v) for v in a], "window": [float(v) for v in b],
             "psi": psi_numpy(a, b)} for n, a, b in cases]


def bins_numpy(values, edges):
    """Proportions per (lo, hi] bin: first edge >= value (np.searchsorted side='left')."""
    values = np.asarray(values, dtype=np.float64)
    index = np.searchsorted(np.asarray(edges), values, side="left")
    return (np.bincount(index, minlength=len(edges) + 1) / len(values)).tolist()


def decile_cases():
    r = RNG
    continuous = rounded(r.gamma(2.0, 1.5, size=1000))
    ties = rounded(np.where(r.random(600) < 0.55, 0.0, r.exponential(1.0, size=600)))
    integers = [float(v) for v in r.integers(0, 4, size=300)]
    cases = [
        ("continuous", continuous, rounded(r.gamma(2.3, 1.5, size=700))),
        ("mostly zeros", ties, rounded(np.where(r.random(500) < 0.3, 0.0, r.exponential(1.2, size=500)))),
        ("few distinct values", integers, [float(v) for v in r.integers(0, 5, size=200)]),
        ("tiny reference", rounded(r.normal(size=5)), rounded(r.normal(size=50))),
    ]
    out = []
    for name, reference, values in cases:
        edges = np.unique(np.quantile(np.asarray(reference), np.arange(1, 10) / 10))
        # Put some window values exactly on the edges to pin the (lo, hi] rule.
        values = list(values) + [float(e) for e in edges]
        reference_props = bins_numpy(reference, edges)
        window_props = bins_numpy(values, edges)
        out.append({
            "name": name, "reference": reference, "values": values, "edges": edges.tolist(),
            "reference_proportions": reference_props, "proportions": window_props,
            "psi": psi_numpy(reference_props, window_props),
        })
    return out


def js_cases():
    r = RNG
    cases = [
        ("random", r.dirichlet(np.ones(10)), r.dirichlet(np.ones(10))),
        ("unnormalised counts", [10, 20, 30, 40], [40, 30, 20, 10]),
        ("zeros", [0.5, 0.5, 0.0], [0.0, 0.5, 0.5]),
        ("near identical", [0.25, 0.25, 0.25, 0.25], [0.2501, 0.2499, 0.25, 0.25]),
        ("identical", [0.1, 0.9], [0.1, 0.9]),
    ]
    return [{"name": n, "p": [float(v) for v in p], "q": [float(v) for v in q],
             "distance": float(spatial.distance.jensenshannon(p, q))} for n, p, q in cases]


def wasserstein_cases():
    r = RNG
    cases = [
        ("shifted", r.normal(size=500), r.normal(0.3, 1.0, size=400)),
        ("ties", np.round(r.normal(size=200), 1), np.round(r.normal(size=300), 1)),
        ("different sizes", r.exponential(size=50), r.exponential(1.5, size=2000)),
        ("identical", *(lambda a: (a, a.copy()))(r.uniform(size=100))),
    ]
    out = []
    for name, reference, window in cases:
        reference, window = rounded(reference), rounded(window)
        distance = float(stats.wasserstein_distance(reference, window))
        out.append({"name": name, "reference": reference, "window": window, "distance": distance,
                    "normalized": distance / float(np.std(reference))})
    return out


# --- MMD ------------------------------------------------------------------------------------------


def mmd2_numpy(x, y, sigma):
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)

    def kernel(a, b):
        d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return np.exp(-d2 / (2 * sigma * sigma))

    n, m = len(x), len(y)
    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2 * kxy.mean())


def median_sigma_numpy(x, y, max_points):
    pooled = np.concatenate([np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)])
    total = len(pooled)
    used = min(total, max(max_points, 2))
    chosen = pooled[[i * total // used for i in range(used)]]
    distances = spatial.distance.pdist(chosen)
    median = float(np.median(distances))
    if median > 0:
        return median
    positive = distances[distances > 0]
    return float(np.median(positive)) if len(positive) else 1.0


def mmd_cases():
    r = RNG
    cases = []
    specs = [
        ("same distribution, dim 4", r.normal(size=(40, 4)), r.normal(size=(55, 4)), 1.5, 1000),
        ("mean shift, dim 8", r.normal(size=(60, 8)), r.normal(0.5, 1.0, size=(50, 8)), 3.0, 40),
        ("dim 1", r.normal(size=(30, 1)), r.normal(0.2, 1.5, size=(25, 1)), 0.7, 1000),
        ("duplicates", np.repeat(r.normal(size=(5, 2)), 6, axis=0), r.normal(size=(12, 2)), 1.0, 1000),
    ]
    for name, x, y, sigma, max_points in specs:
        x32, y32 = np.asarray(np.round(x, 4), dtype=np.float32), np.asarray(np.round(y, 4), dtype=np.float32)
        cases.append({
            "name": name, "dim": x.shape[1], "x": f32_list(x32.ravel()), "y": f32_list(y32.ravel()),
            "sigma": sigma, "mmd2": mmd2_numpy(x32, y32, sigma), "max_points": max_points,
            "median_sigma": median_sigma_numpy(x32, y32, max_points),
        })
    return cases


def mmd_permutation_cases():
    """numpy permutation p-values with numpy's own generator (so only the distribution of the
    p-value, not the permutations, is shared with the Rust test)."""
    r = RNG
    permutations = 2000
    specs = [
        ("no shift", r.normal(size=(40, 3)), r.normal(size=(50, 3))),
        ("mild shift", r.normal(size=(40, 3)), r.normal(0.5, 1.0, size=(50, 3))),
        ("strong shift", r.normal(size=(40, 3)), r.normal(1.5, 1.0, size=(50, 3))),
    ]
    out = []
    for name, x, y in specs:
        x32, y32 = np.asarray(np.round(x, 4), dtype=np.float32), np.asarray(np.round(y, 4), dtype=np.float32)
        sigma = median_sigma_numpy(x32, y32, 1000)
        observed = mmd2_numpy(x32, y32, sigma)
        pooled = np.concatenate([x32, y32]).astype(np.float64)
        d2 = ((pooled[:, None, :] - pooled[None, :, :]) ** 2).sum(-1)
        k = np.exp(-d2 / (2 * sigma * sigma))
        np.fill_diagonal(k, 0.0)
        n, m = len(x32), len(y32)
        perm_rng = np.random.default_rng(99)
        at_least = 0
        for _ in range(permutations):
            order = perm_rng.permutation(n + m)
            ix, iy = order[:n], order[n:]
            value = (k[np.ix_(ix, ix)].sum() / (n * (n - 1)) + k[np.ix_(iy, iy)].sum() / (m * (m - 1))
                     - 2 * k[np.ix_(ix, iy)].mean())
            at_least += value >= observed
        out.append({
            "name": name, "dim": 3, "x": f32_list(x32.ravel()), "y": f32_list(y32.ravel()),
            "sigma": sigma, "mmd2": observed, "permutations": permutations,
            "p_value": (1 + at_least) / (1 + permutations),
        })
    return out


# --- calibration ----------------------------------------------------------------------------------


def calibration_numpy(confidence, correct, bins):
    c = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=np.float64)
    keep = ~np.isnan(c)
    c, ok = c[keep], ok[keep]
    edges = np.array([b / bins for b in range(bins + 1)])  # correctly rounded b / bins, as documented
    index = np.searchsorted(edges[1:-1], c, side="left")  # (lo, hi], 0 in the first bin
    reliability = []
    ece = 0.0
    gaps = []
    for b in range(bins):
        mask = index == b
        count = int(mask.sum())
        accuracy = float(ok[mask].mean()) if count else None
        conf = float(c[mask].mean()) if count else None
        reliability.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": count,
                            "accuracy": accuracy, "confidence": conf})
        if count:
            ece += count / len(c) * abs(accuracy - conf)
            gaps.append(abs(accuracy - conf))
    order = np.argsort(c, kind="stable")
    adaptive = 0.0
    for group in np.array_split(order, bins):
        if len(group):
            adaptive += len(group) / len(c) * abs(ok[group].mean() - c[group].mean())
    return {"ece": ece, "mce": max(gaps), "adaptive_ece": float(adaptive), "reliability": reliability}


def calibration_cases():
    r = RNG
    n = 3000
    logits = r.normal(size=(n, 10)) * 2.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    confidence = np.round(probs.max(1), 4)
    # Overconfident: the true accuracy is below the confidence.
    correct = r.random(n) < np.clip(confidence - 0.12, 0.05, 1.0)
    # Confidences on the bin edges b/15 exactly, and at 0 and 1.
    edge_values = [b / 15 for b in range(16)]
    confidence = np.concatenate([confidence, edge_values, edge_values])
    correct = np.concatenate([correct, [True] * 16, [False] * 16])
    with_nan = np.concatenate([confidence[:200], [np.nan, np.nan]])
    with_nan_correct = np.concatenate([correct[:200], [True, False]])
    few = np.concatenate([confidence[:9], [np.nan]])
    few_correct = np.concatenate([correct[:9], [True]])
    cases = [
        ("overconfident, 15 bins", confidence, correct, 15),
        ("10 bins", confidence, correct, 10),
        ("fewer points than bins, with NaN", few, few_correct, 15),
        ("with NaN", with_nan, with_nan_correct, 15),
        ("ties", np.round(confidence[:500], 1), correct[:500], 15),
    ]
    out = []
    for name, c, ok, bins in cases:
        values = [None if math.isnan(v) else float(v) for v in c]
        out.append({"name": name, "confidence": values, "correct": [bool(v) for v in ok], "bins": bins,
                    **calibration_numpy(c, ok, bins)})
    return out


def probabilities(n, k, scale, temperature):
    """float32 softmax probabilities of random logits, labels drawn at another temperature."""
    logits = RNG.normal(size=(n, k)) * scale
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs = (probs / probs.sum(1, keepdims=True)).astype(np.float32)
    true = np.exp(logits / temperature)
    true /= true.sum(1, keepdims=True)
    labels = np.array([RNG.choice(k, p=row) for row in true])
    return probs, labels


def brier_numpy(probs, labels):
    p = probs.astype(np.float64)
    onehot = np.eye(p.shape[1])[labels]
    return float(((p - onehot) ** 2).sum(1).mean())


def nll_numpy(probs, labels):
    p = probs.astype(np.float64)[np.arange(len(labels)), labels]
    return float(-np.log(np.maximum(p, CLIP)).mean())


def scores_cases():
    probs, labels = probabilities(400, 10, 2.0, 2.0)
    probs[0, labels[0]] = 0.0  # a clipped term
    brier = brier_numpy(probs, labels)
    nll = nll_numpy(probs, labels)
    with warnings.catch_warnings():
        # float32 rows sum to 1 only to float32 precision, which scikit-learn warns about.
        warnings.simplefilter("ignore", UserWarning)
        # Cross-checks of the numpy definitions, without the row whose label probability is 0
        # (scikit-learn clips at machine epsilon, not 1e-12).
        sk = metrics.brier_score_loss(labels[1:], probs[1:].astype(np.float64), labels=list(range(10)),
                                      scale_by_half=False)
        sk_nll = metrics.log_loss(labels[1:], probs[1:].astype(np.float64), labels=list(range(10)))
    assert abs(sk - brier_numpy(probs[1:], labels[1:])) < 1e-12, sk
    assert abs(sk_nll - nll_numpy(probs[1:], labels[1:])) < 1e-6, sk_nll
    multi = {"k": 10, "probs": f32_list(probs.ravel()), "labels": labels.tolist(), "brier": brier, "nll": nll}

    # Binary, with p1 on a 2^-10 lattice so p0 = 1 - p1 is exact in float32.
    p1 = np.round(RNG.random(300) * 1024) / 1024
    y = (RNG.random(300) < p1).astype(int)
    pairs = np.stack([1 - p1, p1], axis=1).astype(np.float32)
    binary = {
        "probs": f32_list(pairs.ravel()), "labels": y.tolist(),
        # The multiclass sum over two classes is twice the binary Brier score.
        "brier": 2 * float(metrics.brier_score_loss(y, p1)),
        "nll": nll_numpy(pairs, y),
    }
    # scikit-learn clips at machine epsilon instead of 1e-12: cross-check where nothing is clipped.
    inside = pairs.min(1) > 0
    sk_nll = metrics.log_loss(y[inside], pairs[inside].astype(np.float64))
    assert abs(sk_nll - nll_numpy(pairs[inside], y[inside])) < 1e-12, sk_nll
    return multi, binary


def temperature_case():
    probs, labels = probabilities(600, 8, 3.0, 2.5)
    logits = np.log(np.maximum(probs.astype(np.float64), CLIP))

    def nll_at(t):
        z = logits / t
        z = z - z.max(1, keepdims=True)
        log_softmax = z - np.log(np.exp(z).sum(1, keepdims=True))
        return float(-log_softmax[np.arange(len(labels)), labels].mean())

    result = optimize.minimize_scalar(nll_at, bounds=(0.05, 20.0), method="bounded",
                                      options={"xatol": 1e-10})
    t = float(result.x)
    z = logits / t
    scaled = np.exp(z - z.max(1, keepdims=True))
    scaled /= scaled.sum(1, keepdims=True)
    return {"k": 8, "probs": f32_list(probs.ravel()), "labels": labels.tolist(), "temperature": t,
            "scaled_probs": scaled.ravel().tolist(), "nll_after": nll_numpy(scaled.astype(np.float32), labels)}


def atc_case():
    r = RNG
    n = 2000
    confidence = r.beta(8, 2, size=n)
    correct = r.random(n) < confidence - 0.08
    s = np.sort(confidence)
    hits = int(correct.sum())
    threshold = float(s[n - hits - 1]) if hits < n else 0.0
    assert np.mean(confidence > threshold) == np.mean(correct)
    window = r.beta(6, 2.5, size=1500)
    reference_accuracy = float(np.mean(correct))
    reference_mean = float(np.mean(confidence))
    window_mean = float(np.mean(window))
    return {
        "confidence": confidence.tolist(), "correct": correct.tolist(), "threshold": threshold,
        "window_confidence": window.tolist(), "estimate": float(np.mean(window > threshold)),
        "reference_accuracy": reference_accuracy, "reference_mean_confidence": reference_mean,
        "window_mean_confidence": window_mean,
        "doc": reference_accuracy - (reference_mean - window_mean),
    }


def mean_cases():
    r = RNG
    return [{"values": rounded(v), "mean": float(np.mean(rounded(v))), "std": float(np.std(rounded(v)))}
            for v in (r.normal(3.0, 2.0, size=1000), [1.5], r.exponential(size=17))]


def main():
    scores, scores_binary = scores_cases()
    fixture = {
        "generator": {
            "script": "tests/data/make_statistics_fixture.py",
            "numpy": np.__version__, "scipy": scipy.__version__, "scikit-learn": sklearn.__version__,
        },
        "ks_2samp": ks_cases(),
        "kolmogorov_sf": kolmogorov_grid(),
        "chi2_sf": chi2_sf_grid(),
        "chi_square": chi_square_cases(),
        "psi": psi_cases(),
        "deciles": decile_cases(),
        "js_distance": js_cases(),
        "wasserstein": wasserstein_cases(),
        "mmd": mmd_cases(),
        "mmd_permutation": mmd_permutation_cases(),
        "calibration": calibration_cases(),
        "scores": scores,
        "scores_binary": scores_binary,
        "temperature": temperature_case(),
        "atc": atc_case(),
        "mean": mean_cases(),
    }
    text = json.dumps(fixture, separators=(",", ":"), allow_nan=False)
    OUT.write_text(text + "\n")
    print(f"wrote {OUT} ({len(text) / 1e6:.2f} MB, {len(fixture['kolmogorov_sf'])} Kolmogorov grid points)")


if __name__ == "__main__":
    main()
