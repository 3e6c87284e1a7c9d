"""Offline checks of the deployment files (`make check-deploy`).

- Dockerfiles: hadolint, every rule on (no ignores).
- Kubernetes: each kustomization under deploy/kubernetes/ is rendered here (the subset of
  kustomize the files use: resources, labels, images, RFC 6902 patches; any other key is an
  error, so nothing is silently left out), every object is validated against the Kubernetes API
  schemas of the oldest and newest supported releases (kubernetes-validate, strict: unknown
  fields fail), the ServiceMonitor against the hand-written schema in
  deploy/kubernetes/schemas/, and the references between objects are followed (config map,
  secret and claim names and keys, service selectors and named ports, probe ports, the
  Prometheus annotations). When `kubectl` is installed, its `kustomize` output must equal ours.

usage: check.py [--dockerfile FILE]... [--kustomization DIR]...  (defaults: every one in deploy/)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

DEPLOY = Path(__file__).resolve().parent
# Native sidecars (restartPolicy: Always on an init container) need 1.29; the newest schemas
# kubernetes-validate ships are checked too.
KUBERNETES_VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())
SERVICEMONITOR_SCHEMA = DEPLOY / "kubernetes" / "schemas" / "servicemonitor-v1.json"
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "labels", "images", "patches"}


class CheckError(Exception):
    pass


# ---------------------------------------------------------------- rendering


def load_documents(path: Path) -> list[dict]:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def render(directory: Path) -> list[dict]:
    """The objects `kubectl kustomize directory` would print, in resource order."""
    kfile = directory / "kustomization.yaml"
    (k,) = load_documents(kfile)
    unknown = set(k) - KUSTOMIZATION_KEYS
    if unknown:
        raise CheckError(f"{kfile}: keys this checker does not render: {sorted(unknown)}")
    objects: list[dict] = []
    for entry in k.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            objects.extend(render(path))
        else:
            objects.extend(load_documents(path))
    for label in k.get("labels", []):
        if set(label) - {"pairs"}:
            raise CheckError(f"{kfile}: only `labels: - pairs:` is rendered here, got {label}")
        for obj in objects:
            obj.setdefault("metadata", {}).setdefault("labels", {}).update(label["pairs"])
    for image in k.get("images", []):
        for obj in objects:
            for container in containers(obj):
                set_image(container, image)
    for patch in k.get("patches", []):
        ops = load_documents(directory / patch["path"])[0]
        target = patch["target"]
        matched = [
            o
            for o in objects
            if o["kind"] == target["kind"] and o["metadata"]["name"] == target["name"]
        ]
        if not matched:
            raise CheckError(f"{kfile}: patch {patch['path']} matches no object ({target})")
        for obj in matched:
            apply_json_patch(obj, ops, f"{directory / patch['path']}")
    return objects


def containers(obj: dict) -> list[dict]:
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("initContainers", []) + spec.get("containers", [])


def set_image(container: dict, image: dict) -> None:
    ref = container["image"]
    name, tag = ref.rsplit(":", 1) if ":" in ref.rsplit("/", 1)[-1] else (ref, None)
    if name != image["name"]:
        return
    name = image.get("newName", name)
    tag = image.get("newTag", tag)
    container["image"] = f"{name}:{tag}" if tag else name


def apply_json_patch(doc: dict, ops: list[dict], where: str) -> None:
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent[p]
        last = parts[-1]
        kind = op["op"]
        if kind == "add" and isinstance(parent, list):
            parent.insert(len(parent) if last == "-" else int(last), op["value"])
        elif kind in ("add", "replace"):
            if kind == "replace" and last not in parent:
                raise CheckError(f"{where}: replace of missing {op['path']}")
            parent[last] = op["value"]
        elif kind == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        else:
            raise CheckError(f"{where}: JSON patch op `{kind}` is not rendered here")


def kubectl_render(directory: Path) -> list[dict] | None:
    if shutil.which("kubectl") is None:
        return None
    out = subprocess.run(
        ["kubectl", "kustomize", str(directory)], check=True, capture_output=True, text=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d is not None]


def shown(path: Path) -> str:
    """A path relative to the repository when it is inside it."""
    try:
        return str(path.resolve().relative_to(DEPLOY.parent))
    except ValueError:
        return str(path)


def identity(obj: dict) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


# ---------------------------------------------------------------- validation


def validate_schemas(objects: list[dict]) -> list[str]:
    problems = []
    monitor_schema = json.loads(SERVICEMONITOR_SCHEMA.read_text())
    for obj in objects:
        name = "%s/%s" % identity(obj)
        if obj["apiVersion"] == "monitoring.coreos.com/v1":
            if obj["kind"] != "ServiceMonitor":
                problems.append(f"{name}: no schema for {obj['apiVersion']} {obj['kind']}")
                continue
            for error in jsonschema.Draft202012Validator(monitor_schema).iter_errors(obj):
                problems.append(f"{name}: {'/'.join(map(str, error.absolute_path))}: {error.message}")
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = "/".join(map(str, e.absolute_path))
                problems.append(f"{name} (Kubernetes {version}): {path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                problems.append(f"{name} (Kubernetes {version}): {e}")
    return problems


def check_references(objects: list[dict]) -> list[str]:
    """What the schemas cannot see: names and ports that must agree across objects."""
    problems = []
    by_kind: dict[str, dict[str, dict]] = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = obj

    def keys_of(kind: str, name: str) -> set[str] | None:
        obj = by_kind.get(kind, {}).get(name)
        if obj is None:
            return None
        return set(obj.get("data", {})) | set(obj.get("stringData", {}))

    for deploy in by_kind.get("Deployment", {}).values():
        where = f"Deployment/{deploy['metadata']['name']}"
        pod = deploy["spec"]["template"]
        selector = deploy["spec"]["selector"]["matchLabels"]
        if not matches(selector, pod["metadata"].get("labels", {})):
            problems.append(f"{where}: selector {selector} does not match the pod labels")
        for volume in pod["spec"].get("volumes", []):
            for kind, field, key in (
                ("ConfigMap", "configMap", "name"),
                ("Secret", "secret", "secretName"),
                ("PersistentVolumeClaim", "persistentVolumeClaim", "claimName"),
            ):
                if field in volume and volume[field][key] not in by_kind.get(kind, {}):
                    problems.append(f"{where}: volume {volume['name']}: no {kind} {volume[field][key]}")
        volume_names = {v["name"] for v in pod["spec"].get("volumes", [])}
        all_ports = {}
        for c in containers(deploy):
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", []) if "name" in p}
            all_ports.update(ports)
            for mount in c.get("volumeMounts", []):
                if mount["name"] not in volume_names:
                    problems.append(f"{where}: {c['name']} mounts unknown volume {mount['name']}")
            for env in c.get("env", []):
                ref = env.get("valueFrom", {})
                for kind, field in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                    if field in ref:
                        keys = keys_of(kind, ref[field]["name"])
                        if keys is None or ref[field]["key"] not in keys:
                            problems.append(
                                f"{where}: {c['name']} env {env['name']}: no key "
                                f"{ref[field]['key']} in {kind} {ref[field]['name']}"
                            )
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                port = c.get(probe, {}).get("httpGet", {}).get("port")
                if isinstance(port, str) and port not in ports:
                    problems.append(f"{where}: {c['name']} {probe} port {port} is not a port of it")
        annotations = pod["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") == "true":
            port = int(annotations.get("prometheus.io/port", "0"))
            if port not in all_ports.values():
                problems.append(f"{where}: prometheus.io/port {port} is no container port")
        for cm in by_kind.get("ConfigMap", {}).values():
            for key, text in cm.get("data", {}).items():
                if key.endswith(".toml"):
                    try:
                        tomllib.loads(text)
                    except tomllib.TOMLDecodeError as e:
                        problems.append(f"ConfigMap/{cm['metadata']['name']}: {key}: {e}")

    pods = [d["spec"]["template"] for d in by_kind.get("Deployment", {}).values()]
    for svc in by_kind.get("Service", {}).values():
        where = f"Service/{svc['metadata']['name']}"
        selected = [p for p in pods if matches(svc["spec"]["selector"], p["metadata"]["labels"])]
        if not selected:
            problems.append(f"{where}: selector matches no pod template")
        names = {
            p["name"]
            for pod in selected
            for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]
            for p in c.get("ports", [])
            if "name" in p
        }
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort")
            if isinstance(target, str) and target not in names:
                problems.append(f"{where}: targetPort {target} is not a named container port")
    for sm in by_kind.get("ServiceMonitor", {}).values():
        where = f"ServiceMonitor/{sm['metadata']['name']}"
        services = [
            s
            for s in by_kind.get("Service", {}).values()
            if matches(sm["spec"]["selector"]["matchLabels"], s["metadata"].get("labels", {}))
        ]
        if not services:
            problems.append(f"{where}: selector matches no Service")
        port_names = {p["name"] for s in services for p in s["spec"]["ports"]}
        for endpoint in sm["spec"]["endpoints"]:
            if endpoint.get("port") not in port_names:
                problems.append(f"{where}: endpoint port {endpoint.get('port')} is no Service port")
    return problems


def matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def check_kustomization(directory: Path) -> list[str]:
    objects = render(directory)
    problems = validate_schemas(objects) + check_references(objects)
    theirs = kubectl_render(directory)
    if theirs is None:
        print(f"  {shown(directory)}: kubectl not installed, render not compared")
    else:
        ours_by_id = {identity(o): o for o in objects}
        theirs_by_id = {identity(o): o for o in theirs}
        if ours_by_id != theirs_by_id:
            differing = sorted(
                set(ours_by_id) ^ set(theirs_by_id)
                | {i for i in set(ours_by_id) & set(theirs_by_id) if ours_by_id[i] != theirs_by_id[i]}
            )
            problems.append(f"{directory}: render differs from `kubectl kustomize` in {differing}")
    kinds = ", ".join("%s/%s" % identity(o) for o in objects)
    print(f"  {shown(directory)}: {len(objects)} objects ({kinds})")
    return problems


def check_dockerfile(path: Path) -> list[str]:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, "--no-color", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        return [f"{path}: hadolint:\n{result.stdout}{result.stderr}"]
    return []


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dockerfile", action="append", type=Path)
    parser.add_argument("--kustomization", action="append", type=Path)
    args = parser.parse_args(argv)
    dockerfiles = args.dockerfile or sorted((DEPLOY / "docker").glob("Dockerfile*"))
    dockerfiles = [d for d in dockerfiles if d.suffix != ".dockerignore"]
    kustomizations = args.kustomization or sorted(
        p.parent for p in (DEPLOY / "kubernetes").glob("*/kustomization.yaml")
    )
    problems: list[str] = []
    print("Dockerfiles (hadolint):")
    for d in dockerfiles:
        found = check_dockerfile(d)
        print(f"  {shown(d)}: {'ok' if not found else 'FAILED'}")
        problems += found
    print(f"Kubernetes (schemas {', '.join(KUBERNETES_VERSIONS)}, strict):")
    for k in kustomizations:
        try:
            problems += check_kustomization(k)
        except CheckError as e:
            problems.append(str(e))
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    print(f"deploy check: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
