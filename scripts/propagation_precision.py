"""Precision of propagated labels by distance threshold, on the bundled data (the README table).

Label propagation (src/relabel/export.rs) gives an exported task a second prediction with the
label of its nearest labeled neighbour when that neighbour's embedding lies within
`candidates.propagation_max_distance` (Euclidean, on the model's embedding output). This script
measures what that label is worth: the labeled set is the bundled reference (data/reference,
300 images with their true labels), the queries are every labeled bundled traffic image
(data/traffic/{normal,rotation,blur,brightness,class_prior}: 1,303), and for each threshold it
reports how many queries would get a propagated label (coverage), how many of those labels are
right (precision), and how many of the bundled out-of-distribution images (data/traffic/ood and
data/traffic/photos, where any label is wrong) would get one.

Embeddings come from models/digits.onnx through onnxruntime with the training side's decoding
(training/digit_images.py), which tests/serve.rs holds equal to the sidecar's to 1e-4.

usage: .venv/bin/python scripts/propagation_precision.py [--markdown]
"""

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "training"))
import digit_images as di  # noqa: E402
import export_onnx as ex  # noqa: E402

LABELED_TRAFFIC = ("normal", "rotation", "blur", "brightness", "class_prior")
UNLABELED_OOD = ("ood", "photos")
THRESHOLDS = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0)
# The default is the largest threshold whose propagated labels are right at least this often.
TARGET_PRECISION = 0.98


def embed(session, folder):
    rows = di.read_labels(os.path.join(ROOT, folder))
    x = np.concatenate(
        [di.model_input(di.decode_png_8x8(os.path.join(ROOT, folder, f)), ex.PIXEL_SCALE) for f, _ in rows]
    )
    (embedding,) = session.run(["embedding"], {"image": x})
    return embedding.astype(np.float64), [label for _, label in rows]


def nearest(queries, labeled):
    d = np.sqrt(((queries[:, None, :] - labeled[None, :, :]) ** 2).sum(axis=2))
    j = d.argmin(axis=1)
    return d[np.arange(len(queries)), j], j


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--markdown", action="store_true", help="print the README table")
    args = parser.parse_args()
    session = ex.session(os.path.join(ROOT, "models/digits.onnx"))
    labeled, labeled_labels = embed(session, "data/reference")
    labeled_labels = np.array(labeled_labels)

    queries, truth = [], []
    for folder in LABELED_TRAFFIC:
        e, labels = embed(session, f"data/traffic/{folder}")
        queries.append(e)
        truth += labels
    queries, truth = np.concatenate(queries), np.array(truth)
    distance, j = nearest(queries, labeled)
    right = labeled_labels[j] == truth

    ood = np.concatenate([embed(session, f"data/traffic/{f}")[0] for f in UNLABELED_OOD])
    ood_distance, _ = nearest(ood, labeled)

    rows = []
    for t in THRESHOLDS:
        within = distance <= t
        n = int(within.sum())
        precision = float(right[within].mean()) if n else float("nan")
        rows.append((t, n, n / len(distance), precision, int((ood_distance <= t).sum())))
    default = max((r for r in rows if r[1] and r[3] >= TARGET_PRECISION), key=lambda r: r[0], default=None)

    if args.markdown:
        print(
            f"| max distance | labeled traffic given a label (of {len(distance)}) | precision | "
            f"out-of-distribution given a label (of {len(ood_distance)}) |"
        )
        print("| --- | --- | --- | --- |")
        for t, n, coverage, precision, n_ood in rows:
            mark = " (default)" if default and t == default[0] else ""
            print(f"| {t:g}{mark} | {n} ({coverage:.1%}) | {precision:.3f} | {n_ood} |")
        print(f"\nnearest labeled neighbour overall: {right.mean():.3f} right (no threshold)")
    else:
        for t, n, coverage, precision, n_ood in rows:
            print(f"threshold {t:g}: {n} propagated ({coverage:.1%}), precision {precision:.3f}, ood {n_ood}")
    if default is None:
        print(f"no threshold reaches precision {TARGET_PRECISION}")
    else:
        print(f"default: {default[0]:g} (the largest threshold with precision >= {TARGET_PRECISION})")


if __name__ == "__main__":
    main()
