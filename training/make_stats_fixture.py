"""Fixture for the Rust input statistics (src/image_stats.rs), computed with plain numpy.

Writes tests/data/image_stats/*.png (generated, seeded) and tests/data/image_stats.json with the
expected brightness, contrast, sharpness, saturation and dHash of each image, and of a few bundled
digit PNGs. The definitions are written out here independently of the Rust code:

- gray: ITU-R 601 luma in Pillow's fixed point, (19595 R + 38470 G + 7471 B + 32768) >> 16
- brightness = mean(gray) / 255; contrast = std(gray) / 255 (population)
- sharpness = var of the 4-neighbour Laplacian of gray over interior pixels
- saturation = mean over pixels of (max - min) / max of RGB (0 where max = 0)
- dhash: gray area-resized to 9 wide x 8 high, rounded; bit = right > left, row-major, MSB first

usage: python training/make_stats_fixture.py   (from the repository root)
"""

import json
import os

import numpy as np
from PIL import Image

OUT_DIR = "tests/data/image_stats"
OUT_JSON = "tests/data/image_stats.json"


def gray_of(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., c].astype(np.int64) for c in range(3))
    return ((19595 * r + 38470 * g + 7471 * b + 32768) >> 16).astype(np.float64)


def area_weights(src: int, dst: int) -> np.ndarray:
    """dst x src matrix: each row holds the overlap of output pixel o with each source pixel."""
    w = np.zeros((dst, src))
    ratio = src / dst
    for o in range(dst):
        lo, hi = o * ratio, min((o + 1) * ratio, src)
        for i in range(int(np.floor(lo)), min(int(np.ceil(hi)), src)):
            w[o, i] = max(0.0, min(hi, i + 1) - max(lo, i)) / (hi - lo)
    return w


def stats(path: str) -> dict:
    img = Image.open(path)
    is_gray = img.mode == "L"
    rgb = np.asarray(img.convert("RGB"))
    gray = np.asarray(img, dtype=np.float64) if is_gray else gray_of(rgb)
    h, w = gray.shape
    lap = (
        gray[:-2, 1:-1] + gray[2:, 1:-1] + gray[1:-1, :-2] + gray[1:-1, 2:] - 4 * gray[1:-1, 1:-1]
    )
    mx = rgb.max(axis=2).astype(np.float64)
    mn = rgb.min(axis=2).astype(np.float64)
    sat = np.where(mx > 0, (mx - mn) / np.where(mx > 0, mx, 1), 0.0)
    small = area_weights(h, 8) @ gray @ area_weights(w, 9).T
    small = np.round(small)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    dhash = 0
    for b in bits:
        dhash = (dhash << 1) | int(b)
    return {
        "file": path,
        "width": int(w),
        "height": int(h),
        "brightness": float(gray.mean() / 255),
        "contrast": float(gray.std() / 255),
        "sharpness": float(lap.var()) if h >= 3 and w >= 3 else 0.0,
        "saturation": float(sat.mean()),
        "dhash": str(dhash),
    }


def main() -> None:
    rng = np.random.default_rng(7)
    os.makedirs(OUT_DIR, exist_ok=True)
    made = []
    # Smooth colour gradient with noise (RGB), an odd size.
    y, x = np.mgrid[0:37, 0:53]
    grad = np.stack([x * 4.8, y * 6.9, (x + y) * 2.8], axis=-1) + rng.normal(0, 12, (37, 53, 3))
    made.append(("gradient-53x37.png", np.clip(grad, 0, 255).astype(np.uint8), "RGB"))
    # Random blocks (RGB), high contrast.
    blocks = rng.integers(0, 256, (6, 5, 3)).repeat(11, axis=0).repeat(13, axis=1).astype(np.uint8)
    made.append(("blocks-65x66.png", blocks, "RGB"))
    # Gray noise, small and wide.
    made.append(("noise-40x9.png", rng.integers(0, 256, (9, 40)).astype(np.uint8), "L"))
    # A dark, nearly flat photo-like patch.
    dark = np.clip(20 + rng.normal(0, 3, (120, 90, 3)), 0, 255).astype(np.uint8)
    made.append(("dark-90x120.png", dark, "RGB"))
    entries = []
    for name, arr, _mode in made:
        path = os.path.join(OUT_DIR, name)
        Image.fromarray(arr).save(path, optimize=False)
        entries.append(stats(path))
    for bundled in [
        "data/traffic/normal/normal-0000.png",
        "data/traffic/blur/blur-0000.png",
        "data/traffic/ood/ood-0000.png",
    ]:
        entries.append(stats(bundled))
    with open(OUT_JSON, "w") as f:
        json.dump({"generator": "training/make_stats_fixture.py", "images": entries}, f, indent=1)
        f.write("\n")
    print(f"wrote {OUT_JSON} ({len(entries)} images)")


if __name__ == "__main__":
    main()
