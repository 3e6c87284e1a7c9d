"""data/traffic/photos/: out-of-distribution traffic of a kind nothing in shiftwatch was tuned on.

Random square crops of the two natural photographs scikit-learn ships
(sklearn.datasets.load_sample_images: china.jpg and flower.jpg, 427x640 RGB), each brought to the
digits model's input the way the bundled images are: grey (ITU-R 601 luma, as Pillow's "L"),
area-averaged to 8x8, scaled to the digit intensities 0..16 and written on the bundled PNG grid
(32x32, grey values 15 * v; training/digit_images.py). Half the crops are inverted (dark
background, bright strokes, as the digits are drawn), so both polarities are represented.

The relabel selection test (tests/candidates.rs) mixes these into normal traffic at 10% and
expects them to take at least three times that share of the top candidates, with no threshold
or score of the selection fitted on them. Their onnxruntime outputs go into
tests/data/digits_fixture.json beside the other traffic images' (replacing earlier photo
entries), which the Rust side reproduces. training/build.py runs this after writing the fixture.

usage: .venv/bin/python training/make_photo_traffic.py   (deterministic: seed 1313)
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_images

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import digit_images as di  # noqa: E402
import export_onnx as ex  # noqa: E402

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


def update_fixture(rel: str, names: list[str]) -> None:
    """Replaces `rel`'s entries in tests/data/digits_fixture.json with fresh onnxruntime outputs,
    in the form training/build.py writes (one entry per line)."""
    path = os.path.join(ROOT, "tests", "data", "digits_fixture.json")
    with open(path) as f:
        fixture = json.load(f)
    sess = ex.session(os.path.join(ROOT, fixture["model"]))
    entries = [e for e in fixture["images"] if not e["file"].startswith(rel + "/")]
    for name in names:
        x = di.model_input(di.decode_png_8x8(os.path.join(ROOT, rel, name)), ex.PIXEL_SCALE)
        probs, emb = sess.run(["probabilities", "embedding"], {"image": x})
        entries.append({"file": f"{rel}/{name}", "probabilities": [float(v) for v in probs[0]],
                        "embedding": [float(v) for v in emb[0]]})
    with open(path, "w") as f:
        f.write('{"model": ' + json.dumps(fixture["model"]) + ', "images": [\n')
        f.write(",\n".join(json.dumps(e) for e in entries))
        f.write("\n]}\n")


def main() -> int:
    """Writes the crops and their fixture entries; returns how many."""
    pixels = crops(np.random.default_rng(SEED), COUNT)
    rel = "data/traffic/photos"
    names = di.write_folder(os.path.join(ROOT, rel), "photo", pixels, [None] * len(pixels))
    update_fixture(rel, names)
    print(f"wrote {len(names)} photo crops to {rel} and their entries in tests/data/digits_fixture.json")
    return len(names)


if __name__ == "__main__":
    main()
