"""Write a synthetic shiftwatch log of N predictions (default 100,000) for timing `shiftwatch
report` and checking it at scale: rows resampled (seeded) from the bundled reference profile, so
every column is a value the model really produced, spread over 24 hourly partitions; from the
13th hour on, the class mix shifts (classes 0-4 twice as likely). A tenth of the rows get a
delayed label (the resampled image's true class). DESIGN.md's schema, zstd, Hive layout.

usage: make_report_log.py LOG_DIR [N]
"""

import json
import os
import sys
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from check_log import FEEDBACK_COLUMNS, PREDICTION_COLUMNS  # noqa: E402

HOUR_US = 3_600_000_000
START_US = 1_764_547_200_000_000  # 2025-12-01T00:00:00Z


def schema(columns) -> pa.Schema:
    return pa.schema([pa.field(n, t, nullable=null) for n, t, null in columns])


def main() -> None:
    log_dir = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
    repo = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    ref = json.load(open(os.path.join(repo, "models", "digits.reference.json")))
    probs = np.array(ref["probabilities"], dtype=np.float32)
    emb = np.array(ref["embeddings"], dtype=np.float32)
    truth = np.array(ref["true_classes"])
    inputs = {k: np.array(v, dtype=np.float64) for k, v in ref["inputs"].items()}
    labels = ref["labels"]
    rng = np.random.default_rng(7)

    hours = 24
    per_hour = n // hours
    predicted = probs.argmax(axis=1)
    shifted_weights = np.where(predicted < 5, 2.0, 1.0)
    shifted_weights /= shifted_weights.sum()
    feedback = []
    written = 0
    for h in range(hours):
        count = per_hour if h < hours - 1 else n - written
        if h < hours // 2:
            pick = rng.integers(0, len(probs), count)
        else:
            pick = rng.choice(len(probs), count, p=shifted_weights)
        p = probs[pick]
        top2 = np.sort(p, axis=1)[:, -2:]
        ts = START_US + h * HOUR_US + np.sort(rng.integers(0, HOUR_US, count))
        ids = [f"syn-{written + i:07d}" for i in range(count)]
        cls = p.argmax(axis=1).astype(np.int32)
        entropy = -(p * np.log(np.clip(p, 1e-30, None))).sum(axis=1)
        columns = {
            "request_id": ids,
            "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
            "model_version": [ref["model_version"]] * count,
            "endpoint": ["classify"] * count,
            "predicted_class": cls,
            "predicted_label": [labels[c] for c in cls],
            "confidence": top2[:, 1],
            "margin": top2[:, 1] - top2[:, 0],
            "entropy": entropy.astype(np.float32),
            "probabilities": list(p),
            "embedding": list(emb[pick]),
            "latency_us": np.full(count, 1500, dtype=np.int64),
            "inference_us": np.full(count, 400, dtype=np.int64),
            "batch_size": np.ones(count, dtype=np.int32),
            "content_type": ["image/png"] * count,
            "image_bytes": np.full(count, 300, dtype=np.int64),
            "image_width": inputs["width"][pick].astype(np.int32),
            "image_height": inputs["height"][pick].astype(np.int32),
            "image_sha256": ["0" * 64] * count,
            "image_dhash": np.zeros(count, dtype=np.uint64),
            "brightness": inputs["brightness"][pick].astype(np.float32),
            "contrast": inputs["contrast"][pick].astype(np.float32),
            "sharpness": inputs["sharpness"][pick].astype(np.float32),
            "saturation": inputs["saturation"][pick].astype(np.float32),
            "flags": [[] for _ in range(count)],
            "prediction_set": pa.nulls(count, pa.list_(pa.field("item", pa.int32(), nullable=False))),
        }
        s = schema(PREDICTION_COLUMNS)
        table = pa.Table.from_arrays(
            [pa.array(columns[f.name], f.type) if not isinstance(columns[f.name], pa.Array)
             else columns[f.name] for f in s],
            schema=s,
        )
        date = "2025-12-01"
        folder = os.path.join(log_dir, "predictions", "model=digits", f"date={date}", f"hour={h:02d}")
        os.makedirs(folder, exist_ok=True)
        pq.write_table(table, os.path.join(folder, f"{uuid.uuid4()}.parquet"), compression="zstd")
        labeled = rng.random(count) < 0.1
        for i in np.nonzero(labeled)[0]:
            feedback.append((ids[i], int(ts[i]), labels[truth[pick[i]]], int(truth[pick[i]])))
        written += count
    fs = schema(FEEDBACK_COLUMNS)
    fb = pa.Table.from_arrays(
        [
            pa.array([f[0] for f in feedback], pa.string()),
            pa.array([f[1] for f in feedback], pa.timestamp("us", tz="UTC")),
            pa.array([f[2] for f in feedback], pa.string()),
            pa.array([f[3] for f in feedback], pa.int32()),
            pa.array(["synthetic"] * len(feedback), pa.string()),
        ],
        schema=fs,
    )
    folder = os.path.join(log_dir, "feedback", "date=2025-12-01")
    os.makedirs(folder, exist_ok=True)
    pq.write_table(fb, os.path.join(folder, f"{uuid.uuid4()}.parquet"), compression="zstd")
    print(json.dumps({"predictions": written, "feedback": len(feedback), "hours": hours}))


if __name__ == "__main__":
    main()
