"""Prints every prediction row of a shiftwatch log as JSON: request id -> partition model and
model_version, read back with pyarrow's Hive-partitioned dataset (the layout other engines read)."""

import json
import sys

import pyarrow.dataset as ds


def main() -> None:
    log_dir = sys.argv[1]
    dataset = ds.dataset(
        f"{log_dir}/predictions", format="parquet", partitioning="hive",
        exclude_invalid_files=False,
    )
    table = dataset.to_table(columns=["request_id", "model_version", "model"])
    rows = {}
    for rid, version, model in zip(
        table.column("request_id").to_pylist(),
        table.column("model_version").to_pylist(),
        table.column("model").to_pylist(),
    ):
        if rid in rows:
            raise SystemExit(f"request id {rid} logged twice")
        rows[rid] = {"model": model, "model_version": version}
    json.dump(rows, sys.stdout)


if __name__ == "__main__":
    main()
