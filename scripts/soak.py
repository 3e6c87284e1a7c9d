"""`make soak`: 1,000,000 classify requests over HTTP with everything on, the sidecar's RSS
sampled every second, and every acknowledged row checked in Parquet.

Starts target/release/shiftwatch on a free loopback port with the shipped settings (log,
monitor, prediction sets, candidates; its log, candidates and monitor state in a temporary
folder), sends exactly --requests POSTs of the bundled PNG with ApacheBench (`ab -k -n`, which
counts requests exactly; Debian: apache2-utils) at --concurrency, and meanwhile samples once a
second the sidecar's resident memory (/proc/<pid>/status VmRSS) and its count of answered
classify requests (shiftwatch_requests_total). Then SIGTERM, and the log is read back with
pyarrow: one row per acknowledged request, each request id once.

Passes (exit 0) when every request was answered 200, the log holds exactly that many rows with
distinct request ids, and the RSS once all requests are answered is within --rss-tolerance
(default 10%) of the RSS once the first tenth was. Prints a summary; writes the samples to
runs/soak-<UTC>.json.

usage: soak.py [--requests 1000000] [--concurrency 8] [--binary target/release/shiftwatch]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadtest  # noqa: E402  (the sidecar runner)

ROOT = loadtest.ROOT
IMAGE = ROOT / "data/traffic/normal/normal-0000.png"
PATH = "/v1/models/digits/classify"


def rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def answered(addr: str) -> int | None:
    """classify requests answered 200 so far, from /metrics."""
    try:
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    total = 0
    for line in text.splitlines():
        if line.startswith("shiftwatch_requests_total{") and 'code="200"' in line:
            if 'endpoint="classify"' in line:
                total += int(float(line.rsplit(" ", 1)[1]))
    return total


class Sampler(threading.Thread):
    def __init__(self, pid: int, addr: str) -> None:
        super().__init__(daemon=True)
        self.pid, self.addr = pid, addr
        self.samples: list[dict] = []
        self.stop = threading.Event()
        self.start_time = time.monotonic()

    def run(self) -> None:
        while not self.stop.is_set():
            rss, count = rss_bytes(self.pid), answered(self.addr)
            if rss is not None and count is not None:
                self.samples.append(
                    {"t": round(time.monotonic() - self.start_time, 2), "rss": rss,
                     "answered": count}
                )
            self.stop.wait(1.0)


def count_rows(log_dir: Path) -> tuple[int, int]:
    """(rows, distinct request ids) of the predictions log, read back with pyarrow."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    if not (log_dir / "predictions").is_dir():
        return 0, 0  # the log is off (SHIFTWATCH__LOG__ENABLED=false): the check fails
    d = ds.dataset(log_dir / "predictions", format="parquet", partitioning="hive")
    ids = d.to_table(columns=["request_id"])["request_id"]
    return len(ids), len(pc.unique(ids))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=1_000_000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--rss-tolerance", type=float, default=0.10)
    p.add_argument("--timeout", type=int, default=1800, help="seconds ab may run (default 1800)")
    p.add_argument("--binary", type=Path, default=ROOT / "target/release/shiftwatch")
    args = p.parse_args()
    if not 10 <= args.requests <= 10_000_000:
        p.error("--requests must be in 10..=10000000")
    ab = shutil.which("ab")
    if ab is None:
        loadtest.fail("ab is not installed (Debian: apt-get install apache2-utils)")
    binary = args.binary.resolve()
    if not binary.is_file():
        loadtest.fail(f"{binary} does not exist; build it first: cargo build --release --locked")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = ROOT / "runs" / f"soak-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="shiftwatch-soak-") as tmp:
        tmp = Path(tmp)
        sidecar = loadtest.Sidecar(binary, tmp, tmp / "sidecar.log", loadtest.everything_on(tmp))
        sampler = None
        try:
            addr = sidecar.wait_ready()
            sampler = Sampler(sidecar.proc.pid, addr)
            sampler.start()
            print(f"soak: {args.requests:,} requests at concurrency {args.concurrency} to {addr}",
                  flush=True)
            started = time.monotonic()
            done = subprocess.run(
                [ab, "-k", "-q", "-n", str(args.requests), "-c", str(args.concurrency),
                 "-s", "30", "-p", str(IMAGE), "-T", "image/png", f"http://{addr}{PATH}"],
                capture_output=True, text=True, timeout=args.timeout, check=False,
            )
            seconds = time.monotonic() - started
            if done.returncode != 0:
                raise RuntimeError(f"ab failed ({done.returncode}): {done.stderr[-2000:]}")
            complete = int(re.search(r"Complete requests:\s+(\d+)", done.stdout).group(1))
            non2xx = re.search(r"Non-2xx responses:\s+(\d+)", done.stdout)
            non2xx = int(non2xx.group(1)) if non2xx else 0
            time.sleep(1.5)
            sampler.stop.set()
            sampler.join()
            final = answered(addr)
            rss_end = rss_bytes(sidecar.proc.pid)
        except (RuntimeError, OSError, subprocess.TimeoutExpired, AttributeError) as e:
            print(f"soak: {e}\n{sidecar.log_tail()}", file=sys.stderr)
            return 1
        finally:
            if sampler is not None:
                sampler.stop.set()
            code = sidecar.stop()
        rows, distinct = count_rows(tmp / "log")

    samples = sampler.samples
    tenth = args.requests // 10
    early = next((s for s in samples if s["answered"] >= tenth), None)
    peak = max(s["rss"] for s in samples)
    ok_rows = rows == complete - non2xx == final == args.requests and distinct == rows
    growth = rss_end / early["rss"] - 1 if early and rss_end else None
    ok_rss = growth is not None and growth <= args.rss_tolerance
    summary = {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "seconds": round(seconds, 1),
        "requests_per_second": round(args.requests / seconds),
        "ab_complete": complete,
        "ab_non_2xx": non2xx,
        "answered_200_by_metrics": final,
        "parquet_rows": rows,
        "parquet_distinct_request_ids": distinct,
        "rss_after_first_tenth_bytes": early["rss"] if early else None,
        "rss_at_end_bytes": rss_end,
        "rss_peak_bytes": peak,
        "rss_growth": growth,
        "sidecar_exit_code": code,
        "passed": bool(ok_rows and ok_rss and code == 0),
    }
    out.write_text(json.dumps({**summary, "when": stamp, "revision": loadtest.git_describe(),
                               "samples": samples}, indent=1) + "\n")
    mib = 1024 * 1024
    print(
        f"soak: {args.requests:,} requests in {seconds:.0f} s ({summary['requests_per_second']:,}"
        f" req/s); answered 200: {final:,}; Parquet rows {rows:,} ({distinct:,} distinct ids); "
        f"RSS {early['rss'] / mib if early else float('nan'):.1f} MiB after {tenth:,}, "
        f"{rss_end / mib:.1f} MiB at the end (growth {100 * growth:+.1f}%), peak "
        f"{peak / mib:.1f} MiB; exit {code}; {'PASS' if summary['passed'] else 'FAIL'}"
    )
    print(f"wrote {out}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
