"""The CUDA execution provider with ONNX Runtime's real GPU build on a machine without a GPU
(`make test-cuda`).

The onnxruntime-gpu library loads anywhere and lists CUDA among its providers; what it cannot do
here is start it. These tests run the real binary and hold it to its promise: the provider in
use is named, every missing NVIDIA library and the missing device are named, `require_cuda`
makes that fatal, and otherwise the sidecar serves on CPU with a loud warning and says `cpu`
in /readyz and shiftwatch_build_info.

Environment (set by the Makefile): SHIFTWATCH_BIN, ORT_GPU_LIB (the GPU build's
libonnxruntime.so), ORT_CPU_LIB (the CPU build's), CUDART_DIR (a folder holding only
libcudart.so.13, from the nvidia-cuda-runtime wheel).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = os.environ.get("SHIFTWATCH_BIN", str(REPO / "target" / "debug" / "shiftwatch"))
GPU_LIB = os.environ.get(
    "ORT_GPU_LIB", str(REPO / "vendor" / "onnxruntime-gpu" / "libonnxruntime.so.1.31.1")
)
CPU_LIB = os.environ.get("ORT_CPU_LIB", str(REPO / "vendor" / "onnxruntime" / "libonnxruntime.so.1.31.1"))
CUDART_DIR = os.environ.get("CUDART_DIR", str(REPO / "vendor" / "cuda-runtime"))

# What ort's CUDA support loads (CUDA 13, cuDNN 9): each must be named when absent.
NVIDIA_LIBRARIES = [
    "libcudart.so.13",
    "libcublasLt.so.13",
    "libcublas.so.13",
    "libnvrtc.so.13",
    "libcurand.so.10",
    "libcufft.so.12",
    "libcudnn.so.9",
    "libcudnn_cnn.so.9",
]
CUDA_FIRST = '["cuda", "cpu"]'


def driver_present() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(
    driver_present(),
    reason="an NVIDIA driver is installed: this test is for machines without a GPU "
    "(on a GPU machine, scripts/gpu_bench.py exercises CUDA)",
)


@pytest.fixture(scope="module", autouse=True)
def prerequisites():
    for path in (BIN, GPU_LIB, CPU_LIB):
        assert Path(path).is_file(), f"{path} is missing: run `make test-cuda`"
    assert (Path(CUDART_DIR) / "libcudart.so.13").is_file(), "run `make runtime-gpu`"


def env(tmp_path: Path, library: str, **overrides: str) -> dict[str, str]:
    e = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SHIFTWATCH__") and k not in ("ORT_DYLIB_PATH", "LD_LIBRARY_PATH", "RUST_LOG")
    }
    e.update(
        ORT_DYLIB_PATH=library,
        SHIFTWATCH__LOG__DIR=str(tmp_path / "log"),
        SHIFTWATCH__MONITOR__STATE_FILE=str(tmp_path / "window.json"),
        SHIFTWATCH__CANDIDATES__DIR=str(tmp_path / "candidates"),
        SHIFTWATCH__CANDIDATES__EXPORT_DIR=str(tmp_path / "exports"),
        SHIFTWATCH__LOGGING__FORMAT="text",
    )
    e.update(overrides)
    return e


def check_config(tmp_path: Path, library: str, **overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BIN, "check-config"],
        cwd=REPO,
        env=env(tmp_path, library, **overrides),
        capture_output=True,
        text=True,
        timeout=120,
    )


def warnings_of(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " WARN " in line]


def provider_line(stdout: str) -> str:
    m = re.search(r"^\s*provider\s+(\S+)$", stdout, re.M)
    assert m, stdout
    return m.group(1)


def test_gpu_library_without_cuda_libraries_names_each_and_falls_back(tmp_path):
    run = check_config(tmp_path, GPU_LIB, SHIFTWATCH__MODEL__EXECUTION_PROVIDERS=CUDA_FIRST)
    assert run.returncode == 0, run.stderr
    assert provider_line(run.stdout) == "cpu"
    (warning,) = [w for w in warnings_of(run.stderr) if "CUDA" in w]
    assert GPU_LIB in warning, "the message names the runtime library"
    for lib in NVIDIA_LIBRARIES:
        assert f"{lib} (not found)" in warning, f"{lib} not named: {warning}"
    assert "no NVIDIA driver: libcuda.so.1 (not found)" in warning
    assert "running on CPU instead" in warning
    assert "model loads and runs: ok" in run.stdout


def test_require_cuda_makes_it_fatal_with_the_same_reasons(tmp_path):
    run = check_config(
        tmp_path,
        GPU_LIB,
        SHIFTWATCH__MODEL__EXECUTION_PROVIDERS=CUDA_FIRST,
        SHIFTWATCH__MODEL__REQUIRE_CUDA="true",
    )
    assert run.returncode != 0
    assert "model loads and runs" not in run.stdout
    error = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1, run.stderr
    assert "model.require_cuda is true" in error[0]
    assert "libcudart.so.13 (not found)" in error[0]
    assert "libcuda.so.1 (not found)" in error[0]
    assert not [w for w in warnings_of(run.stderr) if "running on CPU" in w], "fatal, not a fallback"


def test_with_the_cuda_runtime_present_the_missing_device_is_reported(tmp_path):
    # libcudart alone, from the nvidia-cuda-runtime wheel: it loads, so it is no longer listed,
    # and asked for devices it answers with CUDA's own error (no driver, so no device).
    run = check_config(
        tmp_path,
        GPU_LIB,
        SHIFTWATCH__MODEL__EXECUTION_PROVIDERS=CUDA_FIRST,
        SHIFTWATCH__MODEL__REQUIRE_CUDA="true",
        LD_LIBRARY_PATH=CUDART_DIR,
    )
    assert run.returncode != 0
    assert "libcudart.so.13 (not found)" not in run.stderr
    assert "libcublas.so.13 (not found)" in run.stderr
    m = re.search(r"the CUDA runtime cannot count devices: cudaGetDeviceCount returned error (\d+): (.+?);", run.stderr)
    assert m, run.stderr
    assert int(m.group(1)) != 0 and m.group(2).strip(), m.groups()


def test_the_cpu_build_is_named_as_such(tmp_path):
    run = check_config(tmp_path, CPU_LIB, SHIFTWATCH__MODEL__EXECUTION_PROVIDERS=CUDA_FIRST)
    assert run.returncode == 0, run.stderr
    assert provider_line(run.stdout) == "cpu"
    (warning,) = [w for w in warnings_of(run.stderr) if "CUDA" in w]
    assert "has no CUDA provider (it is the CPU build" in warning
    assert CPU_LIB in warning


def test_cpu_only_config_says_nothing_about_cuda(tmp_path):
    run = check_config(tmp_path, GPU_LIB, SHIFTWATCH__MODEL__EXECUTION_PROVIDERS='["cpu"]')
    assert run.returncode == 0, run.stderr
    assert provider_line(run.stdout) == "cpu"
    assert not [w for w in warnings_of(run.stderr) if "CUDA" in w], run.stderr


class Sidecar:
    """`shiftwatch serve` on an ephemeral loopback port, its output collected."""

    def __init__(self, tmp_path: Path, **overrides: str):
        self.proc = subprocess.Popen(
            [BIN, "serve"],
            cwd=REPO,
            env=env(tmp_path, GPU_LIB, SHIFTWATCH__SERVER__LISTEN="127.0.0.1:0", **overrides),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.output: list[str] = []
        self.addr: str | None = None
        self._listening = threading.Event()
        self._readers = [
            threading.Thread(target=self._read, args=(stream,), daemon=True)
            for stream in (self.proc.stdout, self.proc.stderr)
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream):
        for line in stream:
            self.output.append(line)
            m = re.search(r"listening on http://(\S+)", line)
            if m:
                self.addr = m.group(1)
                self._listening.set()

    def text(self) -> str:
        return "".join(self.output)

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://{self.addr}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def wait_ready(self, deadline_s: float = 60) -> dict:
        assert self._listening.wait(deadline_s), self.text()
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            status, body = self.get("/readyz")
            if status == 200:
                return json.loads(body)
            assert self.proc.poll() is None, f"exited {self.proc.returncode}: {self.text()}"
            time.sleep(0.05)
        raise AssertionError(f"not ready within {deadline_s} s: {self.text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait()

    def wait(self) -> int:
        """The exit code, once the process has exited and all its output is read."""
        code = self.proc.wait(timeout=60)
        for reader in self._readers:
            reader.join(timeout=10)
        return code


def test_serve_falls_back_to_cpu_loudly_and_reports_cpu(tmp_path):
    sidecar = Sidecar(tmp_path, SHIFTWATCH__MODEL__EXECUTION_PROVIDERS=CUDA_FIRST)
    try:
        ready = sidecar.wait_ready()
        assert ready["execution_provider"] == "cpu", ready
        status, metrics = sidecar.get("/metrics")
        assert status == 200
        (info,) = [line for line in metrics.splitlines() if line.startswith("shiftwatch_build_info{")]
        assert 'execution_provider="cpu"' in info and info.endswith(" 1"), info
        # The classify path really runs on the fallback sessions.
        req = urllib.request.Request(
            f"http://{sidecar.addr}/v1/models/digits/classify",
            data=next((REPO / "data").rglob("*.png")).read_bytes(),
            headers={"Content-Type": "image/png"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200 and "predictions" in json.loads(r.read())
    finally:
        code = sidecar.stop()
    assert code == 0, sidecar.text()
    warnings = [w for w in sidecar.text().splitlines() if " WARN " in w and "CUDA cannot start" in w]
    assert len(warnings) == 1, sidecar.text()
    assert "libcudnn.so.9 (not found)" in warnings[0]


def test_serve_with_require_cuda_exits_nonzero_naming_the_cause(tmp_path):
    sidecar = Sidecar(
        tmp_path,
        SHIFTWATCH__MODEL__EXECUTION_PROVIDERS=CUDA_FIRST,
        SHIFTWATCH__MODEL__REQUIRE_CUDA="true",
    )
    code = sidecar.wait()
    assert code != 0, sidecar.text()
    text = sidecar.text()
    assert "model.require_cuda is true" in text, text
    assert "libcublasLt.so.13 (not found)" in text, text
