"""Drives a running shiftwatch with the official tritonclient (HTTP) and checks every answer.

Usage: check_tritonclient.py HOST:PORT MODEL_VERSION. Prints a JSON summary; exits non-zero on
the first failed check. The expected probabilities come from onnxruntime on the same tensor."""

import json
import sys

import numpy as np
import onnxruntime as ort
import tritonclient.http as http
from tritonclient.utils import InferenceServerException

MODEL = "digits"


def main() -> None:
    url, version = sys.argv[1], sys.argv[2]
    client = http.InferenceServerClient(url=url)
    calls = 0

    def check(cond, what):
        if not cond:
            raise SystemExit(f"check failed: {what}")

    check(client.is_server_live(), "is_server_live")
    check(client.is_server_ready(), "is_server_ready")
    meta = client.get_server_metadata()
    check(meta["name"] == "shiftwatch" and "classification" in meta["extensions"], meta)
    model_meta = client.get_model_metadata(MODEL)
    check(model_meta["name"] == MODEL and model_meta["versions"] == [version], model_meta)
    check(client.get_model_metadata(MODEL, model_version=version)["name"] == MODEL, "versioned metadata")
    check(client.is_model_ready(MODEL), "is_model_ready")
    check(client.is_model_ready(MODEL, model_version=version), "is_model_ready(version)")
    check(not client.is_model_ready(MODEL, model_version="000000000000"), "unknown version")
    calls += 8

    inp = model_meta["inputs"][0]
    shape = [2] + [int(d) for d in inp["shape"][1:]]
    rng = np.random.default_rng(7)
    x = rng.random(shape, dtype=np.float32)
    session = ort.InferenceSession("models/digits.onnx", providers=["CPUExecutionProvider"])
    expected = session.run(["probabilities"], {inp["name"]: x})[0]

    def tensor(binary):
        t = http.InferInput(inp["name"], shape, "FP32")
        t.set_data_from_numpy(x, binary_data=binary)
        return t

    # Binary data on and off, with and without listed outputs.
    for binary_in in (True, False):
        for outputs in (None, [http.InferRequestedOutput("probabilities", binary_data=False)],
                        [http.InferRequestedOutput("probabilities")]):
            r = client.infer(MODEL, [tensor(binary_in)], outputs=outputs)
            p = r.as_numpy("probabilities")
            check(p is not None and p.shape == (2, 10), f"probabilities shape {None if p is None else p.shape}")
            check(np.allclose(p, expected, atol=1e-5), "probabilities equal onnxruntime's")
            calls += 1
    # The classification extension.
    r = client.infer(MODEL, [tensor(True)],
                     outputs=[http.InferRequestedOutput("probabilities", class_count=3)])
    top = r.as_numpy("probabilities")
    check(top.shape == (2, 3), f"classification shape {top.shape}")
    for row, probs in zip(top, expected):
        first = row[0].decode() if isinstance(row[0], bytes) else str(row[0])
        value, index, label = first.split(":")
        check(int(index) == int(np.argmax(probs)) and label == str(int(index)), first)
        check(abs(float(value) - float(np.max(probs))) < 1e-5, first)
    calls += 1
    # model_version set, gzip request and response compression.
    r = client.infer(MODEL, [tensor(True)], model_version=version,
                     request_compression_algorithm="gzip", response_compression_algorithm="gzip")
    check(np.allclose(r.as_numpy("probabilities"), expected, atol=1e-5), "gzip")
    check(r.get_response()["model_version"] == version, "model_version in the answer")
    r = client.infer(MODEL, [tensor(False)], request_compression_algorithm="deflate",
                     response_compression_algorithm="deflate")
    check(np.allclose(r.as_numpy("probabilities"), expected, atol=1e-5), "deflate")
    calls += 2
    # UINT8 and FP16 inputs are cast to FP32.
    x16 = x.astype(np.float16)
    t = http.InferInput(inp["name"], shape, "FP16")
    t.set_data_from_numpy(x16, binary_data=True)
    r = client.infer(MODEL, [t])
    e16 = session.run(["probabilities"], {inp["name"]: x16.astype(np.float32)})[0]
    check(np.allclose(r.as_numpy("probabilities"), e16, atol=1e-5), "FP16 input")
    calls += 1
    # An encoded image as a BYTES input, decoded like classify.
    png = open("data/reference/ref-0000.png", "rb").read()
    t = http.InferInput(inp["name"], [1], "BYTES")
    t.set_data_from_numpy(np.array([png], dtype=np.object_), binary_data=True)
    r = client.infer(MODEL, [t], request_id="bytes-image")
    check(r.as_numpy("probabilities").shape == (1, 10), "BYTES image")
    calls += 1
    # A wrong shape is a 4xx.
    bad = http.InferInput(inp["name"], [1, 3, 3, 3], "FP32")
    bad.set_data_from_numpy(np.zeros([1, 3, 3, 3], dtype=np.float32))
    try:
        client.infer(MODEL, [bad])
        raise SystemExit("a wrong shape was accepted")
    except InferenceServerException as e:
        check(str(e.status()) in ("400", "422"), f"wrong shape status {e.status()}")
    calls += 1
    json.dump({"calls": calls}, sys.stdout)


if __name__ == "__main__":
    main()
