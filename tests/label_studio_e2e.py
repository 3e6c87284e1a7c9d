"""The relabeling loop against a real Label Studio (the pinned PyPI release), end to end.

Starts the sidecar (the debug binary) and Label Studio, each on a free loopback port with its own
folders, and stops both at the end, however it ends:

1. replays labeled bundled traffic (data/traffic/normal, data/traffic/rotation) through the
   sidecar and exports the candidates as a package (POST /v1/candidates/export);
2. in Label Studio (started with local-file serving on, its document root the sidecar's export
   folder, a user and API token made non-interactively): a project from the package's
   label-studio.xml, a Local Files storage on the package folder, tasks.json imported;
3. fetches every task's image through Label Studio: 200, an image, the package's bytes;
4. registers a webhook pointing at POST /v1/feedback/label-studio (bearer token in its headers),
   annotates half the tasks through Label Studio's API with their true labels (the webhook
   delivers each) and changes one annotation (ANNOTATION_UPDATED: a duplicate);
5. turns the webhook off, annotates the other half, exports the project as JSON and posts the
   export: the first half come back as duplicates, the second half matched;
6. checks shiftwatch_feedback_total{outcome="matched"} moved by exactly the tasks labeled,
   the monitor's labeled window holds exactly that many, and shiftwatch_labeled_accuracy is the
   accuracy of those labels against the served predictions.

usage: label_studio_e2e.py [--binary target/debug/shiftwatch] [--label-studio PATH] [--keep]

Prints a JSON summary (tasks imported, images served, labels matched by webhook and by export).
Exits 1 with a message on the first failure.
"""

import argparse
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SIDECAR_TOKEN = "label-studio-e2e-token-0123456789"
LS_USER = "e2e@shiftwatch.test"
LS_PASSWORD = "e2e-password-0123"
LS_TOKEN = "5f2a9c0e8b7d6a1f3e4c2b9a8d7e6f5a4b3c2d1e"
EXPORT_LIMIT = 60


class Failure(Exception):
    pass


def check(condition, message):
    if not condition:
        raise Failure(message)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, headers=None, timeout=60):
    """(status, headers, body bytes); a JSON body is encoded."""
    data = None
    headers = dict(headers or {})
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def json_ok(method, url, body=None, headers=None, expect=(200, 201)):
    status, _, data = http(method, url, body, headers)
    check(status in expect, f"{method} {url}: {status} {data[:500]!r}")
    return json.loads(data) if data else None


class Sidecar:
    def __init__(self, binary, work):
        config = work / "shiftwatch.toml"
        config.write_text(
            '[server]\nlisten = "127.0.0.1:0"\n[model]\nname = "digits"\npath = "models/digits.onnx"\n'
            '[logging]\nlevel = "warn"\n'
        )
        self.export_dir = work / "exports"
        self.export_dir.mkdir()
        env = dict(os.environ)
        env.update(
            {
                "SHIFTWATCH__LOG__DIR": str(work / "log"),
                "SHIFTWATCH__MONITOR__STATE_FILE": str(work / "window.json"),
                "SHIFTWATCH__MONITOR__EVALUATE_EVERY_SECONDS": "0.2",
                "SHIFTWATCH__CANDIDATES__DIR": str(work / "candidates"),
                "SHIFTWATCH__CANDIDATES__EXPORT_DIR": str(self.export_dir),
                "SHIFTWATCH__AUTH__TOKEN": SIDECAR_TOKEN,
            }
        )
        self.proc = subprocess.Popen(
            [str(binary), "serve", "--config", str(config)],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.url = None
        deadline = time.monotonic() + 120
        try:
            for line in self.proc.stdout:
                if line.startswith("shiftwatch listening on http://"):
                    self.url = "http://" + line.split("http://", 1)[1].strip()
                if line.strip() == "shiftwatch ready":
                    break
                check(time.monotonic() < deadline, "the sidecar did not become ready")
            check(self.url is not None, "the sidecar printed no listen address")
        except BaseException:
            self.proc.kill()
            self.proc.wait()
            raise
        # Keep draining stdout so the sidecar never blocks on it.
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    def auth(self):
        return {"Authorization": f"Bearer {SIDECAR_TOKEN}"}

    def metric(self, series):
        """The sum of the /metrics lines starting with `series` (name and leading labels)."""
        _, _, body = http("GET", self.url + "/metrics")
        return sum(float(line.rsplit(" ", 1)[1]) for line in body.decode().splitlines() if line.startswith(series))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class LabelStudio:
    def __init__(self, executable, work, document_root):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        data = work / "label-studio"
        data.mkdir()
        env = dict(os.environ)
        env.update(
            {
                "LABEL_STUDIO_BASE_DATA_DIR": str(data),
                "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
                "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
                # The webhook goes to the sidecar on loopback, which SSRF protection refuses.
                "SSRF_PROTECTION_ENABLED": "false",
                "LABEL_STUDIO_SSRF_PROTECTION_ENABLED": "false",
                # No usage reports: the test runs offline.
                "COLLECT_ANALYTICS": "false",
            }
        )
        self.log = open(work / "label-studio.log", "w")
        self.proc = subprocess.Popen(
            [
                str(executable),
                "start",
                "--no-browser",
                "--data-dir",
                str(data),
                "--port",
                str(self.port),
                "--host",
                self.url,
                "--internal-host",
                "127.0.0.1",
                "--username",
                LS_USER,
                "--password",
                LS_PASSWORD,
                "--user-token",
                LS_TOKEN,
                "--enable-legacy-api-token",
            ],
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.headers = {"Authorization": f"Token {LS_TOKEN}"}
        self.log_path = work / "label-studio.log"

    def wait_ready(self, limit=600):
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            check(self.proc.poll() is None, f"Label Studio exited; see {self.log_path}")
            try:
                status, _, _ = http("GET", self.url + "/api/projects", headers=self.headers, timeout=5)
                if status == 200:
                    return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(1)
        raise Failure(f"Label Studio did not answer within {limit} s; see {self.log_path}")

    def api(self, method, path, body=None, expect=(200, 201)):
        return json_ok(method, self.url + path, body, self.headers, expect)

    def stop(self):
        if self.proc.poll() is None:
            # Label Studio runs a server process group: stop all of it.
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def choice(label):
    return [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]


def wait_for(what, condition, limit=30):
    deadline = time.monotonic() + limit
    while not condition():
        check(time.monotonic() < deadline, f"timed out waiting for {what}")
        time.sleep(0.1)


def run(binary, label_studio, work):
    sidecar = Sidecar(binary, work)
    studio = None
    try:
        studio = LabelStudio(label_studio, work, sidecar.export_dir)
        return loop(sidecar, studio)
    finally:
        # Both stopped however the run ends (a Label Studio that cannot start included).
        if studio is not None:
            studio.stop()
        sidecar.stop()


def loop(sidecar, studio):
    # 1. Labeled traffic through the sidecar, then a package.
    truth = {}
    for folder in ("normal", "rotation"):
        with open(REPO / "data/traffic" / folder / "labels.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        for n, row in enumerate(rows):
            request_id = f"{folder}-{n:04d}"
            image = (REPO / "data/traffic" / folder / row["file"]).read_bytes()
            status, _, body = http(
                "POST",
                sidecar.url + "/v1/models/digits/classify",
                image,
                {"Content-Type": "image/png", "x-request-id": request_id},
            )
            check(status == 200, f"classify {request_id}: {status} {body[:200]!r}")
            truth[request_id] = (row["label"], json.loads(body)["predictions"][0]["label"])
    wait_for(
        "the candidate store",
        lambda: sidecar.metric("shiftwatch_candidates_stored{")
        + sidecar.metric("shiftwatch_candidates_skipped_total")
        >= len(truth),
        60,
    )
    export = json_ok(
        "POST",
        sidecar.url + "/v1/candidates/export",
        {"limit": EXPORT_LIMIT, "name": "batch-1"},
        sidecar.auth(),
    )
    package = Path(export["path"])
    tasks = json.loads((package / "tasks.json").read_text())
    check(len(tasks) == EXPORT_LIMIT, f"{len(tasks)} tasks in the package")

    # 2. The project, its Local Files storage and the import.
    started = time.monotonic()
    studio.wait_ready()
    startup_s = time.monotonic() - started
    project = studio.api(
        "POST",
        "/api/projects",
        {"title": "shiftwatch e2e", "label_config": (package / "label-studio.xml").read_text()},
    )
    pid = project["id"]
    studio.api(
        "POST",
        "/api/storages/localfiles",
        {"project": pid, "title": "package", "path": str(package), "use_blob_urls": False},
    )
    imported = studio.api("POST", f"/api/projects/{pid}/import", tasks)
    check(imported.get("task_count") == len(tasks), f"import: {imported}")
    listed = studio.api("GET", f"/api/tasks?project={pid}&page_size=1000")
    ls_tasks = listed["tasks"] if isinstance(listed, dict) else listed
    check(len(ls_tasks) == len(tasks), f"Label Studio lists {len(ls_tasks)} tasks")

    # 3. Every image through Label Studio.
    served = 0
    for task in ls_tasks:
        url = task["data"]["image"]
        check(url.startswith("/data/local-files/?d="), f"task {task['id']}: image URL {url!r}")
        status, headers, body = http("GET", studio.url + url, headers=studio.headers)
        check(status == 200, f"task {task['id']}: {url} answered {status}")
        check(
            (headers.get("Content-Type") or "").startswith("image/"),
            f"task {task['id']}: {url} is {headers.get('Content-Type')}",
        )
        relative = url[len("/data/local-files/?d=") :]
        check(body == (package.parent / relative).read_bytes(), f"task {task['id']}: other bytes than the package's")
        served += 1

    matched_before = sidecar.metric('shiftwatch_feedback_total{outcome="matched"')
    duplicate_before = sidecar.metric('shiftwatch_feedback_total{outcome="duplicate"')

    # 4. The webhook, and half the tasks labeled in Label Studio.
    webhook = studio.api(
        "POST",
        "/api/webhooks",
        {
            "project": pid,
            "url": sidecar.url + "/v1/feedback/label-studio",
            "headers": {"Authorization": f"Bearer {SIDECAR_TOKEN}"},
            "send_payload": True,
            "send_for_all_actions": False,
            "actions": ["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED"],
            "is_active": True,
        },
    )
    half = len(ls_tasks) // 2
    first, second = ls_tasks[:half], ls_tasks[half:]
    annotations = []
    for task in first:
        true_label = truth[task["data"]["request_id"]][0]
        a = studio.api(
            "POST",
            f"/api/tasks/{task['id']}/annotations",
            {"result": choice(true_label), "was_cancelled": False},
        )
        annotations.append(a)
    matched = lambda: sidecar.metric('shiftwatch_feedback_total{outcome="matched"')
    wait_for("the webhook's labels", lambda: matched() - matched_before >= len(first))
    by_webhook = matched() - matched_before
    check(by_webhook == len(first), f"matched moved by {by_webhook} for {len(first)} webhook labels")
    # A changed annotation arrives as ANNOTATION_UPDATED: the prediction is already labeled.
    task = first[0]
    studio.api(
        "PATCH",
        f"/api/annotations/{annotations[0]['id']}",
        {"result": choice(truth[task["data"]["request_id"]][0])},
    )
    duplicate = lambda: sidecar.metric('shiftwatch_feedback_total{outcome="duplicate"')
    wait_for("the update's webhook", lambda: duplicate() - duplicate_before >= 1)

    # 5. The rest labeled with the webhook off, delivered by posting the project's export.
    studio.api("PATCH", f"/api/webhooks/{webhook['id']}", {"is_active": False})
    for task in second:
        studio.api(
            "POST",
            f"/api/tasks/{task['id']}/annotations",
            {"result": choice(truth[task["data"]["request_id"]][0]), "was_cancelled": False},
        )
    check(matched() - matched_before == len(first), "the webhook was off, yet labels arrived")
    status, _, body = http("GET", studio.url + f"/api/projects/{pid}/export?exportType=JSON", headers=studio.headers)
    check(status == 200, f"export: {status} {body[:300]!r}")
    exported = json.loads(body)
    check(len(exported) == len(tasks), f"the export holds {len(exported)} tasks")
    status, _, body = http(
        "POST", sidecar.url + "/v1/feedback/label-studio", json.loads(body), sidecar.auth()
    )
    check(status == 202, f"posting the export: {status} {body[:500]!r}")
    answer = json.loads(body)
    outcomes = [r["outcome"] for r in answer["results"]]
    check(answer["payload"] == "export", f"payload {answer['payload']}")
    check(outcomes.count("matched") == len(second), f"export outcomes {outcomes}")
    check(outcomes.count("duplicate") == len(first), f"export outcomes {outcomes}")
    by_export = matched() - matched_before - by_webhook
    check(by_export == len(second), f"matched moved by {by_export} for {len(second)} exported labels")

    # 6. The labeled window: exactly these labels, and their accuracy.
    labeled_ids = [t["data"]["request_id"] for t in ls_tasks]
    expected_accuracy = sum(truth[i][0] == truth[i][1] for i in labeled_ids) / len(labeled_ids)

    def labeled():
        _, _, body = http("GET", sidecar.url + "/v1/monitor")
        return json.loads(body).get("labeled") or {}

    wait_for("the monitor's labeled window", lambda: labeled().get("n") == len(labeled_ids))
    wait_for(
        "shiftwatch_labeled_accuracy",
        lambda: abs(sidecar.metric('shiftwatch_labeled_accuracy{') - expected_accuracy) < 1e-6,
    )
    return {
        "ok": True,
        "label_studio_startup_seconds": round(startup_s, 1),
        "tasks_imported": imported["task_count"],
        "images_served": served,
        "labels_matched_by_webhook": int(by_webhook),
        "labels_matched_by_export": int(by_export),
        "duplicates_reported": {"webhook_update": 1, "export": outcomes.count("duplicate")},
        "labeled_window": labeled()["n"],
        "labeled_accuracy": expected_accuracy,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--binary", default=str(REPO / "target/debug/shiftwatch"))
    parser.add_argument("--label-studio", default=str(REPO / ".venv-label-studio/bin/label-studio"))
    parser.add_argument("--keep", action="store_true", help="keep the working folder (its path is printed)")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="shiftwatch-ls-")
    try:
        summary = run(Path(args.binary).absolute(), Path(args.label_studio).absolute(), Path(work))
    except Failure as e:
        log = Path(work) / "label-studio.log"
        tail = log.read_text()[-3000:] if log.exists() else ""
        print(f"label_studio_e2e: {e}\n--- Label Studio log (tail) ---\n{tail}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"working folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
