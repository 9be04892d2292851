#!/usr/bin/env python3
"""Schema-based testing of a live graft with Schemathesis.

Starts the graft binary with the fixture models and an API key on a free loopback port,
gives it something to find (a dataset, a trained model, a job), then lets Schemathesis
generate requests from the served /openapi.json for every operation. The run fails on a
5xx, on an answer the description does not list (status, media type, headers, body
schema), on a schema-violating request that is accepted, and on a protected operation
that answers without the key.

Usage: run_schemathesis.py --graft target/debug/graft --models tests/fixtures/generated/models
"""

import argparse
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from graft_process import free_port, wait_ready  # noqa: E402

KEY = "schemathesis-key"
# Every check but positive_data_acceptance: a request can match the schema and still name a
# dataset or base model that does not exist, which graft refuses (422) by design.
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "missing_required_header",
        "unsupported_method",
        "ignored_auth",
        "use_after_free",
        "ensure_resource_availability",
    ]
)



def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A solid-colour RGB PNG, written with the standard library only."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def class_folders_zip(per_class: int) -> bytes:
    """Two classes told apart by colour: dark images and light ones, each a different shade."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i in range(per_class):
            archive.writestr(f"shapes/dark/{i}.png", png(32, 32, (20 + i, 30, 40)))
            archive.writestr(f"shapes/light/{i}.png", png(32, 32, (220 - i, 210, 200)))
    return buffer.getvalue()


def request(url: str, method: str = "GET", body: bytes | None = None, content_type: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {KEY}"}
    if content_type:
        headers["Content-Type"] = content_type
    with urllib.request.urlopen(urllib.request.Request(url, body, headers, method=method), timeout=60) as answer:
        return json.loads(answer.read() or b"null")


def multipart(fields: dict[str, str], file_field: str, file_name: str, data: bytes) -> tuple[bytes, str]:
    boundary = "graftboundary7MA4YWxkTrZu0gW"
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{file_name}"\r\n'
        f"Content-Type: application/zip\r\n\r\n".encode()
        + data
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"



def model_dir(fixtures: str, work: str) -> str:
    """The fixture models, plus `spare` (a second manifest of tiny_nhwc): the load and unload
    operations get `spare`, so that unloading does not turn every later inference request
    into a 503 `model-unloaded`."""
    folder = os.path.join(work, "models")
    os.makedirs(folder)
    for name in os.listdir(fixtures):
        os.symlink(os.path.abspath(os.path.join(fixtures, name)), os.path.join(folder, name))
    with open(os.path.join(fixtures, "tiny_nhwc.toml")) as manifest:
        text = manifest.read().replace("fixture: NHWC", "spare: NHWC")
    with open(os.path.join(folder, "spare.toml"), "w") as spare:
        spare.write(text)
    return folder


def seed_data(base: str) -> dict[str, list[str]]:
    """A dataset, a model trained on it and its job: ids for the operations that need one."""
    body, content_type = multipart({"name": "shapes", "min_images_per_class": "5", "seed": "1"}, "archive",
                                   "shapes.zip", class_folders_zip(12))
    dataset = request(f"{base}/v1/datasets", "POST", body, content_type)
    job = request(f"{base}/v1/jobs", "POST", json.dumps({"dataset": dataset["id"], "base_model": "tiny_nchw",
                                                         "name": "shapes"}).encode(), "application/json")
    deadline = time.monotonic() + 120
    while job["state"] not in ("succeeded", "failed", "cancelled"):
        if time.monotonic() > deadline:
            sys.exit(f"the seed job did not finish: {job}")
        time.sleep(0.5)
        job = request(f"{base}/v1/jobs/{job['id']}")
    if job["state"] != "succeeded":
        sys.exit(f"the seed job did not succeed: {job}")
    return {"datasets": [dataset["id"]], "jobs": [job["id"]], "models": ["tiny_nchw", "tiny_nhwc", "shapes"]}


def config(ids: dict[str, list[str]], path: str) -> None:
    """Schemathesis' config: the key, and the known ids offered for path parameters half the time."""
    values = lambda name: json.dumps(ids[name])  # noqa: E731 - TOML arrays are JSON arrays of strings
    text = f"""
headers = {{ Authorization = "Bearer {KEY}" }}

[dictionaries.models]
values = {values("models")}

[dictionaries.datasets]
values = {values("datasets")}

[dictionaries.jobs]
values = {values("jobs")}

[dictionaries.spare]
values = ["spare"]

[[operations]]
include-path-regex = "^/v1/models/[{{]model[}}](/classify|/localize|/onnx)?$|^/v2/models/[{{]model[}}]"
parameters = {{ "path.model" = {{ dictionary = "models", probability = 0.5 }} }}

[[operations]]
include-path-regex = "^/v1/models/[{{]model[}}]/(load|unload)$"
parameters = {{ "path.model" = {{ dictionary = "spare", probability = 0.5 }} }}

[[operations]]
include-path-regex = "^/v1/datasets/"
parameters = {{ "path.id" = {{ dictionary = "datasets", probability = 0.5 }} }}

[[operations]]
include-path-regex = "^/v1/jobs/"
parameters = {{ "path.id" = {{ dictionary = "jobs", probability = 0.5 }} }}
"""
    with open(path, "w") as f:
        f.write(text)


def print_answers(base: str) -> None:
    """What graft answered, by route and status, from its own /metrics: shows which
    operations the generated requests reached past the model lookup."""
    import collections
    import re

    with urllib.request.urlopen(f"{base}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    counts: dict[tuple[str, str], float] = collections.defaultdict(float)
    for line in text.splitlines():
        match = re.match(r'graft_http_requests_total\{(.*)\} (\S+)$', line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
            counts[(labels["route"], labels["status"])] += float(match.group(2))
    print("# graft's answers (graft_http_requests_total) by route and status")
    for (route, status), n in sorted(counts.items()):
        print(f"{route:32} {status} {int(n):6}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graft", required=True)
    parser.add_argument("--models", required=True)
    parser.add_argument("--st", default=os.path.join(os.path.dirname(sys.executable), "st"))
    parser.add_argument("--max-examples", type=int, default=25, help="per operation and phase")
    parser.add_argument("--seed", default="20261207", help="Schemathesis' seed, for a repeatable run")
    parser.add_argument("--report-dir", default=None, help="keep the JUnit report here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="graft-schemathesis-") as work:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log_path = os.path.join(work, "graft.log")
        with open(log_path, "w") as log:
            server = subprocess.Popen(
                [args.graft, "serve", "--listen", f"127.0.0.1:{port}", "--model-dir", model_dir(args.models, work),
                 "--data-dir", os.path.join(work, "data"), "--api-key", KEY],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": "warn"},
            )
        try:
            wait_ready(base, server, 120)
            ids = seed_data(base)
            config_path = os.path.join(work, "schemathesis.toml")
            config(ids, config_path)
            # Load and unload run last, on their own: an unloaded model answers 503
            # `model-unloaded` by design, which Schemathesis would count as a server error in
            # any operation that followed (it reuses names it saw in answers).
            returncode = 0
            for name, selection in [("every operation but load and unload", "--exclude-path-regex"),
                                    ("load and unload", "--include-path-regex")]:
                command = [
                    args.st, "--config-file", config_path, "run", f"{base}/openapi.json",
                    selection, "/(load|unload)$",
                    "--checks", CHECKS, "--phases", "examples,coverage,fuzzing",
                    "--max-examples", str(args.max_examples), "--seed", args.seed, "--workers", "2",
                    "--request-timeout", "60", "--generation-database", ":memory:",
                    "--report", "junit", "--report-dir", os.path.join(args.report_dir or work, name.split()[0]),
                ]
                print(f"# {name}\n$", " ".join(command), flush=True)
                # In the scratch folder: Schemathesis keeps a cache where it runs.
                returncode = returncode or subprocess.run(command, cwd=work).returncode
            print_answers(base)
            if server.poll() is not None:
                print(f"graft exited during the run ({server.returncode})", file=sys.stderr)
                returncode = returncode or 1
            if returncode != 0:
                with open(log_path) as log:
                    print("--- graft's log (last 40 lines) ---\n" + "".join(log.readlines()[-40:]), file=sys.stderr)
            return returncode
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()


if __name__ == "__main__":
    sys.exit(main())
