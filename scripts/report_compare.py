"""`shiftwatch report` beside Evidently and NannyML on the same log, one run each, every run a
fresh process under `/usr/bin/time -v` (wall time, peak RSS): the README table of "At scale".
`make report-compare` builds the release binary and the peers' venv first.

usage: report_compare.py [--rows N] [--buckets B] [--debug] [--keep DIR]

The log is written by scripts/make_report_log.py (seeded); the reference is
models/digits.reference.json. The peers run from .venv-monitors (benches/peers/monitor_peers.py).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
REFERENCE = os.path.join(REPO, "models", "digits.reference.json")
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
PEERS_PY = os.path.join(REPO, ".venv-monitors", "bin", "python")


def timed(cmd):
    """Runs cmd under /usr/bin/time -v; returns (wall seconds, peak RSS in MB, stdout)."""
    out = subprocess.run(["/usr/bin/time", "-v"] + cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-4000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", out.stderr)
    h, m, s = wall.groups()
    seconds = int(h or 0) * 3600 + int(m) * 60 + float(s)
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1))
    return seconds, rss_kb / 1000, out.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--buckets", type=int, default=24)
    ap.add_argument("--debug", action="store_true", help="also time target/debug/shiftwatch")
    ap.add_argument("--keep", help="write the log and the reports here instead of a temp dir")
    args = ap.parse_args()

    work = args.keep or tempfile.mkdtemp(prefix="report-compare-")
    log = os.path.join(work, "log")
    out = os.path.join(work, "out")
    os.makedirs(out, exist_ok=True)
    made = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "make_report_log.py"),
                           log, str(args.rows)], capture_output=True, text=True, check=True)
    made = json.loads(made.stdout)

    rows = []
    builds = ["release"] + (["debug"] if args.debug else [])
    for build in builds:
        binary = os.path.join(TARGET, build, "shiftwatch")
        cmd = [binary, "report", "--log", log, "--reference", REFERENCE,
               "--out", os.path.join(out, f"shiftwatch-{build}.html"),
               "--json", os.path.join(out, f"shiftwatch-{build}.json"),
               "--buckets", str(args.buckets)]
        wall, rss, _ = timed(cmd)
        summary = json.load(open(os.path.join(out, f"shiftwatch-{build}.json")))
        assert summary["rows"] == made["predictions"], summary["rows"]
        rows.append((f"shiftwatch report ({build})", wall, rss,
                     os.path.getsize(os.path.join(out, f"shiftwatch-{build}.html"))))
    for tool in ["evidently", "nannyml"]:
        wall, rss, stdout = timed([PEERS_PY, os.path.join(REPO, "benches", "peers",
                                                          "monitor_peers.py"),
                                   tool, log, REFERENCE, out, str(args.buckets)])
        res = json.loads(stdout.strip().splitlines()[-1])
        assert res["rows"] == made["predictions"], res
        rows.append((f"{tool} (read {res['read_s']:.1f} s, report {res['report_s']:.1f} s)",
                     wall, rss, res["html_bytes"]))

    load = open("/proc/loadavg").read().split()[:3]
    print(f"{made['predictions']:,} predictions, {made['feedback']:,} labels, "
          f"{args.buckets} buckets; {os.cpu_count()} CPUs, load average before the last run "
          f"{' '.join(load)}; files in {work}")
    print("| run | wall time | peak RSS | HTML |")
    print("| --- | --- | --- | --- |")
    for name, wall, rss, size in rows:
        print(f"| {name} | {wall:.1f} s | {rss:.0f} MB | {size / 1e6:.1f} MB |")


if __name__ == "__main__":
    main()
