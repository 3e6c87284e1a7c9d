"""The deployment files against the real binary, and the deploy check against broken input
(`make check-deploy`).

The config a container or pod gives the sidecar (the image's ENV, the ConfigMap, the pod's
environment) must be one `shiftwatch check-config` accepts; and deploy/check.py must fail on
the mistakes it exists to catch, or its passing means nothing.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[1]
REPO = DEPLOY.parent
sys.path.insert(0, str(DEPLOY))
import check  # noqa: E402

BIN = os.environ.get("SHIFTWATCH_BIN", str(REPO / "target" / "debug" / "shiftwatch"))
DOCKERFILES = sorted((DEPLOY / "docker").glob("Dockerfile*"))
KUSTOMIZATIONS = sorted(p.parent for p in (DEPLOY / "kubernetes").glob("*/kustomization.yaml"))


def dockerfile_env(path: Path) -> dict[str, str]:
    """The ENV of a Dockerfile's last stage, ARG defaults substituted."""
    text = path.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    args: dict[str, str] = {}
    env: dict[str, str] = {}
    for line in lines:
        word, _, rest = line.partition(" ")
        if word == "FROM":
            env = {}
        elif word == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            args[k] = v
        elif word == "ENV":
            for item in shlex.split(rest):
                k, v = item.split("=", 1)
                for name, value in args.items():
                    v = v.replace("${%s}" % name, value)
                env[k] = v
    return env


def run_check_config(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SHIFTWATCH__")}
    return subprocess.run(
        [BIN, "check-config", "--skip-model", "--config", str(config)],
        cwd=REPO,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_environment_is_a_valid_config(dockerfile):
    env = dockerfile_env(dockerfile)
    assert env["SHIFTWATCH__SERVER__LISTEN"] == "0.0.0.0:8080"
    assert env["SHIFTWATCH__RUNTIME__LIBRARY"].endswith("libonnxruntime.so.1.31.1")
    run = run_check_config(REPO / "config" / "shiftwatch.toml", env)
    assert run.returncode == 0, run.stderr
    assert "listen           0.0.0.0:8080" in run.stdout
    assert "/opt/shiftwatch/models/digits.onnx" in run.stdout


def test_a_bad_image_environment_is_rejected():
    # The control for the test above: the binary does reject what it does not know.
    env = dockerfile_env(DOCKERFILES[0]) | {"SHIFTWATCH__MODEL__EXECUTION_PROVIDERS": '["tpu"]'}
    run = run_check_config(REPO / "config" / "shiftwatch.toml", env)
    assert run.returncode == 64
    assert "model.execution_providers" in run.stderr


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=lambda p: p.name)
def test_pod_config_is_a_valid_config(kustomization, tmp_path):
    objects = check.render(kustomization)
    by_id = {check.identity(o): o for o in objects}
    config = tmp_path / "shiftwatch.toml"
    config.write_text(by_id[("ConfigMap", "shiftwatch-config")]["data"]["shiftwatch.toml"])
    secret = by_id[("Secret", "shiftwatch-token")]["stringData"]
    pod = by_id[("Deployment", "photo-classifier")]["spec"]["template"]["spec"]
    (sidecar,) = [c for c in pod["initContainers"] if c["name"] == "shiftwatch"]
    env = {}
    for item in sidecar["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            env[item["name"]] = secret[item["valueFrom"]["secretKeyRef"]["key"]]
    run = run_check_config(config, env)
    assert run.returncode == 0, run.stderr
    assert "listen           0.0.0.0:8080" in run.stdout
    # The README's sizing: no batch delay on CPU, one on a GPU; the batch limit follows the
    # model ("auto").
    inference = tomllib.loads(config.read_text())["inference"]
    assert inference["max_batch"] == "auto"
    delay = env.get("SHIFTWATCH__INFERENCE__MAX_BATCH_DELAY_US", inference["max_batch_delay_us"])
    assert int(delay) == (500 if kustomization.name == "cuda" else 0)
    if kustomization.name == "cuda":
        assert env["SHIFTWATCH__MODEL__REQUIRE_CUDA"] == "true"
        assert sidecar["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert sidecar["image"].endswith(":cuda")


@pytest.fixture
def base_copy(tmp_path):
    target = tmp_path / "base"
    shutil.copytree(DEPLOY / "kubernetes" / "base", target)
    return target


def edit(path: Path, change) -> None:
    docs = list(yaml.safe_load_all(path.read_text()))
    change(docs[0])
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def test_the_shipped_manifests_pass():
    for k in KUSTOMIZATIONS:
        assert check.check_kustomization(k) == []


def test_an_unknown_field_fails_the_schema(base_copy):
    edit(base_copy / "deployment.yaml", lambda d: d["spec"]["template"]["spec"]["initContainers"][0].update(probes={}))
    problems = check.check_kustomization(base_copy)
    assert any("Deployment/photo-classifier" in p and "probes" in p for p in problems), problems


def test_a_dangling_secret_key_fails(base_copy):
    edit(base_copy / "secret.yaml", lambda d: d.update(stringData={"bearer": "x"}))
    problems = check.check_kustomization(base_copy)
    assert any("no key token in Secret shiftwatch-token" in p for p in problems), problems


def test_a_bad_scrape_interval_fails_the_servicemonitor_schema(base_copy):
    edit(base_copy / "servicemonitor.yaml", lambda d: d["spec"]["endpoints"][0].update(interval="15 seconds"))
    problems = check.check_kustomization(base_copy)
    assert any("ServiceMonitor/shiftwatch" in p and "interval" in p for p in problems), problems


def test_a_servicemonitor_port_the_service_lacks_fails(base_copy):
    edit(base_copy / "servicemonitor.yaml", lambda d: d["spec"]["endpoints"][0].update(port="metrics"))
    problems = check.check_kustomization(base_copy)
    assert any("endpoint port metrics is no Service port" in p for p in problems), problems


def test_a_kustomize_feature_the_checker_cannot_render_is_an_error(base_copy):
    edit(base_copy / "kustomization.yaml", lambda d: d.update(namePrefix="prod-"))
    with pytest.raises(check.CheckError, match="namePrefix"):
        check.render(base_copy)


def test_hadolint_fails_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get install curl\n")
    (problem,) = check.check_dockerfile(bad)
    assert "DL3007" in problem  # the latest tag
    assert "DL3008" in problem  # unpinned apt packages
