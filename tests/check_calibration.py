"""Recompute accuracy and calibration from the Parquet log and compare with what the sidecar
reported at /v1/monitor. Used by tests/monitor.rs; exits 1 on any mismatch.

usage: check_calibration.py LOG_DIR EXPECTED_JSON
EXPECTED_JSON: {"n": ..., "accuracy": ..., "ece": ..., "brier": ..., "nll": ...}  (from /v1/monitor)

Joins predictions and feedback on request_id (the first label of each id), then computes with plain
numpy: accuracy; ECE over 15 equal-width bins (lo, hi] of the top-label confidence; multiclass Brier;
NLL with probabilities clipped at 1e-12; when the sidecar reported prediction sets, their
coverage (the share of labeled rows whose `prediction_set` column holds the true class) and mean
size from the log's nullable List(Int32) column.
"""

import json
import math
import os
import sys

import duckdb
import numpy as np


def main() -> None:
    log_dir, expected_path = sys.argv[1], sys.argv[2]
    with open(expected_path) as f:
        expected = json.load(f)
    preds = os.path.join(log_dir, "predictions", "*", "*", "*", "*.parquet")
    fb = os.path.join(log_dir, "feedback", "*", "*.parquet")
    rows = duckdb.sql(
        f"""
        with labels as (
            select request_id, arg_min(class, ts) as truth
            from read_parquet('{fb}', hive_partitioning = true) group by request_id
        )
        select p.probabilities, l.truth, p.prediction_set
        from read_parquet('{preds}', hive_partitioning = true) p join labels l using (request_id)
        """
    ).fetchall()
    probs = np.array([r[0] for r in rows], dtype=np.float64)
    truth = np.array([r[1] for r in rows])
    n = len(truth)
    conf = probs.max(axis=1)
    pred = probs.argmax(axis=1)
    correct = pred == truth
    edges = np.linspace(0, 1, 16)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lo) & (conf <= hi) if lo > 0 else (conf <= hi)
        if in_bin.any():
            ece += in_bin.sum() / n * abs(correct[in_bin].mean() - conf[in_bin].mean())
    onehot = np.eye(probs.shape[1])[truth]
    got = {
        "n": n,
        "accuracy": float(correct.mean()),
        "ece": float(ece),
        "brier": float(((probs - onehot) ** 2).sum(axis=1).mean()),
        "nll": float(-np.log(np.clip(probs[np.arange(n), truth], 1e-12, None)).mean()),
    }
    keys = ["accuracy", "ece", "brier", "nll"]
    if expected.get("prediction_set_coverage") is not None:
        sets = [r[2] for r in rows]
        if any(s is None for s in sets):
            print("check_calibration: a labeled row has no prediction_set", file=sys.stderr)
            sys.exit(1)
        got["prediction_set_coverage"] = float(np.mean([t in s for s, t in zip(sets, truth)]))
        got["mean_prediction_set_size"] = float(np.mean([len(s) for s in sets]))
        keys += ["prediction_set_coverage", "mean_prediction_set_size"]
    for key in keys:
        if not math.isclose(got[key], expected[key], rel_tol=1e-6, abs_tol=1e-9):
            print(f"check_calibration: {key} from Parquet {got[key]} vs /v1/monitor {expected[key]}", file=sys.stderr)
            sys.exit(1)
    if got["n"] != expected["n"]:
        print(f"check_calibration: {got['n']} labeled rows in Parquet vs {expected['n']}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(got))


if __name__ == "__main__":
    main()
