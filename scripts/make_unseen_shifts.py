"""Shifts the correctness model's fit never saw, made from the test split (data/traffic/normal).

Writes one folder per shift under OUT (default target/unseen-shifts), each with its images and a
labels.csv (`file,label`, the true digit), for `shiftwatch estimates` (make estimates-table) and
tests/estimates.rs. The fit (src/monitor/augment.rs) alters the reference images by blur, gain and
offset, rotation, zoom, occlusion and stroke width; none of these five is among them:

- inverted:   255 - v (white background, dark strokes);
- translated: moved by 2 of the 8 digit cells (8 px at 32 px) left, right, up or down, wrapping;
- pixelated:  every 2x2 block of digit cells replaced by its mean (a 4x4 image shown at 32x32);
- jpeg:       saved as JPEG at quality 5..15 (the .jpg files themselves, decoded by the sidecar);
- noisy:      Gaussian noise of standard deviation 60 grey levels, clipped to 0..255.

Three more were added after the correctness model's design was frozen, and evaluated once,
as a check that the five above were not tuned for (the `holdout` group of the table):

- mirrored:    flipped left to right;
- salt_pepper: 8% of the pixels set to black or white;
- binarized:   every pixel to 0 or 255 at the image's mean grey level.

Deterministic: the same files for the same input. Run from the repository root:
    .venv/bin/python scripts/make_unseen_shifts.py [OUT]
"""

import csv
import pathlib
import sys

import numpy as np
from PIL import Image

SOURCE = pathlib.Path("data/traffic/normal")


def inverted(g, rng):
    return 255.0 - g


def translated(g, rng):
    dx, dy = [(8, 0), (-8, 0), (0, 8), (0, -8)][rng.integers(0, 4)]
    return np.roll(np.roll(g, dx, axis=1), dy, axis=0)


def pixelated(g, rng):
    h, w = g.shape
    bh, bw = h // 4, w // 4
    small = g[: bh * 4, : bw * 4].reshape(4, bh, 4, bw).mean(axis=(1, 3))
    return np.kron(small, np.ones((bh, bw)))


def noisy(g, rng):
    return g + rng.normal(0.0, 60.0, g.shape)


def mirrored(g, rng):
    return g[:, ::-1]


def salt_pepper(g, rng):
    out = g.copy()
    hit = rng.random(g.shape) < 0.08
    out[hit] = np.where(rng.random(g.shape) < 0.5, 0.0, 255.0)[hit]
    return out


def binarized(g, rng):
    return np.where(g > g.mean(), 255.0, 0.0)


SHIFTS = {
    "inverted": inverted,
    "translated": translated,
    "pixelated": pixelated,
    "noisy": noisy,
    "mirrored": mirrored,
    "salt_pepper": salt_pepper,
    "binarized": binarized,
}


def main():
    out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/unseen-shifts")
    rows = list(csv.DictReader(open(SOURCE / "labels.csv")))
    images = [np.asarray(Image.open(SOURCE / r["file"]).convert("L"), dtype=np.float64) for r in rows]
    order = ["inverted", "translated", "pixelated", "noisy", "jpeg", "mirrored", "salt_pepper", "binarized"]
    for seed, name in enumerate(order):
        rng = np.random.default_rng(1000 + seed)
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "labels.csv", "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["file", "label"])
            for i, (r, g) in enumerate(zip(rows, images)):
                if name == "jpeg":
                    file = f"{name}-{i:04d}.jpg"
                    Image.fromarray(g.astype(np.uint8)).save(
                        folder / file, "JPEG", quality=int(rng.integers(5, 16))
                    )
                else:
                    file = f"{name}-{i:04d}.png"
                    v = np.clip(np.rint(SHIFTS[name](g, rng)), 0, 255).astype(np.uint8)
                    Image.fromarray(v).save(folder / file, "PNG")
                w.writerow([file, r["label"]])
        print(f"{folder}: {len(rows)} images")


if __name__ == "__main__":
    main()
