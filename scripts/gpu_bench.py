"""The sidecar on CUDA against CPU, on a machine with an NVIDIA GPU (not run yet: see README,
"Deploy" → "CUDA").

For the bundled digits model and a compute-heavy CNN (generated here: 224x224 RGB, eight 3x3
convolutions up to 512 channels, about 5 GFLOP per image, random weights, seed 0), it starts
`shiftwatch serve` twice, once with execution_providers = ["cuda", "cpu"] and
require_cuda = true, once on CPU (every core), and measures:

1. agreement: the same tensors through KServe v2 infer on both; every probability equal to 1e-4;
2. latency and throughput by batch size: one client sending batches of B pre-made tensors
   (binary v2 infer), p50/p99 latency and images per second, B in --batches;
3. the dynamic batcher: --clients concurrent single-image requests with max_batch = 1 against
   max_batch = 32 (max_batch_delay_us = 500), images per second and the mean batch size the
   sidecar ran (from shiftwatch_inference_batch_size).

Prints Markdown tables and writes them with the raw numbers to runs/gpu-bench-<UTC time>.json.

Needs: target/release/shiftwatch (`cargo build --release --locked`), `make runtime-gpu`, the
NVIDIA driver, and the CUDA 13 / cuDNN 9 libraries: their folders on LD_LIBRARY_PATH, or the
nvidia-* wheels of deploy/docker/cuda-requirements.txt installed in this Python (their lib
folders are then added for the sidecar). Exit status 2 when CUDA does not start (the sidecar's
message says why), 1 when the probabilities disagree.

usage: gpu_bench.py [--binary target/release/shiftwatch] [--batches 1,8,32,64]
                    [--seconds 5] [--clients 64] [--agree 64] [--cpu-only] [--out FILE.json]
--cpu-only runs every step with CPU on both sides (a smoke test of the script itself).
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import re
import signal
import site
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
GPU_LIB = ROOT / "vendor" / "onnxruntime-gpu" / "libonnxruntime.so.1.31.1"
CPU_LIB = ROOT / "vendor" / "onnxruntime" / "libonnxruntime.so.1.31.1"
TOLERANCE = 1e-4


# ---------------------------------------------------------------- the models


def heavy_cnn(path: Path, classes: int = 10) -> None:
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    x, channels = "image", 3
    plan = [(64, 2), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1)]
    for i, (out, stride) in enumerate(plan):
        w = (rng.standard_normal((out, channels, 3, 3)) * np.sqrt(2 / (channels * 9))).astype(np.float32)
        b = np.zeros(out, np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1], strides=[stride, stride]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        x, channels = f"r{i}", out
    fc = (rng.standard_normal((channels, classes)) * 0.05).astype(np.float32)
    inits += [numpy_helper.from_array(fc, "fc"), numpy_helper.from_array(np.zeros(classes, np.float32), "fcb")]
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc", "fcb"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "heavy_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


MODELS = {
    "digits": {
        "input": "image",
        "shape": (1, 8, 8),
        "env": {},
    },
    "heavy": {
        "input": "image",
        "shape": (3, 224, 224),
        "env": {
            "SHIFTWATCH__MODEL__LABELS": json.dumps([f"c{i}" for i in range(10)]),
            "SHIFTWATCH__MODEL__PREPROCESS__LAYOUT": "nchw",
            "SHIFTWATCH__MODEL__PREPROCESS__COLOR": "rgb",
            "SHIFTWATCH__MODEL__OUTPUTS__PROBABILITIES": "logits",
            "SHIFTWATCH__MODEL__OUTPUTS__KIND": "logits",
            "SHIFTWATCH__MONITOR__ENABLED": "false",
            "SHIFTWATCH__CANDIDATES__ENABLED": "false",
        },
    },
}


# ---------------------------------------------------------------- the sidecar


def nvidia_library_dirs() -> list[str]:
    dirs = []
    for sp in site.getsitepackages() + [site.getusersitepackages()]:
        nvidia = Path(sp) / "nvidia"
        if nvidia.is_dir():
            dirs += sorted(str(p) for p in nvidia.glob("*/lib") if p.is_dir())
    return dirs


class Sidecar:
    def __init__(self, binary: Path, model: str, model_path: Path, cuda: bool, work: Path, tag: str, **env: str):
        self.name = f"{model}-{tag}"
        e = {k: v for k, v in os.environ.items() if not k.startswith("SHIFTWATCH__")}
        ld = [p for p in [os.environ.get("LD_LIBRARY_PATH", "")] + nvidia_library_dirs() if p]
        e.update(
            LD_LIBRARY_PATH=":".join(ld),
            SHIFTWATCH__SERVER__LISTEN="127.0.0.1:0",
            SHIFTWATCH__RUNTIME__LIBRARY=str(GPU_LIB if cuda or GPU_LIB.is_file() else CPU_LIB),
            SHIFTWATCH__MODEL__NAME=model,
            SHIFTWATCH__MODEL__PATH=str(model_path),
            SHIFTWATCH__MODEL__EXECUTION_PROVIDERS='["cuda", "cpu"]' if cuda else '["cpu"]',
            SHIFTWATCH__MODEL__REQUIRE_CUDA="true" if cuda else "false",
            SHIFTWATCH__INFERENCE__MAX_IN_FLIGHT="1024",
            # The CPU baseline gets every core; a batch of 64 heavy tensors is 38 MB.
            SHIFTWATCH__INFERENCE__INTRA_THREADS=str(1 if cuda else os.cpu_count() or 1),
            SHIFTWATCH__SERVER__MAX_BODY_BYTES=str(512 << 20),
            SHIFTWATCH__LOG__DIR=str(work / self.name / "log"),
            SHIFTWATCH__MONITOR__STATE_FILE=str(work / self.name / "window.json"),
            SHIFTWATCH__CANDIDATES__DIR=str(work / self.name / "candidates"),
            SHIFTWATCH__CANDIDATES__EXPORT_DIR=str(work / self.name / "exports"),
            SHIFTWATCH__LOGGING__LEVEL="warn,shiftwatch=info",
        )
        e.update(MODELS[model]["env"])
        e.update(env)
        self.log = open(work / f"{self.name}.log", "w")
        self.proc = subprocess.Popen([str(binary), "serve"], cwd=ROOT, env=e, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.port = None
        deadline = time.monotonic() + 180
        for line in self.proc.stdout:
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()
        while self.port and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            status, body = self.request("GET", "/readyz")
            if status == 200:
                self.ready = json.loads(body)
                return
            time.sleep(0.1)
        self.stop()
        text = (work / f"{self.name}.log").read_text()
        raise RuntimeError(f"{self.name} did not become ready:\n{text[-3000:]}")

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, r.read()
        except OSError:
            return 0, b""
        finally:
            conn.close()

    def infer(self, model: str, batch: np.ndarray) -> np.ndarray:
        raw = batch.astype("<f4").tobytes()
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": MODELS[model]["input"],
                        "shape": list(batch.shape),
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": len(raw)},
                    }
                ]
            }
        ).encode()
        status, body = self.request(
            "POST",
            f"/v2/models/{model}/infer",
            header + raw,
            {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
        )
        if status != 200:
            raise RuntimeError(f"{self.name}: infer answered {status}: {body[:300]!r}")
        answer = json.loads(body)
        (probs,) = [o for o in answer["outputs"] if o["shape"][1] == 10]
        return np.asarray(probs["data"], np.float32).reshape(probs["shape"])

    def mean_batch_size(self) -> float:
        _, text = self.request("GET", "/metrics")
        text = text.decode()
        total = sum(float(v) for v in re.findall(r"^shiftwatch_inference_batch_size_sum\{[^}]*\} (\S+)$", text, re.M))
        count = sum(float(v) for v in re.findall(r"^shiftwatch_inference_batch_size_count\{[^}]*\} (\S+)$", text, re.M))
        return total / count if count else float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


# ---------------------------------------------------------------- measurements


def inputs(model: str, n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((n, *MODELS[model]["shape"]), dtype=np.float32)


def by_batch(sidecar: Sidecar, model: str, batches: list[int], seconds: float) -> list[dict]:
    rows = []
    for b in batches:
        x = inputs(model, b, seed=b)
        sidecar.infer(model, x)  # warm-up at this size
        lat = []
        end = time.monotonic() + seconds
        while time.monotonic() < end or len(lat) < 3:
            t = time.perf_counter()
            sidecar.infer(model, x)
            lat.append(time.perf_counter() - t)
        lat_ms = np.array(lat) * 1e3
        rows.append(
            {
                "batch": b,
                "runs": len(lat),
                "p50_ms": float(np.percentile(lat_ms, 50)),
                "p99_ms": float(np.percentile(lat_ms, 99)),
                "images_per_s": b * len(lat) / (lat_ms.sum() / 1e3),
            }
        )
    return rows


def concurrent_singles(sidecar: Sidecar, model: str, clients: int, seconds: float) -> dict:
    x = inputs(model, clients, seed=7)
    counts = [0] * clients
    stop = time.monotonic() + seconds

    def client(i: int) -> None:
        one = x[i : i + 1]
        while time.monotonic() < stop:
            sidecar.infer(model, one)
            counts[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t
    return {"clients": clients, "images_per_s": sum(counts) / elapsed, "mean_batch": sidecar.mean_batch_size()}


def table(headers: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(f"{c:.3g}" if isinstance(c, float) else str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", type=Path, default=ROOT / "target" / "release" / "shiftwatch")
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--agree", type=int, default=64, help="tensors compared across providers")
    ap.add_argument("--cpu-only", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or ROOT / "runs" / f"gpu-bench-{stamp}.json"
    report: dict = {"started": stamp, "cpu_only": args.cpu_only, "models": {}}
    failed = False
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        work = Path(tmp)
        paths = {"digits": ROOT / "models" / "digits.onnx", "heavy": work / "heavy_cnn.onnx"}
        heavy_cnn(paths["heavy"])
        for model, path in paths.items():
            entry: dict = {}
            sides = {}
            try:
                for side in ("cuda", "cpu"):
                    sides[side] = Sidecar(args.binary, model, path, side == "cuda" and not args.cpu_only, work, side)
                entry["providers"] = {s: sc.ready["execution_provider"] for s, sc in sides.items()}
                x = inputs(model, args.agree)
                chunks = range(0, len(x), 8)
                a = np.concatenate([sides["cuda"].infer(model, x[i : i + 8]) for i in chunks])
                b = np.concatenate([sides["cpu"].infer(model, x[i : i + 8]) for i in chunks])
                diff = float(np.abs(a - b).max())
                entry["max_abs_difference"] = diff
                failed |= diff > TOLERANCE
                print(f"\n## {model}: providers {entry['providers']}, max |p_cuda - p_cpu| = {diff:.2e} (limit {TOLERANCE})")
                for side, sc in sides.items():
                    entry[f"by_batch_{side}"] = by_batch(sc, model, batches, args.seconds)
                    print(f"\n{side} side ({entry['providers'][side]}), one client, batches of B tensors:")
                    print(table(["B", "runs", "p50 ms", "p99 ms", "images/s"], [list(r.values()) for r in entry[f"by_batch_{side}"]]))
            except RuntimeError as e:
                print(e, file=sys.stderr)
                return 2
            finally:
                for sc in sides.values():
                    sc.stop()
            # The dynamic batcher, on the accelerated side.
            rows = []
            for max_batch in (1, 32):
                sc = Sidecar(
                    args.binary, model, path, not args.cpu_only, work, f"batcher-{max_batch}",
                    SHIFTWATCH__INFERENCE__MAX_BATCH=str(max_batch),
                    SHIFTWATCH__INFERENCE__MAX_BATCH_DELAY_US="500",
                )
                try:
                    r = concurrent_singles(sc, model, args.clients, args.seconds)
                finally:
                    sc.stop()
                rows.append([max_batch, r["clients"], r["images_per_s"], r["mean_batch"]])
            entry["dynamic_batching"] = rows
            print(f"\n{'cpu' if args.cpu_only else 'cuda'}, {args.clients} clients sending single images:")
            print(table(["max_batch", "clients", "images/s", "mean batch run"], rows))
            report["models"][model] = entry
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
