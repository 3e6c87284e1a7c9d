"""Write a compute-heavy test model for throughput comparisons with bare ONNX Runtime.

It stands for the models users deploy (a CNN on 224x224 RGB photos) where inference, not
decoding, is the cost: about 265 million multiply-adds per image (four layers, 150 million, ran
in 2.77 ms on one core of this machine; the fifth is meant to bring it near 5 ms: check with
--check on a quiet machine). Random weights from a fixed seed; the predictions mean nothing,
only the work counts.

    <out>/heavy.onnx   input `input` float32 [N,3,224,224] (NCHW, dynamic N): pixel/255 with the
                       ImageNet mean and std; five 3x3 convolutions (3->16 stride 2, 16->32,
                       32->32 stride 2, 32->64, 64->64), ReLU, global average pooling, a 64->10 linear
                       layer and softmax: output `probabilities` float32 [N,10].
    <out>/heavy.toml   a shiftwatch config serving it (the model carries no metadata).
    <out>/photo.png    a 320x240 RGB test photo (a smooth gradient with noise, so PNG is large).
    <out>/tensor.npy   the photo preprocessed as shiftwatch and the peer do it, shape [1,3,224,224].

Usage: python training/make_heavy_model.py [--out runs/heavy] [--check]
(--check prints the median single-image latency on one intra-op thread).
"""

from __future__ import annotations

import argparse
import io
import os
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

SEED = 11
SIDE = 224
CLASSES = 10
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
# (out channels, stride) per 3x3 convolution.
LAYERS = [(16, 2), (32, 1), (32, 2), (64, 1), (64, 1)]


def build(rng: np.random.Generator) -> onnx.ModelProto:
    inits, nodes = [], []
    x, cin = "input", 3
    for i, (cout, stride) in enumerate(LAYERS):
        w = rng.normal(0, np.sqrt(2.0 / (cin * 9)), size=(cout, cin, 3, 3)).astype(np.float32)
        b = rng.normal(0, 0.05, size=cout).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [
            helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[3, 3],
                             strides=[stride, stride], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"]),
        ]
        x, cin = f"r{i}", cout
    fc = rng.normal(0, 0.5, size=(cin, CLASSES)).astype(np.float32)
    fb = rng.normal(0, 0.1, size=CLASSES).astype(np.float32)
    inits += [numpy_helper.from_array(fc, "fc"), numpy_helper.from_array(fb, "fb")]
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc", "fb"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "heavy",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", CLASSES])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def photo(rng: np.random.Generator) -> Image.Image:
    h, w = 240, 320
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], axis=-1)
    noisy = base + rng.normal(0, 12, size=base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def area_weights(src: int, dst: int) -> np.ndarray:
    """Box-filter weights [dst, src]: each output averages the source span it covers."""
    m = np.zeros((dst, src))
    scale = src / dst
    for o in range(dst):
        lo, hi = o * scale, (o + 1) * scale
        for i in range(int(np.floor(lo)), min(src, int(np.ceil(hi)))):
            m[o, i] = max(0.0, min(hi, i + 1) - max(lo, i))
        m[o] /= m[o].sum()
    return m


def preprocess(image: Image.Image) -> np.ndarray:
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    h, w, _ = rgb.shape
    rows, cols = area_weights(h, SIDE), area_weights(w, SIDE)
    out = np.einsum("yh,hwc,xw->cyx", rows, rgb, cols) / 255.0
    out = (out - np.array(MEAN)[:, None, None]) / np.array(STD)[:, None, None]
    return out[None].astype(np.float32)


CONFIG = """\
# shiftwatch serving the compute-heavy comparison model (written by training/make_heavy_model.py).
[model]
name = "heavy"
path = "{model}"
labels = ["c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9"]
[model.preprocess]
layout = "nchw"
color = "rgb"
resize = "area"
scale = 0.00392156862745098
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
[model.outputs]
kind = "probabilities"
[monitor]
# No reference profile is built for this model: the monitor would only say insufficient_data.
enabled = false
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join("runs", "heavy"))
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(SEED)
    model_path = os.path.join(args.out, "heavy.onnx")
    onnx.save(build(rng), model_path)
    image = photo(rng)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    with open(os.path.join(args.out, "photo.png"), "wb") as f:
        f.write(buf.getvalue())
    tensor = preprocess(image)
    np.save(os.path.join(args.out, "tensor.npy"), tensor)
    with open(os.path.join(args.out, "heavy.toml"), "w") as f:
        f.write(CONFIG.format(model=os.path.abspath(model_path)))
    print(f"wrote {args.out}/heavy.onnx, heavy.toml, photo.png ({len(buf.getvalue())} bytes), tensor.npy")
    if args.check:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
        for _ in range(5):
            sess.run(None, {"input": tensor})
        times = []
        for _ in range(50):
            t = time.perf_counter()
            sess.run(None, {"input": tensor})
            times.append(time.perf_counter() - t)
        print(f"median {np.median(times) * 1e3:.2f} ms per image on one thread")


if __name__ == "__main__":
    main()
