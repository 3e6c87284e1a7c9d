"""The bundled images: exact 8x8 <-> 32x32 PNG encoding, the shifts, and out-of-distribution inputs.

Encoding: a digit intensity v in 0..16 is stored as the 8-bit grey value 15 * v (0..240), each 8x8
cell as a 4x4 block (nearest neighbour), so a 32x32 mode-"L" PNG. Shifted and synthetic images are
quantized to that grid first: the 8x8 array the model sees is round(clip(v, 0, 16) * 15) / 240, which
is exactly what the PNG holds, and a 4x4 box average of the decoded PNG gives it back.
"""

from __future__ import annotations

import csv
import io
import os

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

UPSCALE = 4
SIDE = 8 * UPSCALE  # 32


# ----------------------------------------------------------------------------------------------- codec


def quantize(v: np.ndarray) -> np.ndarray:
    """Intensities (any float, 8x8) -> grey values 0..240 (uint8) on the PNG grid."""
    return np.rint(np.clip(np.asarray(v, dtype=np.float64), 0.0, 16.0) * 15.0).astype(np.uint8)


def png_bytes(pixels8: np.ndarray) -> bytes:
    """8x8 grey values (uint8) -> 32x32 grayscale PNG bytes (nearest-neighbour upscale)."""
    assert pixels8.shape == (8, 8) and pixels8.dtype == np.uint8
    big = np.kron(pixels8, np.ones((UPSCALE, UPSCALE), dtype=np.uint8))
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, format="PNG", optimize=False, compress_level=9)
    return buf.getvalue()


def decode_png_8x8(data_or_path) -> np.ndarray:
    """PNG -> 8x8 float64 grey values, by a box average over each 4x4 block ("area" resize)."""
    src = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path
    with Image.open(src) as im:
        assert im.mode == "L" and im.size == (SIDE, SIDE), (im.mode, im.size)
        a = np.asarray(im, dtype=np.float64)
    return a.reshape(8, UPSCALE, 8, UPSCALE).mean(axis=(1, 3))


def model_input(pixels8: np.ndarray, scale: float) -> np.ndarray:
    """8x8 grey values -> the model input [1,1,8,8] float32: pixel * scale (mean 0, std 1)."""
    return (np.asarray(pixels8, dtype=np.float64) * scale).astype(np.float32).reshape(1, 1, 8, 8)


# ---------------------------------------------------------------------------------------------- shifts
# Every function takes intensities v (8x8, 0..16) and returns intensities; quantize() comes after.

BLUR_SIGMA = 0.7
CONTRAST_RANGE = (0.7, 0.9)  # v' = c * v + b
BRIGHTNESS_RANGE = (1.5, 2.5)
ROTATION_DEGREES = (10.0, 20.0)  # magnitude; the sign is random
CLASS_PRIOR_CLASSES = (1, 4, 7)


def blur(v, rng):
    return ndimage.gaussian_filter(v, sigma=BLUR_SIGMA, mode="constant", cval=0.0)


def brightness_contrast(v, rng):
    c = rng.uniform(*CONTRAST_RANGE)
    b = rng.uniform(*BRIGHTNESS_RANGE)
    return c * v + b


def rotate(v, rng):
    angle = rng.uniform(*ROTATION_DEGREES) * rng.choice([-1.0, 1.0])
    return ndimage.rotate(v, angle, reshape=False, order=1, mode="constant", cval=0.0)


# ------------------------------------------------------------------------------ out-of-distribution

# Capital letters as strokes on a 0..1 square (x right, y down): clearly not digits.
LETTERS = {
    "A": [[(0.1, 0.95), (0.5, 0.05), (0.9, 0.95)], [(0.28, 0.6), (0.72, 0.6)]],
    "E": [[(0.85, 0.05), (0.15, 0.05), (0.15, 0.95), (0.85, 0.95)], [(0.15, 0.5), (0.7, 0.5)]],
    "F": [[(0.85, 0.05), (0.15, 0.05), (0.15, 0.95)], [(0.15, 0.5), (0.7, 0.5)]],
    "H": [[(0.15, 0.05), (0.15, 0.95)], [(0.85, 0.05), (0.85, 0.95)], [(0.15, 0.5), (0.85, 0.5)]],
    "K": [[(0.2, 0.05), (0.2, 0.95)], [(0.85, 0.05), (0.2, 0.55)], [(0.4, 0.4), (0.85, 0.95)]],
    "M": [[(0.1, 0.95), (0.1, 0.05), (0.5, 0.6), (0.9, 0.05), (0.9, 0.95)]],
    "N": [[(0.15, 0.95), (0.15, 0.05), (0.85, 0.95), (0.85, 0.05)]],
    "T": [[(0.1, 0.08), (0.9, 0.08)], [(0.5, 0.08), (0.5, 0.95)]],
    "W": [[(0.05, 0.05), (0.28, 0.95), (0.5, 0.4), (0.72, 0.95), (0.95, 0.05)]],
    "X": [[(0.1, 0.05), (0.9, 0.95)], [(0.9, 0.05), (0.1, 0.95)]],
    "Y": [[(0.1, 0.05), (0.5, 0.5), (0.9, 0.05)], [(0.5, 0.5), (0.5, 0.95)]],
    "#": [[(0.35, 0.05), (0.3, 0.95)], [(0.7, 0.05), (0.65, 0.95)], [(0.05, 0.35), (0.95, 0.35)],
          [(0.05, 0.68), (0.95, 0.68)]],
}


def _raster(draw_fn, rng) -> np.ndarray:
    """Draw on a 32x32 canvas (white on black), area-downsample to 8x8, as intensities 0..16."""
    im = Image.new("L", (SIDE, SIDE), 0)
    draw_fn(ImageDraw.Draw(im), rng)
    a = np.asarray(im, dtype=np.float64).reshape(8, UPSCALE, 8, UPSCALE).mean(axis=(1, 3))
    return a / 255.0 * 16.0


def _letter(draw, rng):
    name = sorted(LETTERS)[rng.integers(len(LETTERS))]
    margin = rng.uniform(3, 7)
    span = SIDE - 2 * margin
    dx, dy = rng.uniform(-2, 2, size=2)
    width = int(rng.integers(3, 6))
    for stroke in LETTERS[name]:
        pts = [(margin + dx + x * span, margin + dy + y * span) for x, y in stroke]
        draw.line(pts, fill=255, width=width, joint="curve")


def _shape(draw, rng):
    kind = rng.integers(4)
    x0, y0 = rng.uniform(1, 10, size=2)
    x1, y1 = rng.uniform(20, 31, size=2)
    if kind == 0:
        draw.rectangle([x0, y0, x1, y1], fill=255)
    elif kind == 1:
        draw.ellipse([x0, y0, x1, y1], fill=255)
    elif kind == 2:
        draw.ellipse([x0, y0, x1, y1], outline=255, width=int(rng.integers(3, 6)))
    else:
        draw.rectangle([x0, y0, x1, y1], outline=255, width=int(rng.integers(3, 6)))


def ood_images(rng: np.random.Generator, n_per_kind: int):
    """Out-of-distribution 8x8 intensities: (kind, v) pairs, `n_per_kind` of each kind."""
    out = []
    for _ in range(n_per_kind):  # uniform noise
        out.append(("noise", rng.uniform(0, 16, size=(8, 8))))
    for i in range(n_per_kind):  # sparse noise and flat images
        if i % 10 == 0:
            v = np.full((8, 8), rng.uniform(0, 16))
        else:
            v = np.where(rng.random((8, 8)) < rng.uniform(0.1, 0.4), rng.uniform(8, 16, size=(8, 8)), 0.0)
        out.append(("sparse", v))
    for _ in range(n_per_kind):  # checkerboards and stripes
        yy, xx = np.mgrid[0:8, 0:8]
        period = int(rng.integers(1, 4))
        kind = rng.integers(3)
        if kind == 0:
            pattern = ((xx // period + yy // period) % 2).astype(float)
        elif kind == 1:
            pattern = ((xx // period) % 2).astype(float)
        else:
            pattern = ((yy // period) % 2).astype(float)
        out.append(("pattern", pattern * rng.uniform(8, 16)))
    for _ in range(n_per_kind):
        out.append(("shape", _raster(_shape, rng)))
    for _ in range(n_per_kind):
        out.append(("letter", _raster(_letter, rng)))
    return out


# --------------------------------------------------------------------------------------------- writing


def write_folder(folder: str, prefix: str, pixels: list, labels: list) -> list:
    """Write PNGs `<prefix>-NNNN.png` and labels.csv (file,label; empty label for none).

    Returns the list of written file names. Removes stale PNGs left by an earlier build.
    """
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):
        if name.endswith(".png") or name == "labels.csv":
            os.remove(os.path.join(folder, name))
    names = []
    for i, (px, label) in enumerate(zip(pixels, labels)):
        name = f"{prefix}-{i:04d}.png"
        data = png_bytes(px)
        assert np.array_equal(decode_png_8x8(data), px.astype(np.float64)), "PNG round trip is not exact"
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
        names.append(name)
    with open(os.path.join(folder, "labels.csv"), "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["file", "label"])
        for name, label in zip(names, labels):
            w.writerow([name, "" if label is None else str(label)])
    return names


def read_labels(folder: str) -> list:
    with open(os.path.join(folder, "labels.csv"), newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["file", "label"], rows[0]
    return [(r[0], r[1]) for r in rows[1:]]
