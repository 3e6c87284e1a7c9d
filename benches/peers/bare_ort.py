"""Bare onnxruntime on a pre-made tensor: the ceiling any server of the same model can reach on
these cores (scripts/compare.py runs one or several of these processes at once).

No HTTP, no decoding, no preprocessing: the tensor (a .npy of shape [1, C, H, W]) is repeated
into batches of `--batch` and run back to back for `--seconds`, after one warm-up run. Prints
one JSON line: {"images": ..., "seconds": ..., "images_per_second": ..., "batch": ...,
"intra_threads": ...}.

usage: bare_ort.py MODEL TENSOR [--seconds 10] [--batch 1] [--intra-threads 1]
       [--start-at UNIX_TIME]   (processes started together begin at the same moment)
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import onnxruntime as ort


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("tensor")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--intra-threads", type=int, default=1)
    p.add_argument("--start-at", type=float, default=0.0)
    args = p.parse_args()

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.intra_threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    one = np.load(args.tensor).astype(np.float32)
    batch = np.ascontiguousarray(np.repeat(one, args.batch, axis=0))
    session.run(None, {name: batch})
    wait = args.start_at - time.time()
    if wait > 0:
        time.sleep(wait)
    images = 0
    start = time.perf_counter()
    deadline = start + args.seconds
    while time.perf_counter() < deadline:
        session.run(None, {name: batch})
        images += args.batch
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "images": images,
                "seconds": seconds,
                "images_per_second": images / seconds,
                "batch": args.batch,
                "intra_threads": args.intra_threads,
            }
        )
    )


if __name__ == "__main__":
    main()
