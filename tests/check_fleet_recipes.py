"""Run the README's fleet recipes (the blocks after `<!-- recipe: NAME -->`) over a shipped log
and compare their results with what the replicas answered. Used by tests/fleet.rs; exits 1 on
any mismatch.

usage: check_fleet_recipes.py README LOG_URL MONITOR_JSON REFERENCE EXPECTED_JSON [LOG_DIR]

LOG_URL: the bucket or folder the recipes open (replaces the `LOG_URL = ...` line); MONITOR_JSON:
a saved /v1/monitor snapshot of one replica (the chi-square recipe reads it as a file:// URL);
REFERENCE: that replica's reference profile; EXPECTED_JSON: {"class_counts": {"<model>/<label>":
n}, "versions": {"<model>/<version>": [confidences as answered]}}; LOG_DIR: a local log folder
for the DuckDB command-line recipe (its path replaces the one in the block).
Prints one JSON line with what it found.
"""

import contextlib
import io
import json
import math
import pathlib
import re
import sys

RECIPE = re.compile(r"<!-- recipe: ([a-z0-9-]+) -->\s*```(\w+)\n(.*?)```", re.S)


def fail(message: str) -> None:
    print(f"check_fleet_recipes: {message}", file=sys.stderr)
    sys.exit(1)


def close(a: float, b: float, rel: float = 1e-6) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)


def set_line(code: str, name: str, value: str) -> str:
    out, n = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", code, flags=re.M)
    if n != 1:
        fail(f"the recipe has no single `{name} = ...` line")
    return out


def main() -> None:
    readme, log_url, monitor, reference, expected_path = sys.argv[1:6]
    log_dir = sys.argv[6] if len(sys.argv) > 6 else None
    expected = json.load(open(expected_path))
    recipes = {name: (lang, code) for name, lang, code in RECIPE.findall(open(readme).read())}
    want = {"open", "duckdb-folder", "class-mix", "confidence-by-version", "pyarrow", "chi-square"}
    if set(recipes) != want:
        fail(f"README recipes {sorted(recipes)}, expected {sorted(want)}")
    ns: dict = {}
    exec(set_line(recipes["open"][1], "LOG_URL", log_url), ns)
    con = ns["con"]

    # Class mix: the counts the replicas answered, shares summing to 1 per model.
    mix = con.sql(recipes["class-mix"][1]).fetchall()
    got = {f"{m}/{label}": n for m, label, n, _ in mix}
    if got != expected["class_counts"]:
        fail(f"class mix {got} differs from the answers {expected['class_counts']}")
    for model in {m for m, *_ in mix}:
        total = sum(share for m, _, _, share in mix if m == model)
        if not close(total, 1.0):
            fail(f"{model}: shares sum to {total}")

    # Confidence by version: counts and means of the answered confidences.
    by_version = con.sql(recipes["confidence-by-version"][1]).fetchall()
    versions = {f"{m}/{v}": (n, mean, p10) for m, v, n, mean, p10, _ in by_version}
    if set(versions) != set(expected["versions"]):
        fail(f"versions {sorted(versions)} differ from {sorted(expected['versions'])}")
    for key, answered in expected["versions"].items():
        n, mean, p10 = versions[key]
        if n != len(answered) or not close(mean, sum(answered) / len(answered), 1e-6):
            fail(f"{key}: {n} rows, mean confidence {mean}; answered {len(answered)}, "
                 f"{sum(answered) / len(answered)}")
        if not min(answered) - 1e-6 <= p10 <= max(answered) + 1e-6:
            fail(f"{key}: p10 {p10} outside the answers")

    # pyarrow alone: the same numbers.
    exec(recipes["pyarrow"][1], ns)
    pa_mix = {
        f"{m}/{label}": n
        for m, label, n in zip(*(ns["class_mix"].column(c).to_pylist()
                                 for c in ["model", "predicted_label", "predicted_label_count"]))
    }
    if pa_mix != got:
        fail(f"pyarrow class mix {pa_mix} differs from DuckDB's {got}")
    for m, v, n, mean in zip(*(ns["by_version"].column(c).to_pylist()
                               for c in ["model", "model_version", "confidence_count", "confidence_mean"])):
        dn, dmean, _ = versions[f"{m}/{v}"]
        if n != dn or not close(mean, dmean, 1e-9):
            fail(f"pyarrow {m}/{v}: {n}, {mean}; DuckDB {dn}, {dmean}")

    # The chi-square recomputed against the sidecar's.
    code = set_line(recipes["chi-square"][1], "MONITOR", pathlib.Path(monitor).resolve().as_uri())
    code = set_line(code, "REFERENCE", reference)
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        exec(code, ns)
    sidecar, statistic, p_value = ns["sidecar"], float(ns["statistic"]), float(ns["p_value"])
    if not close(statistic, sidecar["statistic"]) or not close(p_value, sidecar["p_value"]):
        fail(f"chi-square {statistic}, p {p_value}; the sidecar says {sidecar}")
    result = {
        "class_mix_rows": len(mix),
        "versions": {k: {"n": n, "mean_confidence": mean} for k, (n, mean, _) in versions.items()},
        "chi_square": {"recomputed": statistic, "sidecar": sidecar["statistic"],
                       "p_value": p_value, "sidecar_p_value": sidecar["p_value"],
                       "window": int(ns["window"].num_rows)},
        "printed": printed.getvalue().strip(),
    }

    # The DuckDB command-line recipe over a folder gives the same class mix.
    if log_dir is not None:
        import duckdb

        view = recipes["duckdb-folder"][1].replace(
            "/var/lib/shiftwatch/log", str(pathlib.Path(log_dir).resolve())
        )
        cli = duckdb.connect()
        cli.sql(view)
        folder_mix = {f"{m}/{label}": n for m, label, n, _ in cli.sql(recipes["class-mix"][1]).fetchall()}
        if folder_mix != got:
            fail(f"the folder's class mix {folder_mix} differs from {got}")
        result["folder_view"] = True
    print(json.dumps(result))


if __name__ == "__main__":
    main()
