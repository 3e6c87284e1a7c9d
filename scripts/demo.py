"""`make demo`: start the sidecar on the bundled model, replay the bundled traffic, summarise.

Normal traffic (the held-out test split) goes first, then each shifted set. For every phase the
summary shows what the sidecar answered: accuracy against the bundled labels (the sidecar never
sees them), mean confidence, the gap between the two, entropy and latency. The sidecar is stopped
with SIGTERM at the end unless --keep is given.

usage: demo.py [--listen 127.0.0.1:8080] [--keep] [--binary target/release/shiftwatch]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHASES = [
    ("normal", "held-out test split, as in training"),
    ("blur", "gaussian blur"),
    ("brightness", "brightness / contrast change"),
    ("rotation", "rotated digits"),
    ("class_prior", "only a few classes"),
    ("ood", "not digits at all: noise, shapes"),
]


DEMO_DIR = ROOT / "runs/demo"
# The window holds about one phase, and is evaluated often, so each phase is judged on its own.
MONITOR = {
    "SHIFTWATCH__MONITOR__WINDOW": "150",
    "SHIFTWATCH__MONITOR__MIN_SAMPLES": "100",
    "SHIFTWATCH__MONITOR__EVALUATE_EVERY_SECONDS": "0.5",
    "SHIFTWATCH__MONITOR__CLEAR_AFTER": "1",
}


def start(binary: Path, listen: str, model: str) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ)
    env["SHIFTWATCH__SERVER__LISTEN"] = listen
    env.setdefault("SHIFTWATCH__LOGGING__LEVEL", "warn,ort=error")
    env["SHIFTWATCH__MODEL__PATH"] = model
    env["SHIFTWATCH__MONITOR__REFERENCE"] = model.removesuffix(".onnx") + ".reference.json"
    env["SHIFTWATCH__LOG__DIR"] = str(DEMO_DIR / "log")
    env["SHIFTWATCH__MONITOR__STATE_FILE"] = str(DEMO_DIR / "monitor-window.json")
    env["SHIFTWATCH__CANDIDATES__DIR"] = str(DEMO_DIR / "candidates")
    env["SHIFTWATCH__CANDIDATES__EXPORT_DIR"] = str(DEMO_DIR / "exports")
    env.update(MONITOR)
    proc = subprocess.Popen(
        [str(binary), "serve", "--config", str(ROOT / "config/shiftwatch.toml")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    addr = None
    deadline = time.monotonic() + 120
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"the sidecar exited early (code {proc.wait()}); see its log above")
        if line.startswith("shiftwatch listening on http://"):
            addr = line.split("http://", 1)[1].strip()
        if line.strip() == "shiftwatch ready":
            return proc, addr
    proc.terminate()
    raise SystemExit("the sidecar did not become ready within 120 s")


def classify(addr: str, png: bytes, request_id: str) -> tuple[int, dict, float]:
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    started = time.perf_counter()
    conn.request(
        "POST",
        "/v1/models/digits/classify?top_k=3",
        body=png,
        headers={"Content-Type": "image/png", "x-request-id": request_id},
    )
    resp = conn.getresponse()
    body = resp.read()
    elapsed = time.perf_counter() - started
    conn.close()
    return resp.status, json.loads(body), elapsed


def get_json(addr: str, path: str) -> dict:
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", path)
    body = json.loads(conn.getresponse().read())
    conn.close()
    return body


def fresh_evaluation(addr: str, after: str) -> dict:
    """Waits for an evaluation that started after `after` (and one more, so it covers it)."""
    seen = 0
    deadline = time.monotonic() + 30
    last = after
    while time.monotonic() < deadline:
        snap = get_json(addr, "/v1/monitor")
        if snap["evaluated_at"] > last:
            seen += 1
            last = snap["evaluated_at"]
            if seen >= 2:
                return snap
        time.sleep(0.1)
    raise SystemExit("the monitor did not evaluate within 30 s")


def replay(addr: str, folder: Path) -> dict:
    with open(folder / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    images = [(folder / r["file"]).read_bytes() for r in rows]
    ids = [f"{folder.name}-{i:04d}" for i in range(len(images))]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda a: classify(addr, *a), zip(images, ids)))
    ok = [(r, res) for r, res in zip(rows, results) if res[0] == 200]
    confidences = [res[1]["confidence"] for _, res in ok]
    entropies = [res[1]["entropy"] for _, res in ok]
    latencies = sorted(res[2] for res in results)
    labeled = [(r, res) for r, res in ok if r["label"] != ""]
    correct = sum(1 for r, res in labeled if res[1]["predictions"][0]["label"] == r["label"])
    classes: dict[str, int] = {}
    for _, res in ok:
        label = res[1]["predictions"][0]["label"]
        classes[label] = classes.get(label, 0) + 1
    return {
        "sent": len(results),
        "ok": len(ok),
        "accuracy": correct / len(labeled) if labeled else None,
        "confidence": statistics.fmean(confidences) if confidences else float("nan"),
        "entropy": statistics.fmean(entropies) if entropies else float("nan"),
        "confident_share": sum(c >= 0.9 for c in confidences) / max(len(confidences), 1),
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "top_classes": sorted(classes.items(), key=lambda kv: -kv[1])[:3],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:8080")
    parser.add_argument("--keep", action="store_true", help="leave the sidecar running at the end")
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    parser.add_argument("--binary", default=str(target / "release/shiftwatch"))
    parser.add_argument("--model", default="models/digits.onnx")
    args = parser.parse_args()

    binary = Path(args.binary)
    if not binary.exists():
        raise SystemExit(f"{binary} is missing: run `cargo build --release` (make demo does)")
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    proc, addr = start(binary, args.listen, args.model)
    try:
        host, port = addr.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", "/readyz")
        ready = json.loads(conn.getresponse().read())
        print(
            f"shiftwatch is serving model `{ready['model']}` version {ready['model_version']} "
            f"on {ready['execution_provider']} at http://{addr}\n"
        )
        header = (
            f"{'phase':<12} {'images':>6} {'ok':>5} {'accuracy':>8} {'mean conf':>9} "
            f"{'gap':>6} {'conf>=0.9':>9} {'entropy':>7} {'p50 ms':>7} {'p99 ms':>7}  top predicted"
        )
        print(header)
        print("-" * len(header))
        summary = {}
        monitor = {}
        for name, what in PHASES:
            folder = ROOT / "data/traffic" / name
            before = get_json(addr, "/v1/monitor")["evaluated_at"]
            s = replay(addr, folder)
            summary[name] = s
            monitor[name] = fresh_evaluation(addr, before)
            acc = "   n/a" if s["accuracy"] is None else f"{s['accuracy']:8.3f}"
            gap = "   n/a" if s["accuracy"] is None else f"{s['confidence'] - s['accuracy']:+6.3f}"
            top = ", ".join(f"{c}:{n}" for c, n in s["top_classes"])
            print(
                f"{name:<12} {s['sent']:>6} {s['ok']:>5} {acc:>8} {s['confidence']:9.3f} "
                f"{gap:>6} {s['confident_share']:9.1%} {s['entropy']:7.3f} "
                f"{s['p50_ms']:7.2f} {s['p99_ms']:7.2f}  {top}"
            )
        failed = sum(s["sent"] - s["ok"] for s in summary.values())
        print("\nWhat the monitor saw, without labels (window: the last 150 predictions):")
        print(
            f"{'phase':<12} {'served':>8} {'ATC est.':>8} {'DoC est.':>8} {'true acc':>8} {'conf-est':>8} "
            f"{'verdict':>8} {'shift':>8}  tests in alert"
        )
        for name, _ in PHASES:
            snap = monitor[name]
            est = snap["estimates"]
            # A family's verdict is on its `all` entry (or its only entry).
            alerts = sorted(
                {
                    t["test"]
                    for t in snap["tests"]
                    if t["status"] == "alert"
                    and (t["feature"] == "all" or t["test"] not in ("bbsd_ks", "input_ks"))
                }
            )
            acc = summary[name]["accuracy"]
            fmt = lambda v: "   n/a" if v is None else f"{v:8.3f}"
            gap = est.get("overconfidence_gap")
            kind = (est.get("class_mix") or {}).get("shift", "n/a")
            print(
                f"{name:<12} {fmt(est.get('accuracy'))} {fmt(est.get('atc'))} {fmt(est.get('doc'))} {fmt(acc)} "
                f"{'     n/a' if gap is None else f'{gap:+8.3f}'} {est.get('overconfidence') or 'n/a':>8} "
                f"{kind:>8}  {', '.join(alerts) or '-'}"
            )

        top = get_json(addr, "/v1/candidates?limit=100")["candidates"]
        by_phase: dict[str, int] = {}
        for c in top:
            phase = c["request_id"].rsplit("-", 1)[0]
            by_phase[phase] = by_phase.get(phase, 0) + 1
        sent = sum(s["sent"] for s in summary.values())
        print("\nRelabel candidates: the top 100, by the phase they came from (share of traffic in brackets):")
        print(
            "  "
            + ", ".join(
                f"{p} {by_phase.get(p, 0)} ({summary[p]['sent'] / sent:.0%})" for p, _ in PHASES
            )
        )
        host, port = addr.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        conn.request(
            "POST",
            "/v1/candidates/export",
            body=json.dumps({"limit": 100, "name": "demo"}),
            headers={"Content-Type": "application/json"},
        )
        exported = json.loads(conn.getresponse().read())
        print(f"  exported for Label Studio: {exported.get('path')} ({exported.get('count')} tasks)")

        print("\nWhat this shows (accuracy uses the bundled labels, which the sidecar never sees):")
        normal = summary["normal"]
        for name, what in PHASES[1:]:
            s = summary[name]
            if s["accuracy"] is None:
                print(
                    f"  {name} ({what}): mean confidence {s['confidence']:.2f}, "
                    f"{s['confident_share']:.0%} at 0.9 or more, on images that are not digits"
                )
                continue
            drop = normal["accuracy"] - s["accuracy"]
            gap = s["confidence"] - s["accuracy"]
            verdict = "overconfident" if gap > 0.02 else "not overconfident"
            print(
                f"  {name} ({what}): accuracy {drop:.2f} below normal traffic; "
                f"confidence - accuracy = {gap:+.2f} ({verdict})"
            )
        print(
            "  Labels arrive late or never in production: this is what has to be seen from "
            "confidence,\n  entropy and input statistics alone.\n"
        )
        print("Where to look next:")
        print(f"  curl -s http://{addr}/v1/monitor        # every test, estimates, calibration")
        print(f"  curl -s http://{addr}/metrics           # Prometheus")
        print(f"  curl -s 'http://{addr}/v1/candidates?limit=20'")
        print(f"  {DEMO_DIR / 'exports/demo'}: tasks.json + label-studio.xml for Label Studio")
        print(f"  curl -s http://{addr}/readyz")
        print(f"  curl -s http://{addr}/v2/models/digits")
        print(
            f"  curl -s -H 'Content-Type: image/png' --data-binary @data/traffic/ood/ood-0000.png "
            f"'http://{addr}/v1/models/digits/classify?top_k=3'"
        )
        print(
            f"  the Parquet log (complete after the sidecar stops): {DEMO_DIR / 'log'}\n"
            f"    .venv/bin/python -c \"import duckdb; print(duckdb.sql(\\\"select predicted_label, "
            f"count(*), avg(confidence) from read_parquet('{DEMO_DIR / 'log'}/predictions/*/*/*/*.parquet', "
            f"hive_partitioning=true) group by all order by 1\\\"))\""
        )
        print("  README.md (configuration, API, performance) and ARCHITECTURE.md (how it works)")
        if failed:
            print(f"\n{failed} requests failed", file=sys.stderr)
            return 1
        if args.keep:
            print(f"\nThe sidecar keeps running at http://{addr}; Ctrl-C stops it.")
            try:
                proc.wait()
            except KeyboardInterrupt:
                pass
        return 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    sys.exit(main())
