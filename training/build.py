"""Regenerate every training artifact of shiftwatch and print the results table.

    .venv/bin/python training/build.py            # what `make model` runs (from the repository root)
    .venv/bin/python training/build.py --quick    # 2 seeds x 2 sizes; same bundled files, README untouched

Trains the three variants (plus Arazo with label smoothing) at five labeled-set sizes and five seeds,
writes the results into training/README.md (between marker comments), exports the two bundled models
to models/, writes the reference set and the sample traffic as PNGs under data/, the onnxruntime
fixture tests/data/digits_fixture.json, and the second test model under tests/data/rgb-cnn/.
"""

from __future__ import annotations

import os

# One thread everywhere, before numpy is imported: the results must not depend on thread scheduling.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import digit_images as di  # noqa: E402
import digits_mlp as dm  # noqa: E402
import export_onnx as ex  # noqa: E402
import make_photo_traffic  # noqa: E402
import make_test_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "training", "README.md")

SIZES = (10, 20, 50, 100, 200)
SEEDS = (0, 1, 2, 3, 4)
# Table rows: name -> training configuration. "arazo-ls" is variant 3 with its label-smoothing option on.
CONFIGS = {
    "supervised": dm.default_config("supervised"),
    "lee": dm.default_config("lee"),
    "arazo": dm.default_config("arazo"),
    "arazo-ls": dm.default_config("arazo", label_smoothing=0.1),
}
VARIANT_TITLES = {
    "supervised": "1 supervised",
    "lee": "2 Lee pseudo-label",
    "arazo": "3 Arazo soft PL + mixup",
    "arazo-ls": "3 + label smoothing 0.1",
}
# The bundled models (row name, labeled-set size, seed). Chosen as README.md explains; the build
# checks the claims made about them and reports in README.md whether they hold.
DEFAULT_MODEL = ("arazo", 100, 0)
OVERCONFIDENT_MODEL = ("lee", 10, 0)

TRAFFIC = ("normal", "blur", "brightness", "rotation", "class_prior", "ood")
SHIFT_PER_CLASS = 20  # blur, brightness, rotation: 20 test images of each class = 200 images
OOD_PER_KIND = 40  # 5 kinds = 200 images

_SPLITS = None


def splits() -> dm.Splits:
    global _SPLITS
    if _SPLITS is None:
        _SPLITS = dm.load_splits()
    return _SPLITS


# ------------------------------------------------------------------------------------------ training


def run_one(job):
    name, n_labeled, seed, keep = job
    s = splits()
    lab, unl = dm.draw_labeled(s, n_labeled, seed)
    cfg = CONFIGS[name]
    t0 = time.perf_counter()
    params = dm.train(cfg, s.v_all[lab] / 16.0, s.y_all[lab], s.v_all[unl] / 16.0, seed)
    seconds = time.perf_counter() - t0
    p_test, _ = dm.predict(params, s.v_test / 16.0)
    p_val, _ = dm.predict(params, s.v_val / 16.0)
    result = dm.RunResult(name, n_labeled, seed, dm.evaluate(p_test, s.y_test), dm.evaluate(p_val, s.y_val),
                          {"seconds": seconds, "n_unlabeled": int(len(unl))})
    return result, (params if keep else None)


def run_all(sizes, seeds, jobs_n):
    keep = {DEFAULT_MODEL, OVERCONFIDENT_MODEL}
    jobs = [(name, n, seed, (name, n, seed) in keep) for n in sizes for name in CONFIGS for seed in seeds]
    results, kept = [], {}
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(jobs_n) as pool:
        for i, (r, params) in enumerate(pool.imap(run_one, jobs, chunksize=1)):
            results.append(r)
            if params is not None:
                kept[(r.variant, r.n_labeled, r.seed)] = params
            print(f"[{i + 1:3d}/{len(jobs)}] {r.variant:10s} labeled={r.n_labeled:<4d} seed={r.seed} "
                  f"test acc {r.test['accuracy']:.3f} conf {r.test['confidence']:.3f} "
                  f"({r.extra['seconds']:.1f}s, {time.perf_counter() - t0:.0f}s elapsed)", file=sys.stderr)
    return results, kept


def aggregate(results):
    """(n_labeled, name) -> {metric: (mean, std)} over seeds, on test and validation."""
    groups = {}
    for r in results:
        groups.setdefault((r.n_labeled, r.variant), []).append(r)
    out = {}
    for key, rs in groups.items():
        row = {}
        for split in ("test", "val"):
            for m in ("accuracy", "ece", "confidence", "gap"):
                vals = np.array([getattr(r, split)[m] for r in rs])
                row[f"{split}_{m}"] = (float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0)
        row["seeds"] = len(rs)
        out[key] = row
    return out


def fmt(ms, digits=3):
    m, s = ms
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def results_table(agg, sizes, seeds) -> str:
    lines = [
        f"Test split (540 images). Mean ± standard deviation (ddof=1) over {len(seeds)} seeds "
        f"({', '.join(map(str, seeds))}); each seed draws its own labeled set and initialisation. "
        "ECE: 15 equal-width bins (lo, hi] on the top-label confidence. Gap = mean confidence − accuracy "
        "(> 0: overconfident). The last column is on the validation set (300 images), the only split used "
        "to choose anything.",
        "",
        "| labeled | variant | test accuracy | ECE | mean confidence | gap | val accuracy |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n in sizes:
        for name in CONFIGS:
            row = agg[(n, name)]
            lines.append(
                f"| {n} | {VARIANT_TITLES[name]} | {fmt(row['test_accuracy'])} | {fmt(row['test_ece'])} | "
                f"{fmt(row['test_confidence'])} | {row['test_gap'][0]:+.3f} | {fmt(row['val_accuracy'])} |"
            )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ exports


def training_metadata(role, name, n_labeled, seed, n_unlabeled, evaluation):
    cfg = CONFIGS[name]
    descriptions = {
        "supervised": "supervised only, on the labeled set",
        "lee": "pseudo-labeling after Lee (2013): cross-entropy on labeled data + alpha(t) x cross-entropy "
        "on unlabeled data against hard pseudo-labels recomputed at every update; no mitigations",
        "arazo": "pseudo-labeling after Arazo et al. (2020): soft pseudo-labels refreshed every epoch, mixup, "
        "a minimum of labeled samples in every mini-batch, class-prior and entropy regularisers",
    }
    return {
        "variant": name,
        "labeled": n_labeled,
        "seed": seed,
        "role": role,
        "description": descriptions[cfg.variant],
        "dataset": "scikit-learn load_digits (8x8, intensities 0..16); test split = train_test_split(test_size=0.3, "
        "random_state=0, stratify=y), never used for training or selection",
        "splits": {"test": 540, "validation": dm.VALIDATION_SIZE, "labeled": n_labeled, "unlabeled": n_unlabeled},
        "architecture": f"mlp 64-{dm.HIDDEN}-{dm.EMBEDDING}-10, relu; embedding = second hidden layer (after relu)",
        "hyperparameters": cfg.describe(),
        "evaluation": evaluation,
        "generator": "training/build.py",
    }


def export_models(kept, agg):
    s = splits()
    x_test = (s.v_test / 16.0).reshape(-1, 1, 8, 8)
    out = {}
    for role, key, path in (("default", DEFAULT_MODEL, "models/digits.onnx"),
                            ("overconfident", OVERCONFIDENT_MODEL, "models/digits-overconfident.onnx")):
        name, n, seed = key
        params = kept[key]
        p32 = ex.params_float32(params)
        probs, _ = ex.numpy_forward32(p32, x_test)
        ev_test = dm.evaluate(probs.astype(np.float64), s.y_test)
        pv, _ = ex.numpy_forward32(p32, (s.v_val / 16.0).reshape(-1, 1, 8, 8))
        ev_val = dm.evaluate(pv.astype(np.float64), s.y_val)
        evaluation = {
            "test_accuracy": round(ev_test["accuracy"], 4),
            "test_ece": round(ev_test["ece"], 4),
            "test_mean_confidence": round(ev_test["confidence"], 4),
            "validation_accuracy": round(ev_val["accuracy"], 4),
        }
        _, unl = dm.draw_labeled(s, n, seed)
        meta = ex.shiftwatch_metadata(training_metadata(role, name, n, seed, int(len(unl)), evaluation))
        doc = (
            f"shiftwatch bundled {role} model: 8x8 handwritten digits, {VARIANT_TITLES[name]} with {n} labeled "
            f"images (seed {seed}). Input `image` float32 [N,1,8,8] = grey value / 240 (digit intensity / 16); "
            f"outputs `probabilities` [N,10] and `embedding` [N,{dm.EMBEDDING}]. Made by training/build.py."
        )
        os.makedirs(os.path.join(ROOT, "models"), exist_ok=True)
        worst = ex.export(os.path.join(ROOT, path), params, meta, doc, x_test)
        out[role] = {"path": path, "key": key, "test": ev_test, "val": ev_val, "max_abs_diff": worst,
                     "metadata": meta, "params": params}
        print(f"exported {path}: onnxruntime vs numpy max |diff| {worst:.2e}", file=sys.stderr)
    return out


# ------------------------------------------------------------------------------------------- images


def build_images():
    """Write data/reference and data/traffic/*; return {folder: [(file, label or None, pixels8)]}."""
    s = splits()
    written = {}

    def write(rel, prefix, vs, labels):
        pixels = [di.quantize(v.reshape(8, 8)) for v in vs]
        names = di.write_folder(os.path.join(ROOT, rel), prefix, pixels, labels)
        written[rel] = list(zip(names, labels, pixels))

    write("data/reference", "ref", list(s.v_val), [int(c) for c in s.y_val])
    write("data/traffic/normal", "normal", list(s.v_test), [int(c) for c in s.y_test])

    # blur, brightness/contrast, rotation: the same 20 test images per class for each shift.
    rng = np.random.default_rng(2013)
    pick = np.sort(np.concatenate([
        rng.choice(np.flatnonzero(s.y_test == c), size=SHIFT_PER_CLASS, replace=False) for c in range(10)
    ]))
    base = [s.v_test[i].reshape(8, 8) for i in pick]
    labels = [int(s.y_test[i]) for i in pick]
    for folder, fn, seed in (("blur", di.blur, 1), ("brightness", di.brightness_contrast, 2),
                             ("rotation", di.rotate, 3)):
        r = np.random.default_rng([2020, seed])
        write(f"data/traffic/{folder}", folder, [fn(v, r) for v in base], labels)

    # class-prior shift: every test image of a few classes only.
    keep = np.flatnonzero(np.isin(s.y_test, di.CLASS_PRIOR_CLASSES))
    write("data/traffic/class_prior", "prior", [s.v_test[i] for i in keep], [int(s.y_test[i]) for i in keep])

    ood = di.ood_images(np.random.default_rng(404), OOD_PER_KIND)
    write("data/traffic/ood", "ood", [v for _, v in ood], [None] * len(ood))
    return written


def build_fixture(written, model_path):
    """tests/data/digits_fixture.json: onnxruntime outputs for every traffic image, from the PNG on disk."""
    sess = ex.session(os.path.join(ROOT, model_path))
    entries = []
    for folder in TRAFFIC:
        rel = f"data/traffic/{folder}"
        for name, _, pixels in written[rel]:
            decoded = di.decode_png_8x8(os.path.join(ROOT, rel, name))
            assert np.array_equal(decoded, pixels.astype(np.float64)), f"{rel}/{name}: PNG does not decode exactly"
            x = di.model_input(decoded, ex.PIXEL_SCALE)
            probs, emb = sess.run(["probabilities", "embedding"], {"image": x})
            entries.append({"file": f"{rel}/{name}", "probabilities": [float(v) for v in probs[0]],
                            "embedding": [float(v) for v in emb[0]]})
    path = os.path.join(ROOT, "tests", "data", "digits_fixture.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write('{"model": ' + json.dumps(model_path) + ', "images": [\n')
        f.write(",\n".join(json.dumps(e) for e in entries))
        f.write("\n]}\n")
    return len(entries)


def traffic_report(written, models) -> str:
    """Accuracy and mean confidence of both bundled models on every bundled folder (onnxruntime)."""
    lines = [
        "| folder | images | default: accuracy | default: mean confidence | overconfident: accuracy | "
        "overconfident: mean confidence |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    sessions = {role: ex.session(os.path.join(ROOT, m["path"])) for role, m in models.items()}
    for rel in ["data/reference"] + [f"data/traffic/{t}" for t in TRAFFIC]:
        items = written[rel]
        x = np.concatenate([di.model_input(px, ex.PIXEL_SCALE) for _, _, px in items])
        cells = [f"`{rel}/`", str(len(items))]
        for role in ("default", "overconfident"):
            (probs,) = sessions[role].run(["probabilities"], {"image": x})
            conf = float(probs.max(1).mean())
            if items[0][1] is None:
                acc = "—"
            else:
                y = np.array([lab for _, lab, _ in items])
                acc = f"{float((probs.argmax(1) == y).mean()):.3f}"
            cells += [acc, f"{conf:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- checks


def write_results_csv(results, path):
    """Every run, every metric (no timings, so that the file is reproducible)."""
    with open(path, "w") as f:
        f.write("variant,labeled,seed,unlabeled," + ",".join(
            f"{split}_{m}" for split in ("test", "val") for m in ("accuracy", "ece", "confidence")) + "\n")
        for r in sorted(results, key=lambda r: (r.n_labeled, list(CONFIGS).index(r.variant), r.seed)):
            vals = [getattr(r, split)[m] for split in ("test", "val") for m in ("accuracy", "ece", "confidence")]
            f.write(f"{r.variant},{r.n_labeled},{r.seed},{r.extra['n_unlabeled']}," +
                    ",".join(f"{v:.6f}" for v in vals) + "\n")


def claims(agg, models, results) -> tuple[str, bool]:
    """The two claims the issue asks for, with the numbers; returns (markdown, all hold)."""
    by_key = {(r.variant, r.n_labeled, r.seed): r for r in results}
    name, n, _ = DEFAULT_MODEL
    d_row, sup = agg[(n, name)], agg[(n, "supervised")]
    o_name, o_n, _ = OVERCONFIDENT_MODEL
    o_row = agg[(o_n, o_name)]
    d, o = models["default"], models["overconfident"]
    c1 = d_row["test_accuracy"][0] > sup["test_accuracy"][0]
    c2 = o["test"]["gap"] > d["test"]["gap"]
    c2m = o_row["test_gap"][0] > d_row["test_gap"][0]
    verdict = lambda ok: "holds" if ok else "**DOES NOT HOLD**"  # noqa: E731
    lines = [
        f"- Default model ({VARIANT_TITLES[name]}, {n} labeled) beats the supervised baseline at {n} labeled, "
        f"mean test accuracy over seeds: {d_row['test_accuracy'][0]:.3f} vs {sup['test_accuracy'][0]:.3f} "
        f"(validation: {d_row['val_accuracy'][0]:.3f} vs {sup['val_accuracy'][0]:.3f}) — {verdict(c1)}. "
        f"The bundled seed-{DEFAULT_MODEL[2]} model itself (float32, as exported): test accuracy "
        f"{d['test']['accuracy']:.3f}, mean confidence {d['test']['confidence']:.3f}, ECE {d['test']['ece']:.3f}; "
        f"the supervised model on the same labeled set: test accuracy "
        f"{by_key[('supervised', n, DEFAULT_MODEL[2])].test['accuracy']:.3f}.",
        f"- The overconfident model ({VARIANT_TITLES[o_name]}, {o_n} labeled, seed {OVERCONFIDENT_MODEL[2]}) has the "
        f"larger gap between mean confidence and accuracy on the test set: {o['test']['confidence']:.3f} − "
        f"{o['test']['accuracy']:.3f} = {o['test']['gap']:+.3f} vs the default's {d['test']['confidence']:.3f} − "
        f"{d['test']['accuracy']:.3f} = {d['test']['gap']:+.3f} — {verdict(c2)}. Over all seeds of those rows: "
        f"{o_row['test_gap'][0]:+.3f} vs {d_row['test_gap'][0]:+.3f} — {verdict(c2m)}. The supervised model on the "
        f"overconfident model's labeled set: test accuracy "
        f"{by_key[('supervised', o_n, OVERCONFIDENT_MODEL[2])].test['accuracy']:.3f}, mean confidence "
        f"{by_key[('supervised', o_n, OVERCONFIDENT_MODEL[2])].test['confidence']:.3f}.",
        f"- Both exports agree with the numpy forward pass to {max(d['max_abs_diff'], o['max_abs_diff']):.1e} "
        "(the check fails above 1e-5).",
    ]
    return "\n".join(lines), (c1 and c2 and c2m)


def replace_block(text, tag, body):
    begin, end = f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->"
    block = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        return head + block + tail
    return text.rstrip("\n") + f"\n\n{block}\n"


def update_readme(blocks: dict):
    text = open(README).read() if os.path.exists(README) else "# shiftwatch training\n"
    for tag, body in blocks.items():
        text = replace_block(text, tag, body)
    with open(README, "w") as f:
        f.write(text)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 seeds, labeled sizes 10 and 100 (development only)")
    ap.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1),
                    help="worker processes (results do not depend on it)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    sizes, seeds = ((10, 100), (0, 1)) if args.quick else (SIZES, SEEDS)

    results, kept = run_all(sizes, seeds, max(1, args.jobs))
    agg = aggregate(results)
    table = results_table(agg, sizes, seeds)
    t_train = time.perf_counter() - t0

    models = export_models(kept, agg)
    written = build_images()
    n_fixture = build_fixture(written, models["default"]["path"])
    # The natural-photo crops (data/traffic/photos) and their fixture entries.
    n_fixture += make_photo_traffic.main()
    rgb_files = make_test_model.main(ROOT)
    claim_text, ok = claims(agg, models, results)
    if not args.quick:
        write_results_csv(results, os.path.join(ROOT, "training", "results.csv"))
    traffic = traffic_report(written, models)
    meta_json = json.dumps(models["default"]["metadata"], indent=2)
    if args.quick:
        print("--quick: training/README.md and training/results.csv left as they were", file=sys.stderr)
    else:
        update_readme({
            "results": table,
            "claims": claim_text,
            "traffic": traffic,
            "metadata": "```json\n" + meta_json + "\n```",
        })

    print()
    print(table)
    print()
    print(claim_text)
    print()
    print(traffic)
    print()
    for rel in [m["path"] for m in models.values()] + ["tests/data/digits_fixture.json"] + rgb_files:
        print(f"{sha256(os.path.join(ROOT, rel))[:16]}  {rel}")
    print(f"fixture: {n_fixture} images; training {t_train:.0f}s, total {time.perf_counter() - t0:.0f}s "
          f"({args.jobs} processes)")
    if not ok:
        print("WARNING: a claim about the bundled models does not hold; training/README.md says so", file=sys.stderr)


if __name__ == "__main__":
    main()
