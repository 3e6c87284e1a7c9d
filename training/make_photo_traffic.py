"""data/traffic/photos/: out-of-distribution traffic of a kind nothing in shiftwatch was tuned on.

Random square crops of the two natural photographs scikit-learn ships
(sklearn.datasets.load_sample_images: china.jpg and flower.jpg, 427x640 RGB), each brought to the
digits model's input the way the bundled images are: grey (ITU-R 601 luma, as Pillow's "L"),
area-averaged to 8x8, scaled to the digit intensities 0..16 and written on the bundled PNG grid
(32x32, grey values 15 * v; training/digit_images.py). Half the crops are inverted (dark
background, bright strokes, as the digits are drawn), so both polarities are represented.

The relabel selection test (tests/candidates.rs) mixes these into normal traffic at 10% and
expects them to take at least three times that share of the top candidates, with no threshold
or score of the selection fitted on them.

usage: .venv/bin/python training/make_photo_traffic.py   (deterministic: seed 1313)
"""

from __future__ import annotations

import os
import sys

import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_images

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import digit_images as di  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COUNT = 100
SEED = 1313
CROP_SIDES = (48, 200)  # pixels of the 427x640 photo


def crops(rng: np.random.Generator, count: int) -> list[np.ndarray]:
    photos = [Image.fromarray(a).convert("L") for a in load_sample_images().images]
    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        side = int(rng.integers(*CROP_SIDES))
        x = int(rng.integers(0, photo.width - side))
        y = int(rng.integers(0, photo.height - side))
        # Area resize to 8x8: Pillow's box filter averages each cell.
        small = photo.crop((x, y, x + side, y + side)).resize((8, 8), Image.Resampling.BOX)
        v = np.asarray(small, dtype=np.float64) / 255.0 * 16.0
        if i % 4 >= 2:
            v = 16.0 - v
        out.append(di.quantize(v))
    return out


def main() -> None:
    pixels = crops(np.random.default_rng(SEED), COUNT)
    folder = os.path.join(ROOT, "data/traffic/photos")
    names = di.write_folder(folder, "photo", pixels, [None] * len(pixels))
    print(f"wrote {len(names)} photo crops to {folder}")


if __name__ == "__main__":
    main()
