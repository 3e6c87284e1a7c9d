"""tests/data/descriptor_fixture.json: the out-of-distribution image descriptor of a few images,
computed with plain numpy and Pillow, for src/image_stats.rs (`descriptor`).

The definition, written out here independently of the Rust code:

- gray: Pillow's convert("L") (ITU-R 601 luma in its fixed point); an image whose longer side is
  over 256 is first area-downscaled so that its longer side is 256 (each side rounded) and its
  values rounded to integers (half up), as the input statistics do
- thumbnail: gray area-resized (each output pixel the overlap-weighted mean of the source pixels)
  to 8 x 8, divided by 255
- descriptor: the thumbnail minus its mean, divided by its Euclidean norm (by 1e-3 when the norm
  is smaller), row-major

usage: .venv/bin/python tests/data/make_descriptor_fixture.py   (from the repository root)
"""

import json
import os

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "descriptor_fixture.json")
MADE = os.path.join(HERE, "descriptor")
SIDE, MAX_SIDE, MIN_NORM = 8, 256, 1e-3


def area_weights(src: int, dst: int) -> np.ndarray:
    """dst x src: row o holds the overlap of output pixel o with each source pixel, over its width."""
    w = np.zeros((dst, src))
    ratio = src / dst
    for o in range(dst):
        lo, hi = o * ratio, min((o + 1) * ratio, src)
        for i in range(int(np.floor(lo)), min(int(np.ceil(hi)), src)):
            w[o, i] = max(0.0, min(hi, i + 1) - max(lo, i)) / (hi - lo)
    return w


def descriptor(path: str) -> list:
    img = Image.open(path)
    if max(img.size) > MAX_SIDE:
        # The bounded copy: area-downscaled per channel, rounded half up to 8 bits.
        scale = MAX_SIDE / max(img.size)
        tw, th = (max(1, int(np.floor(s * scale + 0.5))) for s in img.size)
        mode = "L" if img.mode == "L" else "RGB"
        a = np.asarray(img.convert(mode), dtype=np.float64)
        wy, wx = area_weights(a.shape[0], th), area_weights(a.shape[1], tw)
        small = wy @ a @ wx.T if a.ndim == 2 else np.einsum("yh,hwc,xw->yxc", wy, a, wx)
        img = Image.fromarray(np.floor(small + 0.5).clip(0, 255).astype(np.uint8), mode)
    gray = np.asarray(img.convert("L"), dtype=np.float64)
    h, w = gray.shape
    thumb = area_weights(h, SIDE) @ gray @ area_weights(w, SIDE).T / 255.0
    centred = thumb - thumb.mean()
    return (centred / max(np.linalg.norm(centred), MIN_NORM)).flatten().tolist()


def main() -> None:
    os.makedirs(MADE, exist_ok=True)
    y, x = np.mgrid[0:400, 0:600]
    # Larger than 256 a side (the bounded copy), RGB, a smooth pattern that compresses well.
    wave = np.stack([x * 0.4, 128 + 100 * np.sin(y / 23.0), (x + y) * 0.25], axis=-1)
    made = {
        "wave-600x400.png": (np.clip(wave, 0, 255).astype(np.uint8), "RGB"),
        "flat-20x12.png": (np.full((12, 20), 97, dtype=np.uint8), "L"),
        "bar-13x11.png": (np.where((x[:11, :13] > 3) & (x[:11, :13] < 7), 220, 15).astype(np.uint8), "L"),
    }
    files = []
    for name, (arr, mode) in made.items():
        path = os.path.join(MADE, name)
        Image.fromarray(arr, mode).save(path, optimize=False)
        files.append(os.path.relpath(path, os.path.join(HERE, "..", "..")))
    files += [
        "tests/data/image_stats/gradient-53x37.png",
        "tests/data/image_stats/noise-40x9.png",
        "tests/data/image_stats/dark-90x120.png",
        "data/traffic/normal/normal-0000.png",
        "data/traffic/ood/ood-0130.png",
        "data/traffic/photos/photo-0000.png",
    ]
    entries = [{"file": f, "descriptor": descriptor(f)} for f in files]
    with open(OUT, "w") as f:
        json.dump({"generator": "tests/data/make_descriptor_fixture.py", "images": entries}, f, indent=1)
        f.write("\n")
    print(f"wrote {OUT} ({len(entries)} images)")


if __name__ == "__main__":
    main()
