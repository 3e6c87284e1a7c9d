"""Export the numpy MLP to ONNX with shiftwatch's metadata, and check the export with onnxruntime.

Graph: image [N,1,8,8] -> Flatten -> Gemm -> Relu -> Gemm -> Relu (= `embedding` [N,32]) -> Gemm
-> Softmax (= `probabilities` [N,10]). The file bytes depend only on the weights and the metadata:
no timestamps, fixed opset and IR version.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import digits_mlp as dm

OPSET = 17
IR_VERSION = 8  # the IR version that goes with opset 17; onnxruntime 1.31 reads it
PRODUCER = "shiftwatch-training"
METADATA_KEY = "shiftwatch"
METADATA_FORMAT = "shiftwatch.model/v1"
PIXEL_SCALE = 1.0 / 240.0  # PNG pixel = 15 * v (v = 0..16), model input = v / 16 = pixel / 240


def shiftwatch_metadata(training: dict) -> dict:
    """The JSON that shiftwatch reads from metadata_props["shiftwatch"] (key order is fixed)."""
    return {
        "format": METADATA_FORMAT,
        "labels": list(dm.CLASS_NAMES),
        "input": {
            "name": "image",
            "layout": "nchw",
            "color": "grayscale",
            "width": 8,
            "height": 8,
            "resize": "area",
            "scale": PIXEL_SCALE,
            "mean": [0.0],
            "std": [1.0],
        },
        "outputs": {"probabilities": "probabilities", "kind": "probabilities", "embedding": "embedding"},
        "training": training,
    }


def params_float32(params: dict) -> dict:
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in params.items()}


def numpy_forward32(params32: dict, images: np.ndarray):
    """The reference forward pass in float32: images [N,1,8,8] -> (probabilities, embedding)."""
    x = images.reshape(len(images), -1).astype(np.float32)
    probs, emb = dm.predict(params32, x)
    return probs.astype(np.float32), emb.astype(np.float32)


def build_model(params: dict, metadata: dict, doc: str) -> onnx.ModelProto:
    p = params_float32(params)
    inits = [numpy_helper.from_array(p[k], name=k) for k in ("W1", "b1", "W2", "b2", "W3", "b3")]
    nodes = [
        helper.make_node("Flatten", ["image"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "W1", "b1"], ["a1"], name="dense1"),
        helper.make_node("Relu", ["a1"], ["h1"], name="relu1"),
        helper.make_node("Gemm", ["h1", "W2", "b2"], ["a2"], name="dense2"),
        helper.make_node("Relu", ["a2"], ["embedding"], name="relu2"),
        helper.make_node("Gemm", ["embedding", "W3", "b3"], ["logits"], name="head"),
        helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=1),
    ]
    emb_dim = p["W2"].shape[1]
    graph = helper.make_graph(
        nodes,
        "shiftwatch_digits_mlp",
        inputs=[helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])],
        outputs=[
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", dm.N_CLASSES]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", emb_dim]),
        ],
        initializer=inits,
        doc_string=doc,
    )
    model = helper.make_model(
        graph,
        producer_name=PRODUCER,
        producer_version="1",
        doc_string=doc,
        opset_imports=[helper.make_opsetid("", OPSET)],
    )
    model.ir_version = IR_VERSION
    model.model_version = 1
    helper.set_model_props(model, {METADATA_KEY: json.dumps(metadata)})
    onnx.checker.check_model(model, full_check=True)
    return model


def session(path_or_bytes) -> ort.InferenceSession:
    """A single-threaded CPU session (deterministic outputs for the fixtures)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path_or_bytes, sess_options=so, providers=["CPUExecutionProvider"])


def verify(model_bytes: bytes, params: dict, images: np.ndarray, atol=1e-5):
    """Both outputs from onnxruntime match the numpy float32 forward pass, for several batch sizes."""
    sess = session(model_bytes)
    p32 = params_float32(params)
    x = images.astype(np.float32)
    want_p, want_e = numpy_forward32(p32, x)
    worst = 0.0
    for n in (1, 7, len(x)):
        got_p, got_e = sess.run(["probabilities", "embedding"], {"image": x[:n]})
        assert got_p.shape == (n, dm.N_CLASSES) and got_e.shape == (n, p32["W2"].shape[1])
        for got, want in ((got_p, want_p[:n]), (got_e, want_e[:n])):
            err = float(np.abs(got - want).max())
            worst = max(worst, err)
            if err > atol:
                raise AssertionError(f"onnxruntime and numpy differ by {err} > {atol}")
    return worst


def export(path, params: dict, metadata: dict, doc: str, check_images: np.ndarray) -> float:
    model = build_model(params, metadata, doc)
    data = model.SerializeToString(deterministic=True)
    worst = verify(data, params, check_images)
    with open(path, "wb") as f:
        f.write(data)
    return worst
