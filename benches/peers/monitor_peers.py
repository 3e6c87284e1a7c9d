"""The peers of `shiftwatch report`: Evidently's and NannyML's closest equivalents on the same
Parquet log and the same reference profile, from reading the files to a finished HTML report.
Run by scripts/report_compare.py (`make report-compare`), each tool in a fresh process under
`/usr/bin/time -v`; installed into .venv-monitors by `make monitor-peers-venv`.

usage: monitor_peers.py {evidently,nannyml} LOG_DIR REFERENCE_JSON OUT_DIR [BUCKETS]

Both get the same columns, read from the log's `predictions/` Hive folders (the reference from
the profile's per-image probabilities, inputs and true classes):
predicted_class (categorical), confidence, entropy, the ten softmax outputs p0..p9 (shiftwatch's
bbsd_ks) and the input statistics (input_ks).

- evidently: `Report([DataDriftPreset(columns=...)])` on the whole period, saved to HTML.
  Evidently has no time buckets in one report; it picks its own tests (with a reference of 300
  rows: KS for numerical columns, chi-square for the class).
- nannyml: `UnivariateDriftCalculator` (KS on the numerical columns, chi-square on the class)
  over BUCKETS (24) time chunks, plus `CBPE` accuracy estimated per chunk (fitted on the
  reference's true classes), both plotted and written to one HTML file.
"""

import json
import os
import sys
import time

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

# NannyML sends usage analytics to segment.io unless told not to; with no network that costs
# retries and timeouts inside the timed run.
os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")

NUMERIC_INPUTS = ["brightness", "contrast", "sharpness", "saturation", "width", "height"]


def load(log_dir: str, reference: str):
    """The period's rows and the reference, as pandas frames with the same columns."""
    table = ds.dataset(os.path.join(log_dir, "predictions"), format="parquet",
                       partitioning="hive").to_table(
        columns=["ts", "predicted_class", "confidence", "entropy", "probabilities",
                 "brightness", "contrast", "sharpness", "saturation", "image_width",
                 "image_height"])
    probs = np.stack(table.column("probabilities").to_numpy(zero_copy_only=False))
    cur = pd.DataFrame({
        "ts": table.column("ts").to_pandas(),
        "predicted_class": table.column("predicted_class").to_numpy().astype(str),
        "confidence": table.column("confidence").to_numpy().astype(np.float64),
        "entropy": table.column("entropy").to_numpy().astype(np.float64),
        **{f"p{k}": probs[:, k].astype(np.float64) for k in range(probs.shape[1])},
        **{c: table.column(c).to_numpy().astype(np.float64)
           for c in ["brightness", "contrast", "sharpness", "saturation"]},
        "width": table.column("image_width").to_numpy().astype(np.float64),
        "height": table.column("image_height").to_numpy().astype(np.float64),
    }).sort_values("ts", kind="stable").reset_index(drop=True)

    prof = json.load(open(reference))
    rp = np.array(prof["probabilities"], dtype=np.float64)
    ref = pd.DataFrame({
        # The reference has no times; NannyML wants the column, so it gets a day before the log.
        "ts": cur["ts"].iloc[0] - pd.Timedelta(days=1) + pd.to_timedelta(np.arange(len(rp)), "s"),
        "predicted_class": rp.argmax(axis=1).astype(str),
        "confidence": rp.max(axis=1),
        "entropy": -(rp * np.log(np.clip(rp, 1e-30, None))).sum(axis=1),
        **{f"p{k}": rp[:, k] for k in range(rp.shape[1])},
        **{c: np.array(prof["inputs"][c], dtype=np.float64) for c in NUMERIC_INPUTS},
        "true_class": np.array(prof["true_classes"]).astype(str),
    })
    return cur, ref, rp.shape[1]


def run_evidently(cur, ref, n_classes, out_dir, _buckets):
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    numerical = ["confidence", "entropy"] + [f"p{k}" for k in range(n_classes)] + NUMERIC_INPUTS
    columns = ["predicted_class"] + numerical
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=["predicted_class"])
    reference = Dataset.from_pandas(ref[columns], data_definition=definition)
    current = Dataset.from_pandas(cur[columns], data_definition=definition)
    snapshot = Report([DataDriftPreset(columns=columns)]).run(current_data=current,
                                                              reference_data=reference)
    path = os.path.join(out_dir, "evidently.html")
    snapshot.save_html(path)
    return path


def run_nannyml(cur, ref, n_classes, out_dir, buckets):
    import nannyml as nml

    numerical = ["confidence", "entropy"] + [f"p{k}" for k in range(n_classes)] + NUMERIC_INPUTS
    drift = nml.UnivariateDriftCalculator(
        column_names=["predicted_class"] + numerical,
        treat_as_categorical=["predicted_class"],
        timestamp_column_name="ts",
        continuous_methods=["kolmogorov_smirnov"],
        categorical_methods=["chi2"],
        chunk_number=buckets,
    )
    drift.fit(ref)
    drift_results = drift.calculate(cur)

    cbpe = nml.CBPE(
        problem_type="classification_multiclass",
        y_pred_proba={str(k): f"p{k}" for k in range(n_classes)},
        y_pred="predicted_class",
        y_true="true_class",
        timestamp_column_name="ts",
        metrics=["accuracy"],
        chunk_number=buckets,
    )
    cbpe.fit(ref)
    estimated = cbpe.estimate(cur)

    path = os.path.join(out_dir, "nannyml.html")
    with open(path, "w") as f:
        f.write("<html><body>\n")
        for i, fig in enumerate([drift_results.plot(kind="drift"), estimated.plot()]):
            f.write(fig.to_html(full_html=False, include_plotlyjs="cdn" if i == 0 else False))
        f.write("</body></html>\n")
    return path


def main() -> None:
    tool, log_dir, reference, out_dir = sys.argv[1:5]
    buckets = int(sys.argv[5]) if len(sys.argv) > 5 else 24
    os.makedirs(out_dir, exist_ok=True)
    started = time.perf_counter()
    cur, ref, n_classes = load(log_dir, reference)
    loaded = time.perf_counter()
    run = {"evidently": run_evidently, "nannyml": run_nannyml}[tool]
    path = run(cur, ref, n_classes, out_dir, buckets)
    done = time.perf_counter()
    print(json.dumps({"tool": tool, "rows": len(cur), "reference_rows": len(ref),
                      "read_s": round(loaded - started, 3), "report_s": round(done - loaded, 3),
                      "html": path, "html_bytes": os.path.getsize(path)}))


if __name__ == "__main__":
    main()
