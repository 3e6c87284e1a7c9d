"""Checks on the committed training artifacts: the ONNX models, their metadata, the images and fixtures.

Run from the repository root: `.venv/bin/python -m pytest training/tests -q`.
"""

from __future__ import annotations

import glob
import io
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "training"))

import digit_images as di  # noqa: E402
import digits_mlp as dm  # noqa: E402

BUNDLED = ["models/digits.onnx", "models/digits-overconfident.onnx"]
RGB_DIR = "tests/data/rgb-cnn"
FOLDERS = ["data/reference"] + [f"data/traffic/{t}" for t in
                                ("normal", "blur", "brightness", "rotation", "class_prior", "ood")]
LABELS = [str(c) for c in range(10)]


def path(rel):
    return os.path.join(ROOT, rel)


def session(rel):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(path(rel), sess_options=so, providers=["CPUExecutionProvider"])


def metadata(rel) -> dict:
    model = onnx.load(path(rel))
    props = {p.key: p.value for p in model.metadata_props}
    return json.loads(props["shiftwatch"])


# ------------------------------------------------------------------------------------------- models


@pytest.mark.parametrize("rel", BUNDLED)
@pytest.mark.parametrize("batch", [1, 7])
def test_bundled_model_runs_with_dynamic_batch(rel, batch):
    sess = session(rel)
    (inp,) = sess.get_inputs()
    assert inp.name == "image" and inp.type == "tensor(float)"
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [1, 8, 8]
    assert [o.name for o in sess.get_outputs()] == ["probabilities", "embedding"]
    x = np.random.default_rng(batch).uniform(0, 1, size=(batch, 1, 8, 8)).astype(np.float32)
    probs, emb = sess.run(["probabilities", "embedding"], {"image": x})
    assert probs.shape == (batch, 10) and probs.dtype == np.float32
    assert emb.ndim == 2 and emb.shape[0] == batch and emb.shape[1] >= 16
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs >= 0).all()


@pytest.mark.parametrize("rel", BUNDLED)
def test_bundled_model_metadata(rel):
    model = onnx.load(path(rel))
    assert model.producer_name == "shiftwatch-training"
    assert model.doc_string
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert model.ir_version == 8
    meta = metadata(rel)
    assert list(meta) == ["format", "labels", "input", "outputs", "training"]
    assert meta["format"] == "shiftwatch.model/v1"
    assert meta["labels"] == LABELS
    assert meta["input"] == {
        "name": "image", "layout": "nchw", "color": "grayscale", "width": 8, "height": 8,
        "resize": "area", "scale": 1.0 / 240.0, "mean": [0.0], "std": [1.0],
    }
    assert meta["outputs"] == {"probabilities": "probabilities", "kind": "probabilities", "embedding": "embedding"}
    training = meta["training"]
    assert training["variant"] in ("supervised", "lee", "arazo", "arazo-ls")
    assert isinstance(training["labeled"], int) and isinstance(training["seed"], int)


def test_bundled_models_are_the_declared_contrast():
    default, over = metadata(BUNDLED[0])["training"], metadata(BUNDLED[1])["training"]
    assert default["role"] == "default" and default["variant"] in ("lee", "arazo", "arazo-ls")
    assert over["role"] == "overconfident" and over["variant"] == "lee"
    assert over["labeled"] < default["labeled"]
    # The contrast the monitor must see: the overconfident model's gap is clearly larger.
    gap = lambda t: t["evaluation"]["test_mean_confidence"] - t["evaluation"]["test_accuracy"]  # noqa: E731
    assert gap(over) > gap(default) + 0.1


@pytest.mark.parametrize("batch", [1, 7])
def test_rgb_cnn_runs_with_dynamic_batch(batch):
    rel = f"{RGB_DIR}/model.onnx"
    model = onnx.load(path(rel))
    assert "shiftwatch" not in {p.key for p in model.metadata_props}
    sess = session(rel)
    (inp,) = sess.get_inputs()
    assert inp.name == "input" and isinstance(inp.shape[0], str) and inp.shape[1:] == [64, 64, 3]
    assert [o.name for o in sess.get_outputs()] == ["logits"]
    x = np.random.default_rng(batch).normal(size=(batch, 64, 64, 3)).astype(np.float32)
    (logits,) = sess.run(["logits"], {"input": x})
    assert logits.shape == (batch, 5)
    assert not np.allclose(logits.sum(axis=1), 1.0)  # raw logits, not probabilities


def test_rgb_cnn_expected_reproduces():
    expected = json.load(open(path(f"{RGB_DIR}/expected.json")))
    spec = expected["input"]
    sess = session(expected["model"])
    assert len(expected["images"]) == 3
    assert {os.path.splitext(i["file"])[1] for i in expected["images"]} == {".png", ".jpg"}
    for item in expected["images"]:
        with Image.open(path(item["file"])) as im:
            assert im.size == (item["width"], item["height"])
            rgb = np.asarray(im.convert("RGB"), dtype=np.float64)
        f = rgb.shape[0] // 64
        if f > 1:
            rgb = rgb.reshape(64, f, 64, f, 3).mean(axis=(1, 3))
        x = ((rgb * spec["scale"] - np.array(spec["mean"])) / np.array(spec["std"])).astype(np.float32)[None]
        (logits,) = sess.run(["logits"], {"input": x})
        z = logits[0].astype(np.float64)
        probs = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        np.testing.assert_allclose(probs, item["probabilities"], atol=item["atol"], err_msg=item["file"])
        np.testing.assert_allclose(probs.sum(), 1.0, atol=1e-9)


# ------------------------------------------------------------------------------------------- images


def pngs(folder):
    return sorted(os.path.basename(p) for p in glob.glob(path(f"{folder}/*.png")))


@pytest.mark.parametrize("folder", FOLDERS)
def test_labels_csv_matches_folder(folder):
    rows = di.read_labels(path(folder))
    files = [f for f, _ in rows]
    assert files == pngs(folder) and len(files) > 0
    labels = [label for _, label in rows]
    if folder.endswith("/ood"):
        assert set(labels) == {""}
    else:
        assert set(labels) <= set(LABELS)
    if folder.endswith("/class_prior"):
        assert 1 < len(set(labels)) <= 4
    if folder in ("data/reference", "data/traffic/normal"):
        assert set(labels) == set(LABELS)


@pytest.mark.parametrize("folder", FOLDERS)
def test_png_round_trip_is_exact(folder):
    for name in pngs(folder):
        with Image.open(path(f"{folder}/{name}")) as im:
            assert im.mode == "L" and im.size == (32, 32)
            a = np.asarray(im).astype(np.int64)
        blocks = a.reshape(8, 4, 8, 4)
        # Every 4x4 block is one grey value, so box-averaging (area resize) recovers the 8x8 image exactly.
        assert (blocks == blocks[:, :1, :, :1]).all(), name
        assert a.max() <= 240
        assert np.array_equal(di.decode_png_8x8(path(f"{folder}/{name}")), blocks[:, 0, :, 0].astype(float))


def test_reference_and_normal_traffic_are_the_dataset_splits():
    splits = dm.load_splits()
    for folder, v, y in (("data/reference", splits.v_val, splits.y_val),
                         ("data/traffic/normal", splits.v_test, splits.y_test)):
        rows = di.read_labels(path(folder))
        assert len(rows) == len(y)
        for (name, label), vi, yi in zip(rows, v, y):
            assert label == str(yi)
            px = di.decode_png_8x8(path(f"{folder}/{name}"))
            assert np.array_equal(px, 15.0 * vi.reshape(8, 8)), name
    assert len(di.read_labels(path("data/traffic/normal"))) == 540


# ------------------------------------------------------------------------------------------ fixture


def test_fixture_covers_every_traffic_image_and_reproduces():
    fixture = json.load(open(path("tests/data/digits_fixture.json")))
    assert list(fixture) == ["model", "images"]
    assert fixture["model"] == "models/digits.onnx"
    scale = metadata(fixture["model"])["input"]["scale"]
    files = [im["file"] for im in fixture["images"]]
    on_disk = sorted(os.path.relpath(p, ROOT) for p in glob.glob(path("data/traffic/*/*.png")))
    assert sorted(files) == on_disk
    sess = session(fixture["model"])
    worst = 0.0
    for item in fixture["images"]:
        assert list(item) == ["file", "probabilities", "embedding"]
        x = di.model_input(di.decode_png_8x8(path(item["file"])), scale)
        probs, emb = sess.run(["probabilities", "embedding"], {"image": x})
        worst = max(worst, float(np.abs(probs[0] - item["probabilities"]).max()),
                    float(np.abs(emb[0] - item["embedding"]).max()))
    # Same machine: identical; another CPU may round differently in the last bits.
    assert worst <= 1e-5, worst


def test_png_file_is_decodable_from_bytes():
    # The Rust side decodes bytes from an HTTP body; the committed files must be plain 8-bit PNGs.
    name = pngs("data/traffic/normal")[0]
    data = open(path(f"data/traffic/normal/{name}"), "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG" and im.mode == "L"
