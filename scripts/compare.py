"""`make compare`: shiftwatch against its Python peer and bare onnxruntime, in one invocation,
on loopback, with one load generator (wrk) and the same request bodies.

Digits model (the bundled PNG every request sends), at --connections (default 8):
  0. the HTTP ceiling (examples/http_ceiling.rs: shiftwatch's HTTP stack and async thread
     answering a sidecar's answer bytes without doing any work): the most any server can serve
     here under this wrk;
  1. the Python peer (benches/peers/fastapi_peer.py: FastAPI + uvicorn, 2 workers, uvloop,
     httptools, no access log, onnxruntime + Pillow) doing what classify does;
  2. shiftwatch with everything on (the shipped config: log, monitor, prediction sets,
     candidates) and 3. with log, monitor and candidates off — 2 and 3 alternate --runs times
     (interleaved, so drift of the shared machine hits both alike), each a fresh wrk run against
     the same two running sidecars.
Heavy model (training/make_heavy_model.py: five 3x3 convolutions on 224x224 RGB; the photo every
request sends, a 320x240 PNG):
  4. bare onnxruntime on the pre-made tensor (benches/peers/bare_ort.py): 1 process with 2
     intra-op threads, and 2 processes with 1 each, at batch 1 and 8 — the best is the ceiling;
  5. the Python peer; 6. shiftwatch with the shipped [inference] settings, sent the photo
     (decoded, resized and described per request, as the peer does) and 7. the same sidecar sent
     the pre-made tensor bare onnxruntime runs, as FP32 binary data through the KServe v2
     `/v2/models/heavy/infer` (the comparison DESIGN.md's target names: pre-decoded tensors);
     its answer is checked against onnxruntime's own on that tensor. 7 runs --runs times, each
     right after a run of bare onnxruntime's best setting from 4 (paired rounds: the ratio of
     each round, and their median, beside the ratio to the best of 4's single runs).

Prints a Markdown table, where shiftwatch's CPU goes (µs per request by thread, from
/proc/<pid>/task), and the ratios the README quotes, and writes runs/compare-<UTC>.json.
Every run is bounded (wrk -d and a hard timeout per process); everything started is stopped at
the end, also on error or Ctrl-C. Needs target/release/shiftwatch, target/release/examples/http_ceiling, wrk, and the peer's venv
(`make peer-venv`: .venv-peer from benches/peers/requirements.txt).

usage: compare.py [--duration 10] [--connections 8] [--runs 3] [--threads 2] [--no-heavy]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadtest  # noqa: E402  (scripts/loadtest.py: the sidecar runner and the wrk driver)

ROOT = loadtest.ROOT
PEER_DIR = ROOT / "benches/peers"
PEER_VENV = ROOT / ".venv-peer"
HEAVY_DIR = ROOT / "runs/heavy"
TENSOR_ROW = "shiftwatch, heavy, pre-made tensors (v2 binary), shipped [inference]"
DIGITS_IMAGE = ROOT / "data/traffic/normal/normal-0000.png"
READY_TIMEOUT_S = 60

# What "everything off" turns off (the request path then decodes, infers and answers only).
OFF = "[log]\nenabled = false\n[monitor]\nenabled = false\n[candidates]\nenabled = false\n"
CEILING = "http ceiling (shiftwatch's HTTP stack, fixed answer, no work)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, log) -> None:
    """Stops a server this script started (terminate, then kill after 15 s) and closes its log."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log.close()


class Peer:
    """uvicorn serving the peer on a free loopback port."""

    def __init__(self, model: Path, name: str, log_path: Path, extra_env: dict) -> None:
        self.port = free_port()
        env = dict(os.environ, PEER_MODEL=str(model), PEER_NAME=name, **extra_env)
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [
                str(PEER_VENV / "bin/uvicorn"),
                "--app-dir",
                str(PEER_DIR),
                "fastapi_peer:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "2",
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
        )
        self.addr = f"127.0.0.1:{self.port}"

    def wait_ready(self) -> str:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the peer exited (code {self.proc.returncode})")
            try:
                with urllib.request.urlopen(f"http://{self.addr}/healthz", timeout=2) as r:
                    if r.status == 200:
                        return self.addr
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"the peer was not ready within {READY_TIMEOUT_S} s")

    def stop(self) -> None:
        stop_process(self.proc, self.log)


def bare(model: Path, tensor: Path, procs: int, threads: int, batch: int, seconds: int) -> dict:
    """`procs` bare onnxruntime processes at once; their images/s summed."""
    start_at = time.time() + 3.0
    cmd = [
        str(PEER_VENV / "bin/python"),
        str(PEER_DIR / "bare_ort.py"),
        str(model),
        str(tensor),
        "--seconds",
        str(seconds),
        "--batch",
        str(batch),
        "--intra-threads",
        str(threads),
        "--start-at",
        str(start_at),
    ]
    running = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(procs)
    ]
    results = []
    for p in running:
        try:
            out, err = p.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            for q in running:
                q.kill()
            raise RuntimeError("bare onnxruntime ran past its time") from None
        if p.returncode != 0:
            raise RuntimeError(f"bare onnxruntime failed: {err[-2000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return {
        "target": f"bare onnxruntime, {procs} process{'es' if procs > 1 else ''} x "
        f"{threads} thread{'s' if threads > 1 else ''}, batch {batch}",
        "setting": [procs, threads, batch],
        "images_per_second": sum(r["images_per_second"] for r in results),
        "processes": results,
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU of `pid` and of its child processes still running (uvicorn's
    workers), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the name: state, ppid, ..., utime (14th field overall), stime (15th).
        if int(entry) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def thread_seconds(pid: int) -> dict[str, tuple[str, float]]:
    """User + system CPU of each of `pid`'s threads by thread id, with its name less a trailing
    number (`inference-0` and `inference-1` are `inference`), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    threads: dict[str, tuple[str, float]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return threads
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        head, _, tail = name.rpartition("-")
        if head and tail.isdigit():
            name = head
        fields = stat.rsplit(")", 1)[1].split()
        threads[tid] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return threads


def spent_by_name(before: dict[str, tuple[str, float]],
                  after: dict[str, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds each thread name spent between two `thread_seconds`, thread by thread: a
    thread that exits in between (the blocking pool's, idle for 10 s) takes only its own time
    with it, not its name's (summing by name first made the async thread's line go negative
    and vanish when the pool's threads left)."""
    spent: dict[str, float] = {}
    for tid, (name, seconds) in after.items():
        spent[name] = spent.get(name, 0.0) + seconds - before.get(tid, (name, 0.0))[1]
    return spent


class Ceiling:
    """examples/http_ceiling.rs on a free loopback port, answering `answer` to every classify."""

    def __init__(self, binary: Path, answer: bytes, folder: Path) -> None:
        answer_file = folder / "ceiling-answer.json"
        answer_file.write_bytes(answer)
        self.log = open(folder / "ceiling.log", "wb")
        self.proc = subprocess.Popen(
            [str(binary), str(answer_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.log,
        )
        line = self.proc.stdout.readline().decode().strip() if self.proc.stdout else ""
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"the HTTP ceiling did not start (it said {line!r})")
        self.addr = line.removeprefix("listening on ")

    def stop(self) -> None:
        stop_process(self.proc, self.log)


def wrk_row(label: str, addr: str, path: str, script: Path, args, log, pid: int) -> dict:
    url = f"http://{addr}{path}"
    threads_before = thread_seconds(pid)
    server_before = cpu_seconds(pid)
    wrk_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result, output = loadtest.run_wrk(
        args.wrk, script, url, args.connections, args.threads, args.duration
    )
    wrk_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_cpu = cpu_seconds(pid) - server_before
    threads_after = thread_seconds(pid)
    wrk_cpu = (wrk_after.ru_utime - wrk_before.ru_utime) + (
        wrk_after.ru_stime - wrk_before.ru_stime
    )
    log.write(f"=== {label}\n{output}\n")
    log.flush()
    r = loadtest.row(args.connections, result)
    r["target"] = label
    # Where the two cores went: the server's CPU per request, and the load generator's share.
    r["server_cpu_us_per_request"] = server_cpu / max(1, r["requests"]) * 1e6
    # And which of the server's threads spent it (the peer's workers are processes: only the
    # main one's threads show).
    spent = {
        name: seconds / max(1, r["requests"]) * 1e6
        for name, seconds in spent_by_name(threads_before, threads_after).items()
    }
    r["server_cpu_us_per_request_by_thread"] = {
        name: round(us, 1) for name, us in sorted(spent.items(), key=lambda kv: -kv[1]) if us > 0
    }
    r["server_cores"] = server_cpu / r["seconds"]
    r["wrk_cores"] = wrk_cpu / r["seconds"]
    if r["non_2xx"] or r["socket_errors"]:
        raise RuntimeError(f"{label}: {r['non_2xx']} non-2xx, {r['socket_errors']} socket errors")
    print(
        f"  {label}: {r['requests_per_second']:,.0f} req/s, p99 "
        f"{loadtest.fmt_ms(r['p99_us'])}; server {r['server_cpu_us_per_request']:,.0f} CPU-µs "
        f"per request ({r['server_cores']:.2f} cores), wrk {r['wrk_cores']:.2f} cores",
        flush=True,
    )
    return r


def tensor_script(addr: str, heavy_dir: Path, tmp: Path) -> Path:
    """A wrk script sending bare onnxruntime's pre-made tensor as one KServe v2 request (FP32
    binary data after a JSON header), once checked by hand: the sidecar's probabilities must be
    onnxruntime's own on that tensor."""
    import numpy as np
    import onnxruntime as ort

    meta = json.loads(loadtest.call(addr, "GET", "/v2/models/heavy"))
    input_name = meta["inputs"][0]["name"]
    output_name = meta["outputs"][0]["name"]
    tensor = np.ascontiguousarray(np.load(heavy_dir / "tensor.npy"), dtype="<f4")
    header = json.dumps({
        "inputs": [{"name": input_name, "shape": list(tensor.shape), "datatype": "FP32",
                    "parameters": {"binary_data_size": tensor.nbytes}}],
        "outputs": [{"name": output_name, "parameters": {"binary_data": False}}],
    }).encode()
    body = tmp / "tensor-request.bin"
    body.write_bytes(header + tensor.tobytes())
    headers = {"Content-Type": "application/octet-stream",
               "Inference-Header-Content-Length": str(len(header))}
    answer = json.loads(loadtest.call(addr, "POST", "/v2/models/heavy/infer", body.read_bytes(),
                                      headers, timeout=30))
    got = np.array(answer["outputs"][0]["data"], dtype=np.float32)
    session = ort.InferenceSession(str(heavy_dir / "heavy.onnx"),
                                   providers=["CPUExecutionProvider"])
    want = session.run([output_name], {input_name: tensor})[0].reshape(-1)
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-6):
        raise RuntimeError(f"v2 infer on the pre-made tensor answered {got[:5]}, "
                           f"onnxruntime {want[:5]}")
    script = tmp / "tensor.lua"
    text = loadtest.WRK_SCRIPT.format(image=body, mark=loadtest.RESULT_MARK)
    plain = 'wrk.headers["Content-Type"] = "image/png"'
    if plain not in text:
        raise RuntimeError("loadtest.WRK_SCRIPT no longer sets the PNG content type")
    script.write_text(text.replace(plain, "\n".join(
        f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())))
    return script


def warm(addr: str, path: str, script: Path, args) -> None:
    loadtest.run_wrk(args.wrk, script, f"http://{addr}{path}", args.connections, args.threads, 2)


def same_answer(a: dict, b: dict, what: str) -> None:
    """The peer and shiftwatch must do the same work: same top class, close probabilities
    (Pillow rounds its resized image to 8 bits, shiftwatch keeps it in float: about 0.01)."""
    pa, pb = a["predictions"][0], b["predictions"][0]
    if pa["class"] != pb["class"] or abs(pa["probability"] - pb["probability"]) > 0.02:
        raise RuntimeError(f"{what}: the peer answers {pa}, shiftwatch {pb}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    p.add_argument("--connections", type=int, default=8, help="wrk connections (default 8)")
    p.add_argument("--runs", type=int, default=3, help="interleaved on/off pairs (default 3)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--binary", type=Path, default=ROOT / "target/release/shiftwatch")
    p.add_argument(
        "--ceiling", type=Path, default=ROOT / "target/release/examples/http_ceiling"
    )
    p.add_argument("--no-heavy", action="store_true", help="skip the heavy-model part")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if not 1 <= args.duration <= 120:
        p.error("--duration must be in 1..=120 seconds")
    if not 1 <= args.connections <= 256:
        p.error("--connections must be in 1..=256")
    if not 1 <= args.runs <= 10:
        p.error("--runs must be in 1..=10")
    return args


def main() -> int:
    args = parse_args()
    args.wrk = shutil.which("wrk")
    if args.wrk is None:
        loadtest.fail("wrk is not installed (Debian: apt-get install wrk)")
    binary = args.binary.resolve()
    if not binary.is_file():
        loadtest.fail(f"{binary} does not exist; build it first: cargo build --release --locked")
    ceiling_binary = args.ceiling.resolve()
    if not ceiling_binary.is_file():
        loadtest.fail(
            f"{ceiling_binary} does not exist; build it first: "
            "cargo build --release --locked --example http_ceiling"
        )
    if not (PEER_VENV / "bin/uvicorn").is_file():
        loadtest.fail(f"the peer's venv is missing: make peer-venv (creates {PEER_VENV})")
    heavy = not args.no_heavy
    if heavy and not (HEAVY_DIR / "heavy.onnx").is_file():
        subprocess.run(
            [str(ROOT / ".venv/bin/python"), str(ROOT / "training/make_heavy_model.py"),
             "--out", str(HEAVY_DIR)],
            check=True,
        )
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or ROOT / "runs" / f"compare-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    wrk_log_path = out.with_suffix(".wrk.txt")
    rows: list[dict] = []
    started: list = []
    digits_image = DIGITS_IMAGE.read_bytes()
    digits_path = "/v1/models/digits/classify"
    try:
        with tempfile.TemporaryDirectory(prefix="shiftwatch-compare-") as tmp, open(
            wrk_log_path, "w"
        ) as wrk_log:
            tmp = Path(tmp)
            digits_script = tmp / "digits.lua"
            digits_script.write_text(
                loadtest.WRK_SCRIPT.format(image=DIGITS_IMAGE, mark=loadtest.RESULT_MARK)
            )
            print(f"digits model, {args.connections} connections, {args.duration} s per run")
            peer = Peer(ROOT / "models/digits.onnx", "digits", tmp / "peer.log", {})
            started.append(peer)
            peer_addr = peer.wait_ready()
            peer_answer = loadtest.check_once(peer_addr, digits_image, digits_path)
            warm(peer_addr, digits_path, digits_script, args)
            rows.append(wrk_row("python peer", peer_addr, digits_path, digits_script, args, wrk_log,
                                peer.proc.pid))
            peer.stop()
            started.remove(peer)

            digits_model = loadtest.everything_on(tmp)
            (tmp / "on").mkdir()
            (tmp / "off").mkdir()
            on = loadtest.Sidecar(binary, tmp / "on", tmp / "on.log", digits_model)
            started.append(on)
            off_model = (
                "[model]\nname = \"digits\"\n"
                f"path = {json.dumps(str(ROOT / 'models/digits.onnx'))}\n" + OFF
            )
            off = loadtest.Sidecar(binary, tmp / "off", tmp / "off.log", off_model)
            started.append(off)
            on_addr, off_addr = on.wait_ready(), off.wait_ready()
            same_answer(peer_answer, loadtest.check_once(on_addr, digits_image), "digits")
            loadtest.check_once(off_addr, digits_image)
            warm(on_addr, digits_path, digits_script, args)
            warm(off_addr, digits_path, digits_script, args)
            for i in range(args.runs):
                rows.append(wrk_row(f"shiftwatch, everything on (run {i + 1})", on_addr,
                                    digits_path, digits_script, args, wrk_log, on.proc.pid))
                rows.append(wrk_row(f"shiftwatch, log/monitor/candidates off (run {i + 1})",
                                    off_addr, digits_path, digits_script, args, wrk_log,
                                    off.proc.pid))
            # The ceiling answers what the sidecar with everything on answered.
            answer = json.dumps(loadtest.check_once(on_addr, digits_image)).encode()
            for s in (on, off):
                if s.proc.poll() is not None:
                    raise RuntimeError(f"a sidecar exited during the runs ({s.proc.returncode})")
                s.stop()
                started.remove(s)

            ceiling = Ceiling(ceiling_binary, answer, tmp)
            started.append(ceiling)
            loadtest.check_once(ceiling.addr, digits_image, digits_path)
            warm(ceiling.addr, digits_path, digits_script, args)
            rows.append(wrk_row(CEILING, ceiling.addr, digits_path, digits_script, args, wrk_log,
                                ceiling.proc.pid))
            ceiling.stop()
            started.remove(ceiling)

            if heavy:
                photo = HEAVY_DIR / "photo.png"
                heavy_script = tmp / "heavy.lua"
                heavy_script.write_text(
                    loadtest.WRK_SCRIPT.format(image=photo, mark=loadtest.RESULT_MARK)
                )
                heavy_path = "/v1/models/heavy/classify"
                print(f"heavy model, {args.connections} connections")
                for procs, threads in ((1, 2), (2, 1)):
                    for batch in (1, 8):
                        r = bare(HEAVY_DIR / "heavy.onnx", HEAVY_DIR / "tensor.npy", procs,
                                 threads, batch, args.duration)
                        rows.append(r)
                        print(f"  {r['target']}: {r['images_per_second']:,.1f} images/s",
                              flush=True)
                heavy_pre = json.dumps({"color": "rgb", "width": 224, "height": 224,
                                        "scale": 1 / 255, "mean": [0.485, 0.456, 0.406],
                                        "std": [0.229, 0.224, 0.225]})
                peer = Peer(HEAVY_DIR / "heavy.onnx", "heavy", tmp / "peer-heavy.log",
                            {"PEER_PREPROCESS": heavy_pre,
                             "PEER_LABELS": ",".join(f"c{i}" for i in range(10))})
                started.append(peer)
                peer_addr = peer.wait_ready()
                peer_answer = loadtest.check_once(peer_addr, photo.read_bytes(), heavy_path)
                warm(peer_addr, heavy_path, heavy_script, args)
                rows.append(wrk_row("python peer, heavy", peer_addr, heavy_path, heavy_script,
                                    args, wrk_log, peer.proc.pid))
                peer.stop()
                started.remove(peer)
                heavy_model = (HEAVY_DIR / "heavy.toml").read_text()
                d = tmp / "heavy"
                d.mkdir()
                s = loadtest.Sidecar(
                    binary, d, d / "sidecar.log",
                    heavy_model + f"[log]\ndir = {json.dumps(str(d / 'log'))}\n",
                )
                started.append(s)
                addr = s.wait_ready()
                same_answer(peer_answer, loadtest.check_once(addr, photo.read_bytes(),
                                                             heavy_path), "heavy")
                warm(addr, heavy_path, heavy_script, args)
                rows.append(wrk_row("shiftwatch, heavy, photos, shipped [inference]", addr,
                                    heavy_path, heavy_script, args, wrk_log, s.proc.pid))
                infer_path = "/v2/models/heavy/infer"
                v2_script = tensor_script(addr, HEAVY_DIR, tmp)
                warm(addr, infer_path, v2_script, args)
                # Paired rounds: bare onnxruntime's best setting, then the sidecar at once (its
                # process stays up, idle while bare runs), so that both see the machine alike.
                best = max((r for r in rows if r["target"].startswith("bare onnxruntime")),
                           key=lambda r: r["images_per_second"])
                setting = best["setting"]
                for i in range(1, args.runs + 1):
                    r = bare(HEAVY_DIR / "heavy.onnx", HEAVY_DIR / "tensor.npy", *setting,
                             args.duration)
                    r["target"] = f"{r['target']}, round {i}"
                    r["round"] = i
                    rows.append(r)
                    print(f"  {r['target']}: {r['images_per_second']:,.1f} images/s",
                          flush=True)
                    t = wrk_row(f"{TENSOR_ROW}, round {i}", addr, infer_path, v2_script, args,
                                wrk_log, s.proc.pid)
                    t["round"] = i
                    rows.append(t)
                s.stop()
                started.remove(s)
    except (RuntimeError, OSError, KeyError, ValueError, subprocess.CalledProcessError) as e:
        print(f"compare: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("compare: interrupted", file=sys.stderr)
        return 130
    finally:
        for s in started:
            s.stop()

    summary = summarize(rows, heavy)
    print()
    print(summary["markdown"])
    report = {
        "benchmark": "shiftwatch against its Python peer and bare onnxruntime",
        "when": stamp,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "revision": loadtest.git_describe(),
        "host": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "duration_s": args.duration,
        "connections": args.connections,
        "rows": rows,
        **summary,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out} (wrk output: {wrk_log_path})")
    return 0


def summarize(rows: list[dict], heavy: bool) -> dict:
    def rate(r: dict) -> float:
        return r.get("requests_per_second") or r["images_per_second"]

    by = {r["target"]: r for r in rows}
    peer = rate(by["python peer"])
    on = [rate(r) for r in rows if r["target"].startswith("shiftwatch, everything on")]
    off = [rate(r) for r in rows if r["target"].startswith("shiftwatch, log/monitor")]
    pairs = [a / b for a, b in zip(on, off)]
    on_p99 = [r["p99_us"] for r in rows if r["target"].startswith("shiftwatch, everything on")]
    lines = [
        "| target | requests (images)/s | p99 | ratio | server CPU per request | wrk's cores |",
        "|---|---:|---:|---:|---:|---:|",
    ]

    def cpu(r: dict) -> str:
        return f"{r['server_cpu_us_per_request']:,.0f} µs | {r['wrk_cores']:.2f}"

    lines.append(
        f"| python peer (FastAPI, 2 workers), digits | {peer:,.0f} | "
        f"{loadtest.fmt_ms(by['python peer']['p99_us'])} | 1 | {cpu(by['python peer'])} |"
    )
    for r in rows:
        if r["target"].startswith("shiftwatch, everything on") or r["target"].startswith(
            "shiftwatch, log/monitor"
        ):
            lines.append(
                f"| {r['target']} | {rate(r):,.0f} | {loadtest.fmt_ms(r['p99_us'])} | "
                f"{rate(r) / peer:.2f}x peer | {cpu(r)} |"
            )
    ceiling = by.get(CEILING)
    if ceiling:
        lines.append(
            f"| {CEILING} | {rate(ceiling):,.0f} | {loadtest.fmt_ms(ceiling['p99_us'])} | "
            f"{rate(ceiling) / peer:.2f}x peer | {cpu(ceiling)} |"
        )
    ratios = {
        "on_over_peer": statistics.median(on) / peer,
        "on_over_off_median": statistics.median(pairs),
        "on_over_off_each_pair": pairs,
        "on_p99_us_worst": max(on_p99),
    }
    if ceiling:
        ratios["ceiling_over_peer"] = rate(ceiling) / peer
        ratios["on_over_ceiling"] = statistics.median(on) / rate(ceiling)
    if heavy:
        # The best of the four settings' single runs; the paired rounds come after them.
        bare_rows = [r for r in rows
                     if r["target"].startswith("bare onnxruntime") and "round" not in r]
        best = max(rate(r) for r in bare_rows)
        ratios["bare_best_images_per_second"] = best
        for r in bare_rows:
            lines.append(
                f"| {r['target']} | {rate(r):,.1f} | – | {rate(r) / best:.2f} of best | – | – |"
            )
        for r in rows:
            if "heavy" in r["target"] and "round" not in r:
                lines.append(
                    f"| {r['target']} | {rate(r):,.1f} | {loadtest.fmt_ms(r['p99_us'])} | "
                    f"{rate(r) / best:.2f} of bare | {cpu(r)} |"
                )
                ratios[f"{r['target']} / bare"] = rate(r) / best
        # Each round: the sidecar against the bare run just before it (rows in run order).
        rounds = [r for r in rows if "round" in r]
        paired = []
        for b, t in zip(rounds[::2], rounds[1::2]):
            paired.append(rate(t) / rate(b))
            lines.append(
                f"| {b['target']} | {rate(b):,.1f} | – | 1 | – | – |"
            )
            lines.append(
                f"| {t['target']} | {rate(t):,.1f} | {loadtest.fmt_ms(t['p99_us'])} | "
                f"{rate(t) / rate(b):.3f} of that bare run, {rate(t) / best:.2f} of best | "
                f"{cpu(t)} |"
            )
        if paired:
            ratios["tensors_over_bare_each_round"] = paired
            ratios["tensors_over_bare_median_of_rounds"] = statistics.median(paired)
    lines.append("")
    lines.append("Where shiftwatch's CPU goes, µs per request by thread (from /proc):")
    lines.append("")
    for r in rows:
        threads = r.get("server_cpu_us_per_request_by_thread") or {}
        if r["target"].startswith("shiftwatch") and threads:
            spent = ", ".join(f"{name} {us:,.1f}" for name, us in threads.items() if us >= 0.5)
            lines.append(f"- {r['target']}: {spent}")
    lines.append("")
    lines.append(
        f"everything on / python peer: {ratios['on_over_peer']:.2f}x (median of {len(on)} runs); "
        f"everything on / off: median {ratios['on_over_off_median']:.3f} over {len(pairs)} "
        f"interleaved pairs (each: {', '.join(f'{p:.3f}' for p in pairs)}); worst p99 with "
        f"everything on {loadtest.fmt_ms(ratios['on_p99_us_worst'])}"
    )
    if "tensors_over_bare_each_round" in ratios:
        each = ratios["tensors_over_bare_each_round"]
        lines.append(
            f"heavy, pre-made tensors / bare onnxruntime's best setting run just before: median "
            f"{ratios['tensors_over_bare_median_of_rounds']:.3f} over {len(each)} paired rounds "
            f"(each: {', '.join(f'{p:.3f}' for p in each)})"
        )
    if ceiling:
        lines.append(
            f"the HTTP ceiling (no work at all) / python peer: "
            f"{ratios['ceiling_over_peer']:.2f}x; everything on / ceiling: "
            f"{ratios['on_over_ceiling']:.2f}"
        )
    return {"ratios": ratios, "markdown": "\n".join(lines)}


if __name__ == "__main__":
    sys.exit(main())
