"""tests/data/estimate_fixture.json: the label-free estimators of src/stats/estimate.rs and the
boosted trees of src/stats/boost.rs, each computed here by an independent implementation:
numpy (nuclear norm, BBSE's solve, the weighted ECDF, polyfit), scipy (linear_sum_assignment for
COT, kstwo / ks_2samp for the p-value) and scikit-learn (GradientBoostingClassifier).

usage: .venv/bin/python tests/data/make_estimate_fixture.py   (from the repository root)
"""

import json
import math
import os
import warnings

import numpy as np
from scipy import stats
from scipy.optimize import linear_sum_assignment
from sklearn.ensemble import GradientBoostingClassifier

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "estimate_fixture.json")
# The documented constants of src/stats/estimate.rs's bbse.
BBSE_CONDITION_LIMIT, BBSE_RIDGE = 1e-8, 1e-6


def softmax_rows(rng, n, k, scale=3.0, bias=None):
    logits = rng.normal(0, scale, size=(n, k))
    if bias is not None:
        logits = logits + bias
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def flat(p32):
    return p32.astype(np.float64).ravel().tolist()


def nuclear_cases(rng):
    cases = []
    for n, k in [(1, 3), (7, 3), (7, 10), (300, 3), (300, 10)]:
        p = softmax_rows(rng, n, k)
        cases.append((f"softmax n={n} k={k}", p))
    # Confident predictions on 2 of 10 classes: rank 2, eight zero singular values.
    p = np.zeros((50, 10), dtype=np.float32)
    p[np.arange(50), rng.integers(2, size=50) * 3] = 1.0
    cases.append(("one-hot on two classes", p))
    # Uniform rows: rank 1, the smallest possible score 1/sqrt(k).
    cases.append(("uniform rows", np.full((20, 4), 0.25, dtype=np.float32)))
    out = []
    for name, p in cases:
        n, k = p.shape
        p64 = p.astype(np.float64)
        score = np.linalg.norm(p64, "nuc") / math.sqrt(n * min(n, k))
        out.append({"name": name, "k": k, "probs": flat(p), "score": float(score)})
    return out


def largest_remainder(n, prior):
    """The capacities of estimate.rs: floor of n * prior / total, the rest to the largest
    remainders (ties to the lower index), never to a class of prior 0. Loops, not numpy
    reductions, so every float is computed in the same order as the Rust code."""
    total = 0.0
    for p in prior:
        total += p
    quotas = [n * (p / total) for p in prior]
    caps = [math.floor(q) for q in quotas]
    left = n - sum(caps)
    order = sorted((y for y in range(len(prior)) if prior[y] > 0), key=lambda y: -(quotas[y] - math.floor(quotas[y])))
    while left > 0:
        for y in order:
            if left == 0:
                break
            caps[y] += 1
            left -= 1
    return caps


def cot_cases(rng):
    specs = [
        ("n=5 k=3", 5, [0.5, 0.3, 0.2], None),
        ("n=50 k=3 zero class", 50, [0.6, 0.0, 0.4], None),
        ("n=50 k=10 window skewed to class 0", 50, [0.1] * 10, np.r_[3.0, np.zeros(9)]),
        ("n=400 k=10 unequal prior", 400, list(rng.dirichlet(np.ones(10) * 2)), None),
        ("n=400 k=3 window mix differs from prior", 400, [0.2, 0.3, 0.5], np.array([2.0, 0.0, -1.0])),
        ("n=7 k=4 remainder ties", 7, [0.25, 0.25, 0.25, 0.25], None),
    ]
    out = []
    for name, n, prior, bias in specs:
        k = len(prior)
        p = softmax_rows(rng, n, k, scale=2.0, bias=bias)
        p64 = p.astype(np.float64)
        caps = largest_remainder(n, prior)
        assert sum(caps) == n
        # ||p - e_y||_inf for every row and class, in float64 of the float32 values
        cost = np.empty((n, k))
        for y in range(k):
            onehot = np.zeros(k)
            onehot[y] = 1.0
            cost[:, y] = np.abs(p64 - onehot).max(axis=1)
        columns = [y for y in range(k) for _ in range(caps[y])]
        expanded = cost[:, columns]
        rows, cols = linear_sum_assignment(expanded)
        total = float(expanded[rows, cols].sum())
        out.append(
            {
                "name": name,
                "k": k,
                "probs": flat(p),
                "prior": [float(v) for v in prior],
                "capacities": caps,
                "total_cost": total,
                "accuracy": 1.0 - total / n,
            }
        )
    return out


def bbse_solution(confusion, mu):
    """numpy's reference for estimate.rs's bbse: solve when well conditioned, else the ridge
    (C^T C + lam I)^-1 C^T mu, computed as the least-squares solution of [C; sqrt(lam) I] w = [mu; 0]."""
    k = confusion.shape[0]
    c = confusion / confusion.sum()
    mu = mu / mu.sum()
    s = np.linalg.svd(c, compute_uv=False)
    ridge = not (s.min() > BBSE_CONDITION_LIMIT * s.max())
    if ridge:
        lam = (BBSE_RIDGE * s.max()) ** 2
        a = np.vstack([c, math.sqrt(lam) * np.eye(k)])
        w = np.linalg.lstsq(a, np.r_[mu, np.zeros(k)], rcond=None)[0]
    else:
        w = np.linalg.solve(c, mu)
    min_norm = np.linalg.lstsq(c, mu, rcond=None)[0]
    p = c.sum(axis=0)
    q = np.clip(w, 0, None) * p
    q = q / q.sum()
    weights = np.where(p > 0, q / np.where(p > 0, p, 1), 0.0)
    recall = np.where(p > 0, np.diag(c) / np.where(p > 0, p, 1), 0.0)
    return {
        "ridge": bool(ridge),
        "raw_solution": w.tolist(),
        "lstsq_min_norm": min_norm.tolist(),
        "weights": weights.tolist(),
        "class_mix": q.tolist(),
        "prior_corrected_accuracy": float((q * recall).sum()),
    }


def bbse_cases(rng):
    out = []

    def labeled(n, k, accuracy, prior, never_predicted=()):
        truth = rng.choice(k, size=n, p=prior)
        predicted = truth.copy()
        wrong = rng.random(n) > accuracy
        predicted[wrong] = rng.integers(k, size=wrong.sum())
        for c in never_predicted:
            # the model never says c: those predictions go to the next class
            predicted[predicted == c] = (c + 1) % k
        return predicted, truth

    def confusion_of(predicted, truth, k):
        c = np.zeros((k, k))
        np.add.at(c, (predicted, truth), 1.0)
        return c / len(truth)

    # Well conditioned, the window's class mix shifted: mu = C_cond q_new.
    for name, k, n, acc, prior, q_new in [
        ("k=3 shift toward class 2", 3, 600, 0.8, [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]),
        ("k=5 no shift", 5, 1000, 0.7, [0.2] * 5, [0.2] * 5),
    ]:
        predicted, truth = labeled(n, k, acc, prior)
        c = confusion_of(predicted, truth, k)
        cond = c / c.sum(axis=0)  # P(pred | true)
        mu = cond @ np.array(q_new)
        out.append({"name": name, "k": k, "predicted": predicted.tolist(), "truth": truth.tolist(),
                    "confusion": c.ravel().tolist(), "window_mix": mu.tolist(), **bbse_solution(c, mu)})
    # Clipping: a window that predicts one class far more than any class mix explains.
    predicted, truth = labeled(500, 4, 0.75, [0.25] * 4)
    c = confusion_of(predicted, truth, 4)
    mu = np.array([0.94, 0.02, 0.02, 0.02])
    sol = bbse_solution(c, mu)
    assert min(sol["raw_solution"]) < 0, "this case is meant to clip"
    out.append({"name": "k=4 clipped", "k": 4, "predicted": predicted.tolist(), "truth": truth.tolist(),
                "confusion": c.ravel().tolist(), "window_mix": mu.tolist(), **sol})
    # Singular: class 3 never predicted (row 3 of C is zero), the window agrees.
    predicted, truth = labeled(800, 5, 0.8, [0.3, 0.2, 0.2, 0.15, 0.15], never_predicted=(3,))
    c = confusion_of(predicted, truth, 5)
    cond = c / c.sum(axis=0)
    mu = cond @ np.array([0.1, 0.3, 0.2, 0.2, 0.2])
    sol = bbse_solution(c, mu)
    assert sol["ridge"]
    out.append({"name": "k=5 class 3 never predicted (ridge)", "k": 5, "predicted": predicted.tolist(),
                "truth": truth.tolist(), "confusion": c.ravel().tolist(), "window_mix": mu.tolist(), **sol})
    # Singular: class 2 never true in the reference (column 2 zero), and the window predicts it.
    predicted, truth = labeled(500, 3, 0.85, [0.6, 0.4, 0.0])
    c = confusion_of(predicted, truth, 3)
    assert c[:, 2].sum() == 0 and c[2, :].sum() > 0
    mu = np.array([0.3, 0.5, 0.2])
    sol = bbse_solution(c, mu)
    assert sol["ridge"]
    out.append({"name": "k=3 class 2 never true (ridge)", "k": 3, "predicted": predicted.tolist(),
                "truth": truth.tolist(), "confusion": c.ravel().tolist(), "window_mix": mu.tolist(), **sol})
    return out


def weighted_ks_reference(sample, reference, weights):
    sample = np.sort(sample)
    xs = np.unique(np.r_[sample, reference])
    f_sample = np.searchsorted(sample, xs, side="right") / len(sample)
    f_ref = np.array([weights[reference <= x].sum() for x in xs]) / weights.sum()
    d = float(np.max(np.abs(f_sample - f_ref)))
    m_eff = max(float(np.round(weights.sum() ** 2 / (weights**2).sum())), 1.0)
    n = len(sample)
    size = max(float(np.round(n * m_eff / (n + m_eff))), 1.0)
    return d, m_eff, size, float(stats.kstwo.sf(d, size))


def weighted_ks_cases(rng):
    out = []
    specs = []
    # Equal weights: must be scipy's ks_2samp(method="asymp") itself.
    specs.append(("equal weights", rng.normal(0.3, 1, 120), rng.normal(0, 1, 300), np.ones(300), True))
    # Class weights with ties in the values (two decimals).
    ref = np.round(rng.normal(0, 1, 400), 2)
    cls = rng.integers(3, size=400)
    w = np.array([0.5, 1.0, 2.5])[cls]
    specs.append(("class weights with ties", np.round(rng.normal(0.2, 1, 200), 2), ref, w, False))
    # Small sizes, some zero weights.
    specs.append(("small, zero weights", rng.normal(0, 1, 5), rng.normal(0, 1, 8),
                  np.array([0.0, 1.0, 2.0, 0.0, 1.0, 3.0, 1.0, 0.5]), False))
    # Large, mild weights, no shift: a p-value in the body of the distribution.
    specs.append(("large unshifted", rng.normal(0, 1, 1000), rng.normal(0, 1, 2000), rng.uniform(0.5, 1.5, 2000), False))
    for name, sample, reference, weights, equal in specs:
        d, m_eff, size, p = weighted_ks_reference(sample, reference, weights)
        case = {"name": name, "sample": np.sort(sample).tolist(), "reference": reference.tolist(),
                "weights": weights.tolist(), "statistic": d, "effective_size": m_eff, "size": size, "p_value": p}
        if equal:
            r = stats.ks_2samp(sample, reference, method="asymp")
            assert abs(r.statistic - d) < 1e-12 and abs(r.pvalue - p) < 1e-12
            case["scipy_ks_2samp_p_value"] = float(r.pvalue)
        out.append(case)
    return out


def linear_fit_cases(rng):
    out = []
    for name, x in [("two points", np.array([1.0, 3.0])), ("noisy 40", rng.uniform(0, 1, 40)),
                    ("repeated x", np.array([0.5, 0.5, 0.9, 0.9, 0.9]))]:
        y = 0.3 - 1.7 * x + rng.normal(0, 0.1, len(x))
        slope, intercept = np.polyfit(x, y, 1)
        out.append({"name": name, "x": x.tolist(), "y": y.tolist(), "intercept": float(intercept), "slope": float(slope)})
    return out


def boost_case(rng):
    n, f, q = 400, 6, 50
    # Continuous features (no ties, so scikit-learn's random feature order cannot change a
    # split), stored as float32 values because scikit-learn fits on float32.
    x = rng.normal(size=(n + q, f)).astype(np.float32)
    x[:, 3] = rng.uniform(0, 1, n + q).astype(np.float32)
    x64 = x.astype(np.float64)
    logit = 1.5 * x64[:, 0] - x64[:, 1] * x64[:, 2] + 2.0 * (x64[:, 3] > 0.6) - 0.5
    y = rng.random(n + q) < 1 / (1 + np.exp(-logit))
    weights = rng.uniform(0.2, 3.0, n)
    train, query = x64[:n], x64[n:]
    for column in range(f):
        assert len(np.unique(x[:n, column])) == n, "ties in a feature"
    params = dict(n_estimators=30, max_depth=3, learning_rate=0.1, min_samples_leaf=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = GradientBoostingClassifier(loss="log_loss", subsample=1.0, max_features=None, random_state=0, **params)
    model.fit(train, y[:n], sample_weight=weights)
    # Refit with other feature orders: the trees must not depend on it (no ties).
    for seed in (1, 2):
        other = GradientBoostingClassifier(loss="log_loss", random_state=seed, **params).fit(train, y[:n], sample_weight=weights)
        assert np.array_equal(other.predict_proba(query), model.predict_proba(query))
    first = model.estimators_[0, 0].tree_
    return {
        "n_features": f,
        "trees": 30, "depth": 3, "learning_rate": 0.1, "min_leaf": 5,
        "rows": train.ravel().tolist(),
        "labels": y[:n].tolist(),
        "weights": weights.tolist(),
        "queries": query.ravel().tolist(),
        "base": float(model._raw_predict_init(query[:1])[0, 0]),
        "probability": model.predict_proba(query)[:, 1].tolist(),
        "decision": model.decision_function(query).tolist(),
        "train_probability": model.predict_proba(train)[:, 1].tolist(),
        "first_tree": {
            "feature": first.feature.tolist(),
            "threshold": first.threshold.tolist(),
            "value": first.value[:, 0, 0].tolist(),
        },
    }


def main():
    rng = np.random.default_rng(15)
    fixture = {
        "nuclear_norm": nuclear_cases(rng),
        "cot": cot_cases(rng),
        "bbse": bbse_cases(rng),
        "weighted_ks": weighted_ks_cases(rng),
        "linear_fit": linear_fit_cases(rng),
        "boost": boost_case(rng),
    }
    with open(OUT, "w") as f:
        json.dump(fixture, f)
        f.write("\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
