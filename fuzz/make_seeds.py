"""Writes the starting corpus of each fuzz target into fuzz/seeds/<target>/ (committed).

Run from the repository root with the project's venv: `.venv/bin/python fuzz/make_seeds.py`.
Each file is what the target's entry point in src/fuzz.rs takes: for `image` a selector byte
then an encoded image; for `v2_request` a selector byte, the JSON part's length (2 bytes,
little-endian), the JSON part and the binary part; for `config` the TOML text, optionally a
NUL and environment lines.
"""

import gzip
import io
import json
import struct
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent / "seeds"


def write(target: str, name: str, data: bytes) -> None:
    folder = ROOT / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def images() -> None:
    rng = np.random.default_rng(7)
    gray = Image.fromarray(rng.integers(0, 256, (12, 9), dtype=np.uint8), "L")
    rgb = Image.fromarray(rng.integers(0, 256, (10, 14, 3), dtype=np.uint8), "RGB")
    rgba = Image.fromarray(rng.integers(0, 256, (6, 6, 4), dtype=np.uint8), "RGBA")
    deep = Image.fromarray(rng.integers(0, 65535, (5, 7), dtype=np.uint16).astype(np.int32), "I")
    seeds = {
        "gray.png": (1, encode(gray, "PNG")),
        "rgb.png": (0x09, encode(rgb, "PNG")),
        "rgba.png": (0x11, encode(rgba, "PNG")),
        "deep.png": (0x29, encode(deep.convert("I;16"), "PNG")),
        "palette.png": (0x41, encode(rgb.convert("P"), "PNG")),
        "rgb.jpg": (0x0A, encode(rgb, "JPEG", quality=80)),
        "progressive.jpg": (0x8A, encode(rgb, "JPEG", quality=50, progressive=True)),
        "gray.jpg": (0x02, encode(gray, "JPEG")),
        "lossless.webp": (0x0B, encode(rgb, "WEBP", lossless=True)),
        "lossy.webp": (0x4B, encode(rgb, "WEBP", quality=60)),
        "anim.gif": (0x0C, encode(rgb.convert("P"), "GIF")),
        "rgb.bmp": (0x0D, encode(rgb, "BMP")),
        "rgb.tiff": (0x0E, encode(rgb, "TIFF")),
        "gray.tiff": (0x66, encode(gray, "TIFF", compression="tiff_deflate")),
    }
    for name, (selector, data) in seeds.items():
        write("image", name, bytes([selector]) + data)


def v2(selector: int, request: dict, binary: bytes = b"") -> bytes:
    part = json.dumps(request).encode()
    body = struct.pack("<H", len(part)) + part + binary
    if selector & 0x03 == 1:
        body = gzip.compress(body, mtime=0)
    return bytes([selector]) + body


def v2_requests() -> None:
    pixels = [round(i / 64, 4) for i in range(64)]
    write("v2_request", "fp32_json", v2(0, {
        "id": "a", "inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32",
                               "data": pixels}],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 3}}],
    }))
    raw = np.arange(128, dtype=np.float32).tobytes()
    write("v2_request", "fp32_binary", v2(0, {
        "inputs": [{"name": "image", "shape": [2, 1, 8, 8], "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)}}],
        "parameters": {"binary_data_output": True},
    }, raw))
    half = np.linspace(0, 1, 64, dtype=np.float16).tobytes()
    write("v2_request", "fp16_binary_gzip", v2(1, {
        "inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP16",
                    "parameters": {"binary_data_size": len(half)}}],
    }, half))
    write("v2_request", "uint8_nhwc", v2(4, {
        "inputs": [{"name": "image", "shape": [1, 8, 8, 3], "datatype": "UINT8",
                    "data": list(range(192))}],
    }))
    write("v2_request", "bytes_images", v2(8, {
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                    "data": ["iVBORw0KGgo="]}],
        "outputs": [{"name": "embedding"}],
    }))


def configs() -> None:
    shipped = (Path(__file__).resolve().parent.parent / "config" / "shiftwatch.toml").read_text()
    write("config", "shipped.toml", shipped.encode())
    write("config", "env_overrides", (shipped + "\0SHIFTWATCH__SERVER__PORT=9\n"
                                      "SHIFTWATCH__MONITOR__WINDOW=50\n").encode())
    write("config", "two_models.toml", b"""
[models.a]
path = "a.onnx"
labels = ["x", "y"]
[models.a.preprocess]
width = 8
height = 8
color = "grayscale"
[models.b]
path = "b.onnx"
""")


if __name__ == "__main__":
    images()
    v2_requests()
    configs()
    for folder in sorted(ROOT.iterdir()):
        print(folder.name, len(list(folder.iterdir())))
