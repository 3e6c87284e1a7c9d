"""The Python peer for the speed comparison (scripts/compare.py): what `classify` does, written
as a strong FastAPI baseline.

POST /v1/models/<name>/classify with the image bytes as the body answers the same JSON as
shiftwatch's classify (request_id, model, model_version, predictions (top 5), confidence, margin,
entropy, flags): decode with Pillow, convert to grayscale ("L", ITU-R 601) or RGB as the model
wants, area resize (Pillow's BOX filter), scale/mean/std into an NCHW float32 tensor, one
onnxruntime run, softmax statistics in numpy. It is not a straw man:

- served by uvicorn with uvloop and httptools, several worker processes, no access log;
- the handler is async and, by default, decodes and runs the model inline on the event loop:
  with one worker process per core that is the fastest way here (measured: a hop to the thread
  pool costs more than the whole digits inference); PEER_EXECUTOR=1 hops to the default thread
  pool instead, so that the loop keeps accepting while a long inference runs;
- one onnxruntime session per worker, one intra-op thread (the workers are the parallelism),
  graph optimizations on; the response is built as bytes with the standard json module (no
  pydantic validation on the way out).

Configured by environment variables (scripts/compare.py sets them):
  PEER_MODEL      the .onnx file
  PEER_NAME       the model name in the URL (default "digits")
  PEER_LABELS     comma-separated labels (default: the model's shiftwatch metadata, else 0..K-1)
  PEER_PREPROCESS JSON like the model metadata's "input" (color, width, height, scale, mean,
                  std); default: the model's shiftwatch metadata
  PEER_EXECUTOR   1: decode and infer in the thread pool (default 0: inline)

Run: .venv-peer/bin/uvicorn --app-dir benches/peers fastapi_peer:app --workers 2 --loop uvloop
     --http httptools --no-access-log --port PORT
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import uuid

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, Request
from fastapi.responses import Response
from PIL import Image

TOP_K = 5


MODEL_PATH = os.environ["PEER_MODEL"]
NAME = os.environ.get("PEER_NAME", "digits")
EXECUTOR = os.environ.get("PEER_EXECUTOR", "0") == "1"

options = ort.SessionOptions()
options.intra_op_num_threads = int(os.environ.get("PEER_INTRA_THREADS", "1"))
options.inter_op_num_threads = 1
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
SESSION = ort.InferenceSession(MODEL_PATH, options, providers=["CPUExecutionProvider"])
INPUT = SESSION.get_inputs()[0].name
OUTPUT = SESSION.get_outputs()[0].name
CLASSES = int(SESSION.get_outputs()[0].shape[-1])
META = json.loads(SESSION.get_modelmeta().custom_metadata_map.get("shiftwatch", "{}"))
PRE = json.loads(os.environ["PEER_PREPROCESS"]) if os.environ.get("PEER_PREPROCESS") else META["input"]
COLOR = PRE.get("color", "grayscale")
WIDTH, HEIGHT = int(PRE["width"]), int(PRE["height"])
CHANNELS = 1 if COLOR == "grayscale" else 3
SCALE = float(PRE.get("scale", 1.0 / 255.0))
MEAN = np.asarray(PRE.get("mean", [0.0] * CHANNELS), dtype=np.float32).reshape(CHANNELS, 1, 1)
STD = np.asarray(PRE.get("std", [1.0] * CHANNELS), dtype=np.float32).reshape(CHANNELS, 1, 1)

if os.environ.get("PEER_LABELS"):
    LABELS = os.environ["PEER_LABELS"].split(",")
else:
    LABELS = META.get("labels") or [str(i) for i in range(CLASSES)]
VERSION = "peer"

app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


def _classify(body: bytes) -> bytes:
    image = Image.open(io.BytesIO(body))
    image = image.convert("L" if CHANNELS == 1 else "RGB")
    if image.size != (WIDTH, HEIGHT):
        image = image.resize((WIDTH, HEIGHT), Image.Resampling.BOX)
    pixels = np.asarray(image, dtype=np.float32)
    chw = pixels[None, :, :] if CHANNELS == 1 else pixels.transpose(2, 0, 1)
    tensor = ((chw * SCALE - MEAN) / STD)[None, ...]
    p = SESSION.run([OUTPUT], {INPUT: tensor})[0][0].astype(np.float64)
    order = np.argsort(-p, kind="stable")
    top = order[:TOP_K]
    confidence = float(p[order[0]])
    margin = confidence - float(p[order[1]]) if len(order) > 1 else confidence
    nz = p[p > 0]
    entropy = float(-(nz * np.log(nz)).sum())
    answer = {
        "request_id": str(uuid.uuid4()),
        "model": NAME,
        "model_version": VERSION,
        "predictions": [
            {"class": int(c), "label": LABELS[int(c)], "probability": float(p[c])} for c in top
        ],
        "confidence": confidence,
        "margin": margin,
        "entropy": entropy if math.isfinite(entropy) else 0.0,
        "flags": [],
    }
    return json.dumps(answer, separators=(",", ":")).encode()


@app.post(f"/v1/models/{NAME}/classify")
async def classify(request: Request) -> Response:
    body = await request.body()
    try:
        if EXECUTOR:
            payload = await asyncio.get_running_loop().run_in_executor(None, _classify, body)
        else:
            payload = _classify(body)
    except (OSError, ValueError) as e:
        return Response(
            json.dumps({"error": {"code": "bad_image", "message": str(e)}}).encode(),
            status_code=400,
            media_type="application/json",
        )
    return Response(payload, media_type="application/json")


@app.get("/healthz")
async def healthz() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")
