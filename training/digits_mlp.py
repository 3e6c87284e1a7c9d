"""The digits data splits, a numpy MLP with its own backprop and Adam, and the three training variants.

Everything here is pure computation: no files are read or written. `build.py` drives it.

Conventions: the model input is the digit intensity v (0..16) divided by 16, i.e. pixel / 240 for the
bundled PNGs (pixel = 15 * v). Training runs in float64; the exported model is float32.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

N_CLASSES = 10
CLASS_NAMES = [str(c) for c in range(N_CLASSES)]

# ---------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------

VALIDATION_SIZE = 300  # labeled validation set, the monitoring reference set


@dataclass(frozen=True)
class Splits:
    """The fixed splits. `*_idx` index rows of `load_digits()`; `v_*` are intensities 0..16 (float64)."""

    v_all: np.ndarray
    y_all: np.ndarray
    test_idx: np.ndarray
    val_idx: np.ndarray
    pool_idx: np.ndarray  # labeled training sets are drawn from here; the rest of it is unlabeled

    @property
    def v_test(self):
        return self.v_all[self.test_idx]

    @property
    def y_test(self):
        return self.y_all[self.test_idx]

    @property
    def v_val(self):
        return self.v_all[self.val_idx]

    @property
    def y_val(self):
        return self.y_all[self.val_idx]


def load_splits() -> Splits:
    digits = load_digits()
    v_all = digits.data.astype(np.float64)  # (1797, 64), integers 0..16
    y_all = digits.target.astype(np.int64)
    idx = np.arange(len(y_all))
    # The test split, exactly as the issue prescribes; never used for training or model selection.
    X_rest, X_test, y_rest, y_test = train_test_split(
        v_all, y_all, test_size=0.3, random_state=0, stratify=y_all
    )
    # Recover the row indices of that split (same call on the index vector gives the same permutation).
    rest_idx, test_idx = train_test_split(idx, test_size=0.3, random_state=0, stratify=y_all)
    assert np.array_equal(v_all[test_idx], X_test) and np.array_equal(y_all[test_idx], y_test)
    assert np.array_equal(v_all[rest_idx], X_rest)
    pool_idx, val_idx = train_test_split(
        rest_idx, test_size=VALIDATION_SIZE, random_state=0, stratify=y_all[rest_idx]
    )
    return Splits(v_all, y_all, np.asarray(test_idx), np.asarray(val_idx), np.asarray(pool_idx))


def draw_labeled(splits: Splits, n_labeled: int, seed: int, imbalance: dict | None = None):
    """Split the pool into a class-balanced labeled set of `n_labeled` and the unlabeled rest.

    `n_labeled // 10` per class, the remainder to randomly chosen classes. `imbalance` (class ->
    count) overrides the per-class counts. Returns (labeled_idx, unlabeled_idx), rows of load_digits().
    """
    rng = np.random.default_rng([seed, n_labeled, 7919])
    y_pool = splits.y_all[splits.pool_idx]
    if imbalance is not None:
        per_class = np.array([imbalance.get(c, 0) for c in range(N_CLASSES)])
    else:
        per_class = np.full(N_CLASSES, n_labeled // N_CLASSES)
        extra = rng.choice(N_CLASSES, size=n_labeled % N_CLASSES, replace=False)
        per_class[extra] += 1
    chosen = []
    for c in range(N_CLASSES):
        members = np.flatnonzero(y_pool == c)
        chosen.extend(rng.choice(members, size=per_class[c], replace=False).tolist())
    chosen = np.sort(np.array(chosen, dtype=np.int64))
    mask = np.zeros(len(y_pool), dtype=bool)
    mask[chosen] = True
    return splits.pool_idx[mask], splits.pool_idx[~mask]


# ---------------------------------------------------------------------------------------------------
# Model: 64 -> 128 (ReLU) -> 32 (ReLU, the embedding) -> 10 (softmax)
# ---------------------------------------------------------------------------------------------------

HIDDEN = 128
EMBEDDING = 32


def init_params(rng: np.random.Generator, n_in=64, hidden=HIDDEN, emb=EMBEDDING, n_out=N_CLASSES):
    def he(fan_in, fan_out):
        return rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(fan_in, fan_out))

    return {
        "W1": he(n_in, hidden),
        "b1": np.zeros(hidden),
        "W2": he(hidden, emb),
        "b2": np.zeros(emb),
        "W3": rng.normal(0.0, np.sqrt(1.0 / emb), size=(emb, n_out)),
        "b3": np.zeros(n_out),
    }


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def forward(params, x):
    """x: (n, 64). Returns logits and the cache needed by `backward`."""
    a1 = x @ params["W1"] + params["b1"]
    h1 = np.maximum(a1, 0.0)
    a2 = h1 @ params["W2"] + params["b2"]
    h2 = np.maximum(a2, 0.0)  # the embedding
    z = h2 @ params["W3"] + params["b3"]
    return z, (x, a1, h1, a2, h2)


def predict(params, x):
    """Probabilities and embeddings, in the dtype of `params` and `x`."""
    z, cache = forward(params, x)
    return softmax(z), cache[4]


def backward(params, cache, dz):
    """Gradients of a loss whose gradient w.r.t. the logits is `dz`."""
    x, a1, h1, a2, h2 = cache
    g = {"W3": h2.T @ dz, "b3": dz.sum(0)}
    dh2 = dz @ params["W3"].T
    da2 = dh2 * (a2 > 0)
    g["W2"] = h1.T @ da2
    g["b2"] = da2.sum(0)
    dh1 = da2 @ params["W2"].T
    da1 = dh1 * (a1 > 0)
    g["W1"] = x.T @ da1
    g["b1"] = da1.sum(0)
    return g


class Adam:
    """Adam (Kingma & Ba 2015) with decoupled weight decay on the weight matrices (AdamW)."""

    def __init__(self, params, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
        self.lr, self.b1, self.b2, self.eps, self.wd = lr, beta1, beta2, eps, weight_decay
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.t = 0

    def step(self, params, grads):
        self.t += 1
        c1 = 1.0 - self.b1**self.t
        c2 = 1.0 - self.b2**self.t
        for k in params:
            g = grads[k]
            self.m[k] = self.b1 * self.m[k] + (1.0 - self.b1) * g
            self.v[k] = self.b2 * self.v[k] + (1.0 - self.b2) * g * g
            update = (self.m[k] / c1) / (np.sqrt(self.v[k] / c2) + self.eps)
            if self.wd and k.startswith("W"):
                update = update + self.wd * params[k]
            params[k] -= self.lr * update


def softmax_backward(p, dp):
    """Gradient w.r.t. logits given the gradient `dp` w.r.t. the softmax output `p`."""
    return p * (dp - (dp * p).sum(axis=1, keepdims=True))


# ---------------------------------------------------------------------------------------------------
# Training variants
# ---------------------------------------------------------------------------------------------------

VARIANTS = ("supervised", "lee", "arazo")


@dataclass(frozen=True)
class TrainConfig:
    variant: str
    steps: int = 4000  # weight updates
    lr: float = 1e-3
    weight_decay: float = 1e-4  # AdamW, weight matrices only
    batch_labeled: int = 32  # supervised and lee: labeled mini-batch (capped at the labeled-set size)
    # Lee (2013)
    batch_unlabeled: int = 128
    t1: int = 800  # alpha = 0 before this step
    t2: int = 2800  # alpha reaches alpha_f here
    alpha_f: float = 3.0
    # Arazo et al. (2020)
    warmup_steps: int = 500  # labeled data only (with mixup), then soft pseudo-labels start
    batch: int = 128  # mixed mini-batch size
    min_labeled: int = 32  # labeled samples in every mini-batch (oversampled when few)
    mixup_alpha: float = 1.0  # Beta(alpha, alpha)
    lambda_a: float = 0.8  # class-prior regulariser R_A
    lambda_h: float = 0.4  # entropy regulariser R_H
    label_smoothing: float = 0.0  # epsilon for the labeled targets (an option; off in the table)

    def describe(self) -> dict:
        common = {"steps": self.steps, "optimizer": "adamw", "lr": self.lr, "weight_decay": self.weight_decay}
        if self.variant == "supervised":
            return {**common, "batch_labeled": self.batch_labeled}
        if self.variant == "lee":
            return {
                **common,
                "batch_labeled": self.batch_labeled,
                "batch_unlabeled": self.batch_unlabeled,
                "t1": self.t1,
                "t2": self.t2,
                "alpha_f": self.alpha_f,
            }
        return {
            **common,
            "warmup_steps": self.warmup_steps,
            "batch": self.batch,
            "min_labeled": self.min_labeled,
            "mixup_alpha": self.mixup_alpha,
            "lambda_a": self.lambda_a,
            "lambda_h": self.lambda_h,
            "label_smoothing": self.label_smoothing,
        }


def default_config(variant: str, **overrides) -> TrainConfig:
    return replace(TrainConfig(variant=variant), **overrides)


class _Sampler:
    """Endless mini-batches of indices: shuffled epochs without replacement, concatenated."""

    def __init__(self, n, rng):
        self.n, self.rng, self.order, self.pos = n, rng, np.empty(0, dtype=np.int64), 0

    def take(self, k):
        out = []
        while k > 0:
            if self.pos >= len(self.order):
                self.order, self.pos = self.rng.permutation(self.n), 0
            part = self.order[self.pos : self.pos + k]
            self.pos += len(part)
            k -= len(part)
            out.append(part)
        return np.concatenate(out)


def lee_alpha(step, cfg: TrainConfig):
    """alpha(t) of Lee (2013): 0 before T1, linear up to alpha_f at T2, alpha_f after."""
    if step < cfg.t1:
        return 0.0
    if step < cfg.t2:
        return cfg.alpha_f * (step - cfg.t1) / (cfg.t2 - cfg.t1)
    return cfg.alpha_f


def train(cfg: TrainConfig, x_l, y_l, x_u, seed: int):
    """Train one model. x_* are model inputs (v / 16), float64. Returns the parameters (float64)."""
    rng = np.random.default_rng([seed, 104729])
    params = init_params(rng)
    opt = Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    onehot_l = np.eye(N_CLASSES)[y_l]
    lab = _Sampler(len(x_l), rng)
    unl = _Sampler(len(x_u), rng)
    if cfg.variant == "supervised":
        b = min(cfg.batch_labeled, len(x_l))
        for _ in range(cfg.steps):
            i = lab.take(b)
            z, cache = forward(params, x_l[i])
            dz = (softmax(z) - onehot_l[i]) / b
            opt.step(params, backward(params, cache, dz))
    elif cfg.variant == "lee":
        bl = min(cfg.batch_labeled, len(x_l))
        bu = cfg.batch_unlabeled
        for step in range(cfg.steps):
            i, j = lab.take(bl), unl.take(bu)
            z, cache = forward(params, np.concatenate([x_l[i], x_u[j]]))
            p = softmax(z)
            dz = np.empty_like(p)
            dz[:bl] = (p[:bl] - onehot_l[i]) / bl
            alpha = lee_alpha(step, cfg)
            # Pseudo-labels: the class with the highest predicted probability, recomputed at every
            # weight update from the current network (treated as targets, no gradient through them).
            pseudo = np.eye(N_CLASSES)[p[bl:].argmax(1)]
            dz[bl:] = alpha * (p[bl:] - pseudo) / bu
            opt.step(params, backward(params, cache, dz))
    elif cfg.variant == "arazo":
        params = _train_arazo(cfg, params, opt, rng, x_l, onehot_l, x_u, lab, unl)
    else:
        raise ValueError(f"unknown variant {cfg.variant!r}")
    return params


def _train_arazo(cfg, params, opt, rng, x_l, onehot_l, x_u, lab, unl):
    """Arazo et al. (2020): soft pseudo-labels, mixup, k labeled samples per mini-batch, R_A and R_H."""
    eps = cfg.label_smoothing
    t_l = (1.0 - eps) * onehot_l + eps / N_CLASSES
    prior = np.full(N_CLASSES, 1.0 / N_CLASSES)
    k = min(cfg.min_labeled, cfg.batch)
    bu = cfg.batch - k
    steps_per_epoch = max(1, int(np.ceil(len(x_u) / bu)))
    soft = None
    for step in range(cfg.steps):
        warm = step < cfg.warmup_steps
        if warm:
            i = lab.take(min(cfg.batch, max(k, len(x_l))))
            x, t = x_l[i], t_l[i]
        else:
            if soft is None or (step - cfg.warmup_steps) % steps_per_epoch == 0:
                # Soft pseudo-labels: the network's softmax outputs for every unlabeled sample,
                # refreshed once per epoch over the unlabeled data.
                soft = softmax(forward(params, x_u)[0])
            i, j = lab.take(k), unl.take(bu)
            x = np.concatenate([x_l[i], x_u[j]])
            t = np.concatenate([t_l[i], soft[j]])
        lam = rng.beta(cfg.mixup_alpha, cfg.mixup_alpha)
        perm = rng.permutation(len(x))
        xm = lam * x + (1.0 - lam) * x[perm]
        tm = lam * t + (1.0 - lam) * t[perm]
        z, cache = forward(params, xm)
        p = softmax(z)
        b = len(x)
        dz = (p - tm) / b  # cross-entropy against the mixed (soft) targets
        if not warm:
            # R_A = -sum_c prior_c log(mean_i p_ic): keeps all classes predicted.
            pbar = p.mean(0)
            dp = np.broadcast_to(-prior / pbar / b, p.shape)
            # R_H = -(1/b) sum_i sum_c p_ic log p_ic: pushes single-class predictions.
            dp_h = -(np.log(np.clip(p, 1e-12, None)) + 1.0) / b
            dz = dz + softmax_backward(p, cfg.lambda_a * dp + cfg.lambda_h * dp_h)
        opt.step(params, backward(params, cache, dz))
    return params


# ---------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------

ECE_BINS = 15


def ece(probs, y, n_bins=ECE_BINS):
    """Expected calibration error on the top-label confidence, equal-width bins (lo, hi]."""
    conf = probs.max(1)
    correct = probs.argmax(1) == y
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            total += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(total)


def evaluate(probs, y) -> dict:
    acc = float((probs.argmax(1) == y).mean())
    conf = float(probs.max(1).mean())
    return {"accuracy": acc, "ece": ece(probs, y), "confidence": conf, "gap": conf - acc}


@dataclass
class RunResult:
    variant: str
    n_labeled: int
    seed: int
    test: dict
    val: dict
    extra: dict = field(default_factory=dict)
