"""Recompute the statistics of a `shiftwatch report` JSON summary from the Parquet log with scipy
and numpy (DESIGN.md's conventions) and compare, to 1e-6 relative. Used by tests/report.rs;
exits 1 on any mismatch.

usage: check_report.py SUMMARY_JSON LOG_DIR REFERENCE_JSON

Checked for the whole period and every bucket: the class-mix chi-square (scipy.stats.chisquare
against the reference ratios times the count), the confidence KS test (scipy.stats.ks_2samp,
asymptotic p-value, against the reference's top-label confidences), the average confidence;
for the period, with delayed labels: accuracy, ECE (15 equal bins, (lo, hi]), Brier, NLL.
Prints one JSON line with what it compared.
"""

import json
import math
import os
import sys
from datetime import datetime

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds
from scipy import stats

REL = 1e-6


def fail(message: str) -> None:
    print(f"check_report: {message}", file=sys.stderr)
    sys.exit(1)


def close(name: str, got, want) -> None:
    if got is None or not math.isclose(float(got), float(want), rel_tol=REL, abs_tol=1e-12):
        fail(f"{name}: the report says {got}, scipy/numpy {want}")


def test(snapshot: dict, name: str, feature: str) -> dict:
    for t in snapshot["tests"]:
        if t["test"] == name and t["feature"] == feature:
            return t
    fail(f"no test {name}/{feature} in {[(t['test'], t['feature']) for t in snapshot['tests']]}")


def micros(text: str) -> int:
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int(dt.timestamp()) * 1_000_000 + dt.microsecond


def main() -> None:
    summary_path, log_dir, reference_path = sys.argv[1:4]
    summary = json.load(open(summary_path))
    reference = json.load(open(reference_path))
    ratios = np.array(reference["summary"]["class_ratios"])
    # The profile's probabilities are the model's float32 outputs, as the sidecar reads them.
    ref_confidence = (
        np.array(reference["probabilities"], dtype=np.float32).max(axis=1).astype(np.float64)
    )

    table = ds.dataset(
        os.path.join(log_dir, "predictions"), format="parquet", partitioning="hive"
    ).to_table(
        columns=["request_id", "ts", "model", "model_version", "predicted_class", "confidence",
                 "probabilities"],
        filter=(pc.field("model") == summary["model"])
        & (pc.field("model_version") == summary["model_version"]),
    ).sort_by("ts")
    ts = table.column("ts").cast("int64").to_numpy()
    classes = table.column("predicted_class").to_numpy()
    confidence = table.column("confidence").to_numpy().astype(np.float64)
    if len(ts) != summary["rows"]:
        fail(f"the log has {len(ts)} rows of the version, the report {summary['rows']}")

    def check(snapshot: dict, rows: np.ndarray, where: str) -> dict:
        n = int(rows.sum())
        observed = np.bincount(classes[rows], minlength=len(ratios))
        chi2 = stats.chisquare(observed, ratios / ratios.sum() * n)
        t = test(snapshot, "class_chi2", "predicted_class")
        close(f"{where} class_chi2 statistic", t["statistic"], chi2.statistic)
        close(f"{where} class_chi2 p-value", t["p_value"], chi2.pvalue)
        if t["n_window"] != n:
            fail(f"{where}: n_window {t['n_window']}, rows {n}")
        ks = stats.ks_2samp(confidence[rows], ref_confidence, method="asymp")
        t = test(snapshot, "confidence_ks", "confidence")
        close(f"{where} confidence_ks statistic", t["statistic"], ks.statistic)
        close(f"{where} confidence_ks p-value", t["p_value"], ks.pvalue)
        close(f"{where} average confidence", snapshot["estimates"]["ac"], confidence[rows].mean())
        return {"n": n, "chi2": float(chi2.statistic), "ks": float(ks.statistic)}

    everything = np.ones(len(ts), dtype=bool)
    compared = {"period": check(summary["period"], everything, "period"), "buckets": []}
    if sum(int(b["window"]["predictions"]) for b in summary["buckets"]) != len(ts):
        fail("the buckets do not add up to the period")
    for b in summary["buckets"]:
        lo, hi = micros(b["from"]), micros(b["to"])
        rows = (ts >= lo) & (ts < hi)
        compared["buckets"].append(check(b, rows, f"bucket {b['from']}"))

    # Delayed labels: the latest of each request id, joined to the predictions.
    feedback = ds.dataset(os.path.join(log_dir, "feedback"), format="parquet", partitioning="hive")
    fb = feedback.to_table(columns=["request_id", "ts", "class"]).sort_by("ts").to_pylist()
    label = {r["request_id"]: r["class"] for r in fb}
    ids = table.column("request_id").to_pylist()
    joined = [i for i, rid in enumerate(ids) if rid in label]
    labeled = summary["period"]["labeled"]
    if len(joined) != summary["labeled_rows"] or (joined and labeled["n"] != len(joined)):
        fail(f"{len(joined)} labeled rows in the log; the report says {summary['labeled_rows']}, {labeled}")
    if joined:
        probs = np.array([table.column("probabilities")[i].as_py() for i in joined], dtype=np.float64)
        truth = np.array([label[ids[i]] for i in joined])
        top = probs.max(axis=1)
        correct = (probs.argmax(axis=1) == truth).astype(np.float64)
        close("labeled accuracy", labeled["accuracy"], correct.mean())
        edges = np.linspace(0.0, 1.0, 16)
        ece = 0.0
        for lo, hi in zip(edges[:-1], edges[1:]):
            inside = (top > lo) & (top <= hi)
            if inside.any():
                ece += inside.mean() * abs(correct[inside].mean() - top[inside].mean())
        close("ECE", labeled["ece"], ece)
        onehot = np.eye(probs.shape[1])[truth]
        close("Brier", labeled["brier"], ((probs - onehot) ** 2).sum(axis=1).mean())
        close("NLL", labeled["nll"], -np.log(np.clip(probs[np.arange(len(truth)), truth], 1e-12, None)).mean())
        compared["labeled"] = {"n": len(joined), "accuracy": float(correct.mean()), "ece": ece}
    print(json.dumps(compared))


if __name__ == "__main__":
    main()
