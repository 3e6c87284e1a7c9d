"""Check a relabel package written by shiftwatch (src/relabel/export.rs) the way Label Studio
would read it: tasks.json against a JSON Schema of Label Studio's task import format, the
labeling config in label-studio.xml, the images and manifest.csv. Exits 1 on the first failure
with a message saying what is wrong.

usage: check_label_studio.py PACKAGE_DIR [IMAGE_URL_PREFIX]

Each task's image URL must be IMAGE_URL_PREFIX (default Label Studio's local-files form,
`/data/local-files/?d=`) followed by the image's path relative to the package's parent folder
(the export root, Label Studio's LOCAL_FILES_DOCUMENT_ROOT): `<package>/images/<file>`.

Prints one JSON line on success: {"ok": true, "tasks": ..., "images": ..., "labels": ...,
"manifest_rows": ...}.
"""

import csv
import hashlib
import json
import os
import sys
import xml.etree.ElementTree as ET

import jsonschema

# Label Studio's task import format as shiftwatch uses it: each task's data names the image, and
# one prediction per task pre-annotates it with a single choice.
TASKS_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "array",
    "items": {
        "type": "object",
        "required": ["data", "predictions"],
        "properties": {
            "data": {
                "type": "object",
                "required": ["image", "request_id", "score", "reasons", "model_version"],
                "properties": {
                    "image": {"type": "string", "minLength": 1},
                    "request_id": {"type": "string", "minLength": 1},
                    "score": {"type": "number"},
                    "reasons": {"type": "string"},
                    "model_version": {"type": "string"},
                },
            },
            "predictions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["model_version", "score", "result"],
                    "properties": {
                        "model_version": {"type": "string"},
                        "score": {"type": "number"},
                        "result": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["from_name", "to_name", "type", "value"],
                                "properties": {
                                    "from_name": {"type": "string", "minLength": 1},
                                    "to_name": {"type": "string", "minLength": 1},
                                    "type": {"const": "choices"},
                                    "value": {
                                        "type": "object",
                                        "required": ["choices"],
                                        "properties": {
                                            "choices": {
                                                "type": "array",
                                                "minItems": 1,
                                                "items": {"type": "string"},
                                            }
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}

MANIFEST_COLUMNS = [
    "request_id",
    "sha256",
    "score",
    "reasons",
    "predicted_label",
    "confidence",
    "margin",
    "entropy",
    "model_version",
]


class Failure(Exception):
    pass


def check(condition, message):
    if not condition:
        raise Failure(message)


def read_config(path):
    """The labeling config: (Image name, Choices name, Choices toName, [Choice values])."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        raise Failure(f"{path}: not a readable XML document: {e}")
    check(root.tag == "View", f"{path}: the root element is <{root.tag}>, not <View>")
    images = root.findall("Image")
    check(len(images) == 1, f"{path}: expected one <Image>, found {len(images)}")
    choices = root.findall("Choices")
    check(len(choices) == 1, f"{path}: expected one <Choices>, found {len(choices)}")
    image, control = images[0], choices[0]
    check(image.get("value") == "$image", f"{path}: <Image value> is {image.get('value')!r}, not '$image'")
    for attribute in ("name", "toName"):
        check(control.get(attribute), f"{path}: <Choices> has no {attribute}")
    check(image.get("name"), f"{path}: <Image> has no name")
    check(
        control.get("toName") == image.get("name"),
        f"{path}: <Choices toName={control.get('toName')!r}> does not name the <Image name={image.get('name')!r}>",
    )
    values = [c.get("value") for c in control.findall("Choice")]
    check(values, f"{path}: <Choices> lists no <Choice>")
    check(all(values), f"{path}: a <Choice> has no value")
    check(len(set(values)) == len(values), f"{path}: a <Choice value> appears twice")
    return image.get("name"), control.get("name"), control.get("toName"), values


def inside(package, relative):
    """The real path of a path relative to the package's parent, or None when it leads
    outside the package."""
    if os.path.isabs(relative):
        return None
    real = os.path.realpath(os.path.join(os.path.dirname(os.path.realpath(package)), relative))
    return real if real.startswith(os.path.realpath(package) + os.sep) else None


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_package(package, prefix):
    check(os.path.isdir(package), f"{package}: not a directory")
    tasks_path = os.path.join(package, "tasks.json")
    try:
        with open(tasks_path, encoding="utf-8") as f:
            tasks = json.load(f)
    except (OSError, ValueError) as e:
        raise Failure(f"{tasks_path}: not readable JSON: {e}")
    try:
        jsonschema.validate(tasks, TASKS_SCHEMA)
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path)
        raise Failure(f"{tasks_path}: at /{where}: {e.message}")

    image_name, choices_name, to_name, labels = read_config(os.path.join(package, "label-studio.xml"))
    known = set(labels)
    images_dir = os.path.realpath(os.path.join(package, "images"))
    referenced = set()
    for n, task in enumerate(tasks):
        image = task["data"]["image"]
        check(image.startswith(prefix), f"task {n}: image URL {image!r} does not start with {prefix!r}")
        real = inside(package, image[len(prefix):])
        check(real is not None, f"task {n}: image {image!r} is outside the package")
        check(os.path.isfile(real), f"task {n}: image {image!r} is not a file in the package")
        check(
            os.path.dirname(real) == images_dir,
            f"task {n}: image {image!r} is not directly under images/",
        )
        referenced.add(real)
        check(task["predictions"], f"task {n}: no prediction")
        check(all(p["result"] for p in task["predictions"]), f"task {n}: a prediction has no result")
        for prediction in task["predictions"]:
            for result in prediction["result"]:
                check(
                    result["from_name"] == choices_name,
                    f"task {n}: from_name {result['from_name']!r} is not the config's Choices name {choices_name!r}",
                )
                check(
                    result["to_name"] == to_name == image_name,
                    f"task {n}: to_name {result['to_name']!r} is not the config's Image name {image_name!r}",
                )
                for choice in result["value"]["choices"]:
                    check(choice in known, f"task {n}: choice {choice!r} is not a <Choice value> of the config")

    check(os.path.isdir(images_dir), f"{package}: no images/ directory")
    on_disk = {os.path.realpath(os.path.join(images_dir, name)) for name in os.listdir(images_dir)}
    unreferenced = sorted(os.path.basename(p) for p in on_disk - referenced)
    check(not unreferenced, f"images/ holds files no task references: {unreferenced[:5]}")

    manifest_path = os.path.join(package, "manifest.csv")
    try:
        with open(manifest_path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise Failure(f"{manifest_path}: not readable CSV: {e}")
    check(rows and rows[0] == MANIFEST_COLUMNS, f"{manifest_path}: header {rows[:1]} is not {MANIFEST_COLUMNS}")
    body = rows[1:]
    check(len(body) == len(tasks), f"{manifest_path}: {len(body)} rows for {len(tasks)} tasks")
    sha_cache = {}
    for n, (row, task) in enumerate(zip(body, tasks)):
        check(len(row) == len(MANIFEST_COLUMNS), f"{manifest_path}: row {n + 1} has {len(row)} fields")
        record = dict(zip(MANIFEST_COLUMNS, row))
        check(
            record["request_id"] == task["data"]["request_id"],
            f"{manifest_path}: row {n + 1} is {record['request_id']!r}, task {n} is {task['data']['request_id']!r}",
        )
        real = inside(package, task["data"]["image"][len(prefix):])
        if real not in sha_cache:
            sha_cache[real] = sha256_of(real)
        check(
            record["sha256"] == sha_cache[real],
            f"{manifest_path}: row {n + 1} ({record['request_id']}): sha256 {record['sha256']} "
            f"is not that of {task['data']['image']} ({sha_cache[real]})",
        )
        check(
            os.path.basename(real).split(".")[0] == sha_cache[real],
            f"task {n}: image file {task['data']['image']} is not named by its sha256",
        )
        choices = task["predictions"][0]["result"][0]["value"]["choices"]
        check(
            [record["predicted_label"]] == choices,
            f"{manifest_path}: row {n + 1}: label {record['predicted_label']!r}, task pre-annotation {choices}",
        )
        for column in ("score", "confidence", "margin", "entropy"):
            try:
                float(record[column])
            except ValueError:
                raise Failure(f"{manifest_path}: row {n + 1}: {column} {record[column]!r} is not a number")

    return {
        "ok": True,
        "tasks": len(tasks),
        "images": len(on_disk),
        "labels": len(labels),
        "manifest_rows": len(body),
    }


def main(argv):
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 1
    prefix = argv[2] if len(argv) == 3 else "/data/local-files/?d="
    try:
        summary = check_package(argv[1], prefix)
    except Failure as e:
        print(f"check_label_studio: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
