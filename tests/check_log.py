"""Read a shiftwatch log folder back with DuckDB and with pyarrow and check it against what the
HTTP answers said. Used by the Rust integration tests (tests/log.rs); exits 1 on any mismatch.

usage: check_log.py LOG_DIR EXPECTED_JSON

EXPECTED_JSON: {"model": "digits",
                "predictions": {"<request_id>": [probabilities as answered], ...},
                "exact": true,            # false: the log may miss rows (prints the count)
                "sent": ["<request_id>", ...],   # optional: ids sent but maybe never answered
                "feedback": [{"request_id": ..., "label": ...}, ...]}   # optional
Prints one JSON line with what it found.
"""

import glob
import json
import math
import os
import sys

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

PREDICTION_COLUMNS = [
    ("request_id", pa.string(), False),
    ("ts", pa.timestamp("us", tz="UTC"), False),
    ("model_version", pa.string(), False),
    ("endpoint", pa.string(), False),
    ("predicted_class", pa.int32(), False),
    ("predicted_label", pa.string(), False),
    ("confidence", pa.float32(), False),
    ("margin", pa.float32(), False),
    ("entropy", pa.float32(), False),
    ("probabilities", pa.list_(pa.field("item", pa.float32(), nullable=False)), False),
    ("embedding", pa.list_(pa.field("item", pa.float32(), nullable=False)), True),
    ("latency_us", pa.int64(), False),
    ("inference_us", pa.int64(), False),
    ("batch_size", pa.int32(), False),
    ("content_type", pa.string(), True),
    ("image_bytes", pa.int64(), True),
    ("image_width", pa.int32(), True),
    ("image_height", pa.int32(), True),
    ("image_sha256", pa.string(), True),
    ("image_dhash", pa.uint64(), True),
    ("brightness", pa.float32(), True),
    ("contrast", pa.float32(), True),
    ("sharpness", pa.float32(), True),
    ("saturation", pa.float32(), True),
    ("flags", pa.list_(pa.field("item", pa.string(), nullable=False)), False),
    ("prediction_set", pa.list_(pa.field("item", pa.int32(), nullable=False)), True),
]
FEEDBACK_COLUMNS = [
    ("request_id", pa.string(), False),
    ("ts", pa.timestamp("us", tz="UTC"), False),
    ("label", pa.string(), False),
    ("class", pa.int32(), False),
    ("source", pa.string(), False),
]


def fail(message: str) -> None:
    print(f"check_log: {message}", file=sys.stderr)
    sys.exit(1)


def check_schema(files: list[str], columns) -> None:
    want = pa.schema([pa.field(n, t, nullable=null) for n, t, null in columns])
    for f in files:
        got = pq.read_schema(f).remove_metadata()
        if not got.equals(want):
            fail(f"{f}: schema differs\n got: {got}\nwant: {want}")


def main() -> None:
    log_dir, expected_path = sys.argv[1], sys.argv[2]
    with open(expected_path) as f:
        expected = json.load(f)
    model = expected["model"]
    want = expected["predictions"]
    exact = expected.get("exact", True)

    pattern = os.path.join(log_dir, "predictions", f"model={model}", "date=*", "hour=*", "*.parquet")
    files = sorted(glob.glob(pattern))
    hidden = glob.glob(os.path.join(log_dir, "predictions", "**", ".*.parquet"), recursive=True)
    if not files:
        fail(f"no Parquet files match {pattern}")
    if hidden and exact:
        fail(f"temporary files left behind: {hidden}")
    check_schema(files, PREDICTION_COLUMNS)

    # DuckDB, Hive partitions.
    glob_all = os.path.join(log_dir, "predictions", "*", "*", "*", "*.parquet")
    con = duckdb.connect()
    rows = con.execute(
        "select request_id, probabilities, model, date, hour, endpoint, predicted_label, "
        "image_sha256, image_dhash, brightness "
        f"from read_parquet('{glob_all}', hive_partitioning = true)"
    ).fetchall()
    ids = [r[0] for r in rows]
    if len(ids) != len(set(ids)):
        fail(f"duplicate request ids in the log: {len(ids) - len(set(ids))}")
    sent = set(expected.get("sent", [])) | set(want)
    unknown = set(ids) - sent
    if unknown:
        fail(f"{len(unknown)} logged ids were never sent, e.g. {sorted(unknown)[:3]}")
    missing = set(want) - set(ids)
    if exact and missing:
        fail(f"{len(missing)} answered ids are missing, e.g. {sorted(missing)[:3]}")
    for request_id, probs, row_model, date, hour, endpoint, label, sha, dhash, brightness in rows:
        if row_model != model:
            fail(f"{request_id}: partition model={row_model}")
        if endpoint not in ("classify", "infer"):
            fail(f"{request_id}: endpoint {endpoint}")
        answered = want.get(request_id)
        if answered is None:
            continue  # sent, never answered (the server was killed first)
        if len(probs) != len(answered) or any(
            not math.isclose(a, b, rel_tol=0, abs_tol=1e-7) for a, b in zip(probs, answered)
        ):
            fail(f"{request_id}: logged {probs} but answered {answered}")
        if sha is None or len(sha) != 64 or dhash is None or brightness is None:
            fail(f"{request_id}: image columns missing ({sha}, {dhash}, {brightness})")

    # pyarrow, the same folder as a Hive-partitioned dataset.
    dataset = ds.dataset(
        os.path.join(log_dir, "predictions"), format="parquet", partitioning="hive"
    )
    table = dataset.to_table(columns=["request_id", "model", "probabilities"])
    if table.num_rows != len(rows):
        fail(f"pyarrow reads {table.num_rows} rows, DuckDB {len(rows)}")
    for rid, probs in zip(table.column("request_id").to_pylist(), table.column("probabilities").to_pylist()):
        if rid in want and any(
            not math.isclose(a, b, rel_tol=0, abs_tol=1e-7) for a, b in zip(probs, want[rid])
        ):
            fail(f"pyarrow: {rid} probabilities differ")
    # The partition keys live in the path only.
    inside = set(pq.read_schema(files[0]).names)
    if inside & {"model", "date", "hour"}:
        fail(f"partition keys inside the file: {inside & {'model', 'date', 'hour'}}")

    result = {
        "files": len(files),
        "rows": len(rows),
        "answered": len(want),
        "missing": len(missing),
        "missing_ids": sorted(missing),
        "logged_unanswered": len(set(ids) - set(want)),
    }
    if "feedback" in expected:
        fb_files = sorted(glob.glob(os.path.join(log_dir, "feedback", "date=*", "*.parquet")))
        if expected["feedback"] and not fb_files:
            fail("no feedback files")
        if fb_files:
            check_schema(fb_files, FEEDBACK_COLUMNS)
            fb = con.execute(
                "select request_id, label from read_parquet("
                f"'{os.path.join(log_dir, 'feedback', '*', '*.parquet')}', hive_partitioning = true)"
            ).fetchall()
        else:
            fb = []
        got = sorted((r, l) for r, l in fb)
        exp = sorted((e["request_id"], e["label"]) for e in expected["feedback"])
        if got != exp:
            fail(f"feedback rows {got[:5]}... differ from {exp[:5]}...")
        result["feedback"] = len(fb)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
