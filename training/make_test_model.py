"""Write tests/data/rgb-cnn/: a second, unrelated ONNX model and images for shiftwatch's Rust tests.

It proves shiftwatch is not tied to the demo model: RGB, NHWC, 64x64, ImageNet normalisation, raw
logits, no embedding output and no shiftwatch metadata (the Rust config describes it entirely).

    model.onnx      input `input` float32 [N,64,64,3] (NHWC, dynamic N): (pixel/255 - mean[c]) / std[c],
                    mean = [0.485, 0.456, 0.406], std = [0.229, 0.224, 0.225];
                    output `logits` float32 [N,5] (no softmax). Random weights from a fixed seed.
    pattern.png     64x64 RGB PNG
    photo.jpg       64x64 RGB JPEG (4:4:4). Expected values come from Pillow's decode; another JPEG
                    decoder may differ by a grey level or two, hence a looser tolerance (in the JSON).
    large-128.png   128x128 RGB PNG, a 64x64 image upscaled 2x by nearest neighbour: any area/box
                    downsample to 64x64 gives the 64x64 source back exactly.
    expected.json   per image: logits and softmax probabilities from onnxruntime, and the tolerance.

Run from the repository root: `python training/make_test_model.py` (build.py calls it).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

OUT_DIR = os.path.join("tests", "data", "rgb-cnn")
SEED = 4
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
N_OUT = 5
PNG_ATOL = 1e-5
JPEG_ATOL = 2e-2
OPSET = 17
IR_VERSION = 8


def build_model(rng: np.random.Generator) -> onnx.ModelProto:
    def conv_w(cout, cin, k):
        return (rng.normal(0, np.sqrt(2.0 / (cin * k * k)), size=(cout, cin, k, k))).astype(np.float32)

    w1, b1 = conv_w(8, 3, 3), rng.normal(0, 0.1, size=8).astype(np.float32)
    w2, b2 = conv_w(16, 8, 3), rng.normal(0, 0.1, size=16).astype(np.float32)
    w3 = rng.normal(0, 0.6, size=(16, N_OUT)).astype(np.float32)
    b3 = rng.normal(0, 0.2, size=N_OUT).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"), (w3, "w3"), (b3, "b3"))]
    nodes = [
        helper.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w1", "b1"], ["c1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "w3", "b3"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "rgb_cnn_test_model",
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64, 64, 3])],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", N_OUT])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        producer_name="shiftwatch-training",
        producer_version="1",
        doc_string="Random-weight RGB CNN for shiftwatch's tests (not a trained model); see training/make_test_model.py",
        opset_imports=[helper.make_opsetid("", OPSET)],
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def pattern(rng: np.random.Generator, size: int) -> np.ndarray:
    """A deterministic colourful test picture (uint8 HxWx3): gradients, a disc and a bar."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    f = rng.uniform(1, 3, size=3)
    img = np.stack(
        [
            0.5 + 0.5 * np.sin(2 * np.pi * (f[0] * xx + 0.3)),
            0.5 + 0.5 * np.cos(2 * np.pi * f[1] * yy),
            xx * (1 - yy),
        ],
        axis=-1,
    )
    cx, cy, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.25)
    disc = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
    img[disc] = rng.uniform(0, 1, size=3)
    img[int(size * 0.8) : int(size * 0.9), :] = rng.uniform(0, 1, size=3)
    img = img * rng.uniform(0.1, 1.0, size=3)  # a colour cast, different for each picture
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


def encode(rgb: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "PNG":
        Image.fromarray(rgb).save(buf, format="PNG", optimize=False, compress_level=9)
    else:
        Image.fromarray(rgb).save(buf, format="JPEG", quality=92, subsampling=0, optimize=False)
    return buf.getvalue()


def decode_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def preprocess(rgb: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 -> float32 [1,64,64,3]: 2x box downsample when 128x128, then ImageNet normalisation."""
    x = rgb.astype(np.float64)
    h, w, _ = x.shape
    if (h, w) != (64, 64):
        fy, fx = h // 64, w // 64
        assert h == 64 * fy and w == 64 * fx
        x = x.reshape(64, fy, 64, fx, 3).mean(axis=(1, 3))
    x = (x / 255.0 - np.array(MEAN)) / np.array(STD)
    return x.astype(np.float32)[None]


def softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64) - z.max()
    e = np.exp(z)
    return e / e.sum()


def main(root: str = ".") -> list:
    out = os.path.join(root, OUT_DIR)
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(SEED)
    model = build_model(rng)
    model_bytes = model.SerializeToString(deterministic=True)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model_bytes, sess_options=so, providers=["CPUExecutionProvider"])

    base = pattern(rng, 64)
    photo = pattern(rng, 64)
    small = pattern(rng, 64)
    large = np.repeat(np.repeat(small, 2, axis=0), 2, axis=1)
    files = [
        ("pattern.png", encode(base, "PNG"), PNG_ATOL, "none"),
        ("photo.jpg", encode(photo, "JPEG"), JPEG_ATOL, "none"),
        ("large-128.png", encode(large, "PNG"), PNG_ATOL, "area 2x (128x128 -> 64x64)"),
    ]
    images = []
    for name, data, atol, resize in files:
        rgb = decode_rgb(data)
        x = preprocess(rgb)
        (logits,) = sess.run(["logits"], {"input": x})
        probs = softmax(logits[0])
        if name.endswith(".jpg"):
            # The tolerance must cover another decoder being off by up to 2 grey levels per channel.
            for trial in range(20):
                noise = np.random.default_rng([SEED, trial]).integers(-2, 3, size=rgb.shape)
                rgb2 = np.clip(rgb.astype(int) + noise, 0, 255).astype(np.uint8)
                (l2,) = sess.run(["logits"], {"input": preprocess(rgb2)})
                diff = np.abs(softmax(l2[0]) - probs).max()
                assert diff < atol / 2, f"jpeg tolerance too tight: {diff}"
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
        images.append(
            {
                "file": f"{OUT_DIR}/{name}",
                "width": int(rgb.shape[1]),
                "height": int(rgb.shape[0]),
                "resize": resize,
                "decoded_rgb_sha256": hashlib.sha256(np.ascontiguousarray(rgb).tobytes()).hexdigest(),
                "logits": [float(v) for v in logits[0]],
                "probabilities": [float(v) for v in probs],
                "atol": atol,
            }
        )
    # The probabilities must be informative, not uniform, or the check proves little.
    assert max(max(im["probabilities"]) for im in images) > 0.4
    with open(os.path.join(out, "model.onnx"), "wb") as f:
        f.write(model_bytes)
    expected = {
        "model": f"{OUT_DIR}/model.onnx",
        "description": "random-weight CNN (seed %d), not trained; generated by training/make_test_model.py" % SEED,
        "input": {
            "name": "input",
            "layout": "nhwc",
            "color": "rgb",
            "width": 64,
            "height": 64,
            "resize": "area",
            "scale": 1.0 / 255.0,
            "mean": MEAN,
            "std": STD,
        },
        "output": {"name": "logits", "kind": "logits", "classes": N_OUT},
        "probabilities": "softmax of the logits, computed in float64 from onnxruntime's float32 logits",
        "tolerance": "compare probabilities with absolute tolerance `atol`: 1e-5 for the PNGs (exact decode); "
        "2e-2 for the JPEG because JPEG decoders may differ by a grey level or two per channel "
        "(expected values use Pillow's libjpeg decode; the decoded RGB sha256 is given for that decode)",
        "images": images,
    }
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    return [os.path.join(OUT_DIR, n) for n in ("model.onnx", "expected.json")] + [i["file"] for i in images]


if __name__ == "__main__":
    for path in main(sys.argv[1] if len(sys.argv) > 1 else "."):
        print("wrote", path)
