"""Read a shiftwatch log shipped to an S3 bucket back with pyarrow's S3 filesystem and check it
against what the HTTP answers said: every answered prediction exactly once, nothing else, under
the Hive layout. Used by the Rust integration tests (tests/upload.rs); exits 1 on any mismatch.

usage: check_bucket.py ENDPOINT BUCKET PREFIX EXPECTED_JSON

ENDPOINT: host:port of an S3 API over plain HTTP (moto's server in the tests), credentials
"testing". EXPECTED_JSON has check_log.py's shape: {"model", "predictions": {"<request_id>":
[probabilities as answered]}, "sent": [ids sent but maybe never answered], "feedback": [...]}.
Prints one JSON line with what it found.
"""

import json
import math
import os
import re
import sys
from collections import Counter

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_log import FEEDBACK_COLUMNS, PREDICTION_COLUMNS  # noqa: E402

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
PREDICTION_KEY = re.compile(
    rf"predictions/model=(?P<model>[^/]+)/date=(?P<date>\d{{4}}-\d{{2}}-\d{{2}})/hour=(?P<hour>\d{{2}})/{UUID}\.parquet"
)
FEEDBACK_KEY = re.compile(rf"feedback/date=(?P<date>\d{{4}}-\d{{2}}-\d{{2}})/{UUID}\.parquet")


def fail(message: str) -> None:
    print(f"check_bucket: {message}", file=sys.stderr)
    sys.exit(1)


def schema_of(columns) -> pa.Schema:
    return pa.schema([pa.field(n, t, nullable=null) for n, t, null in columns])


def main() -> None:
    endpoint, bucket, prefix, expected_path = sys.argv[1:5]
    with open(expected_path) as f:
        expected = json.load(f)
    model = expected["model"]
    want = expected["predictions"]
    s3 = pafs.S3FileSystem(
        access_key="testing",
        secret_key="testing",
        region="us-east-1",
        endpoint_override=endpoint,
        scheme="http",
    )
    root = f"{bucket}/{prefix}".rstrip("/")
    objects = [
        i
        for i in s3.get_file_info(pafs.FileSelector(root, recursive=True))
        if i.type == pafs.FileType.File
    ]
    prediction_files, feedback_files = [], []
    for info in objects:
        key = info.path[len(root) + 1 :]
        if PREDICTION_KEY.fullmatch(key):
            prediction_files.append(info.path)
        elif FEEDBACK_KEY.fullmatch(key):
            feedback_files.append(info.path)
        else:
            fail(f"an object outside the Hive layout (a temporary or partial name?): {key}")
    if not prediction_files:
        fail(f"no prediction files under s3://{root}")

    want_schema = schema_of(PREDICTION_COLUMNS)
    for path in prediction_files:
        got = pq.read_schema(path, filesystem=s3).remove_metadata()
        if not got.equals(want_schema):
            fail(f"{path}: schema differs\n got: {got}\nwant: {want_schema}")

    # The bucket as one Hive-partitioned dataset, as a fleet query would read it.
    dataset = ds.dataset(
        f"{root}/predictions", filesystem=s3, format="parquet", partitioning="hive"
    )
    table = dataset.to_table(
        columns=["request_id", "ts", "probabilities", "model", "date", "hour"]
    )
    ids = table.column("request_id").to_pylist()
    counts = Counter(ids)
    duplicates = {i: n for i, n in counts.items() if n > 1}
    if duplicates:
        fail(
            f"{len(duplicates)} request ids more than once in the bucket, "
            f"e.g. {sorted(duplicates.items())[:3]}"
        )
    sent = set(expected.get("sent", [])) | set(want)
    unknown = set(ids) - sent
    if unknown:
        fail(f"{len(unknown)} ids in the bucket were never sent, e.g. {sorted(unknown)[:3]}")
    missing = set(want) - set(ids)
    if missing:
        fail(f"{len(missing)} answered ids are not in the bucket, e.g. {sorted(missing)[:3]}")
    for rid, ts, probs, row_model, date, hour in zip(
        ids,
        table.column("ts").to_pylist(),
        table.column("probabilities").to_pylist(),
        table.column("model").to_pylist(),
        table.column("date").to_pylist(),
        table.column("hour").to_pylist(),
    ):
        if row_model != model:
            fail(f"{rid}: partition model={row_model}")
        if ts.strftime("%Y-%m-%d") != str(date) or ts.hour != int(hour):
            fail(f"{rid}: ts {ts} in partition date={date}/hour={hour}")
        answered = want.get(rid)
        if answered is not None and (
            len(probs) != len(answered)
            or any(not math.isclose(a, b, rel_tol=0, abs_tol=1e-7) for a, b in zip(probs, answered))
        ):
            fail(f"{rid}: in the bucket {probs} but answered {answered}")

    result = {
        "objects": len(objects),
        "prediction_files": len(prediction_files),
        "rows": table.num_rows,
        "answered": len(want),
        "logged_unanswered": len(set(ids) - set(want)),
        "feedback_files": len(feedback_files),
    }
    if "feedback" in expected:
        if feedback_files:
            for path in feedback_files:
                got = pq.read_schema(path, filesystem=s3).remove_metadata()
                if not got.equals(schema_of(FEEDBACK_COLUMNS)):
                    fail(f"{path}: feedback schema differs: {got}")
            fb = ds.dataset(
                f"{root}/feedback", filesystem=s3, format="parquet", partitioning="hive"
            ).to_table(columns=["request_id", "label"])
            got = sorted(zip(fb.column("request_id").to_pylist(), fb.column("label").to_pylist()))
        else:
            got = []
        exp = sorted((e["request_id"], e["label"]) for e in expected["feedback"])
        if got != exp:
            fail(f"feedback rows {got[:5]}... differ from {exp[:5]}...")
        result["feedback"] = len(got)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
