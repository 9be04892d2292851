#!/usr/bin/env python3
"""Memory of a graft serving several models, layout by layout, measured from outside.

For each layout it starts `graft serve` on a folder holding only the given models, and
reports: the resident memory (VmRSS) once /readyz says ready, throughput with 8 concurrent
clients on each model (a JPEG, top_k=1), the memory after that load, and — for the first
layout — the memory after `--cycles` unload/load cycles over the models
(`POST /v1/models/{m}/unload`, then `/load`). Ratios are against the first layout in the
same run; the sizes of the model files are printed for the `÷ model files` column. With
`--c1-seconds`, also one client at a time per model (what the lone-batch session is for).

Then, unless `--budget-share 0`, a server with `--max-model-memory` set to that share of the
first layout's idle RSS takes `--budget-requests` requests from 3 clients that go round the
models: it reports how many were answered 200, their latency, the loads and unloads to make
room, the most the loaded models held at once (from GET /v1/models) and the highest RSS.

Usage: memory.py --graft target/release/graft --models models --names efficientnet_lite0,resnet50,xception
"""

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from graft_process import free_port, wait_ready  # noqa: E402

LAYOUTS = {
    "default": [],
    "--share-weights false": ["--share-weights", "false"],
    "--ort-arena (before)": ["--ort-arena"],
    "--model-instances 1": ["--model-instances", "1"],
    "--intra-threads 1 (no lone-batch session)": ["--intra-threads", "1"],
    "--model-instances 1 --ort-arena": ["--model-instances", "1", "--ort-arena"],
}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def throughput(port: int, model: str, image: bytes, seconds: float, clients: int = 8) -> float:
    done, stop, lock = [0], time.monotonic() + seconds, threading.Lock()

    def client():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while time.monotonic() < stop:
            connection.request("POST", f"/v1/models/{model}/classify?top_k=1", image, {"content-type": "image/jpeg"})
            answer = connection.getresponse()
            answer.read()
            if answer.status != 200:
                sys.exit(f"{model}: HTTP {answer.status}")
            with lock:
                done[0] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done[0] / (time.monotonic() - started)


def get_json(port: int, path: str):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("GET", path)
    answer = connection.getresponse()
    return json.loads(answer.read())


def round_robin_under_budget(port: int, pid: int, names: list[str], image: bytes, requests: int, budget: int):
    """3 clients, each going round the models from its own offset; returns a report line."""
    statuses, latencies, lock, stop = {}, [], threading.Lock(), threading.Event()
    peaks = {"rss": 0.0, "models": 0}

    def client(offset: int):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for i in range(offset, requests, 3):
            name = names[(i // 3 + offset) % len(names)]
            started = time.monotonic()
            connection.request("POST", f"/v1/models/{name}/classify?top_k=1", image, {"content-type": "image/jpeg"})
            answer = connection.getresponse()
            answer.read()
            with lock:
                statuses[answer.status] = statuses.get(answer.status, 0) + 1
                latencies.append(time.monotonic() - started)

    def watch():
        while not stop.is_set():
            peaks["rss"] = max(peaks["rss"], rss_mb(pid))
            held = sum(m.get("memory", {}).get("bytes", 0) for m in get_json(port, "/v1/models")["models"])
            peaks["models"] = max(peaks["models"], held)
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    clients = [threading.Thread(target=client, args=(offset,)) for offset in range(3)]
    for t in clients:
        t.start()
    for t in clients:
        t.join()
    stop.set()
    watcher.join()
    models = [m for m in get_json(port, "/v1/models")["models"] if m["name"] in names]
    loads = sum(m["memory"]["loads"] for m in models)
    evictions = sum(m["memory"]["evictions"] for m in models)
    latencies.sort()
    return (f"{statuses.get(200, 0)} of {requests} answered 200 ({dict(sorted(statuses.items()))}); latency "
            f"median {latencies[len(latencies) // 2]:.2f} s, max {latencies[-1]:.1f} s; {loads} loads, "
            f"{evictions} unloads to make room; the loaded models held at most {peaks['models'] / 1e6:.0f} MB "
            f"(budget {budget / 1e6:.0f} MB); highest RSS {peaks['rss']:.0f} MB")


def post(port: int, path: str):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    connection.request("POST", path, b"")
    answer = connection.getresponse()
    answer.read()
    if answer.status >= 300:
        sys.exit(f"POST {path}: HTTP {answer.status}")


def model_folder(models: Path, names: list[str], into: Path) -> int:
    total = 0
    for name in names:
        manifest = models / f"{name}.toml"
        spec = tomllib.loads(manifest.read_text())
        shutil.copy(manifest, into / manifest.name)
        onnx = models / spec["file"]
        os.symlink(onnx.resolve(), into / spec["file"])
        total += onnx.stat().st_size
        labels = spec.get("output", {}).get("labels")
        if labels and not (into / labels).exists():
            shutil.copy(models / labels, into / labels)
    return total


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--graft", default="target/release/graft")
    parser.add_argument("--models", default="models")
    parser.add_argument("--names", default="efficientnet_lite0,resnet50,xception")
    parser.add_argument("--image", default="tests/fixtures/generated/images/china.jpg")
    parser.add_argument("--seconds", type=float, default=12, help="of load per model and layout")
    parser.add_argument("--cycles", type=int, default=51, help="unload/load cycles for the first layout")
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help="which of: " + ", ".join(LAYOUTS))
    parser.add_argument("--budget-share", type=float, default=0.6,
                        help="--max-model-memory as a share of the first layout's idle RSS (0: no budget run)")
    parser.add_argument("--budget-requests", type=int, default=60)
    parser.add_argument("--c1-seconds", type=float, default=0,
                        help="also measure one client at a time for this long per model (0: not)")
    args = parser.parse_args()
    names = args.names.split(",")
    image = Path(args.image).read_bytes()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        folder = work / "models"
        folder.mkdir()
        files = model_folder(Path(args.models), names, folder)
        print(f"models {', '.join(names)}: {files / 1e6:.0f} MB of ONNX files", flush=True)
        for index, layout in enumerate(args.layouts.split(",")):
            port = free_port()
            data = work / f"data-{index}"
            command = [args.graft, "serve", "--listen", f"127.0.0.1:{port}", "--model-dir", str(folder),
                       "--data-dir", str(data), "--workers", "0", *LAYOUTS[layout]]
            with open(work / f"graft-{index}.log", "w") as log:
                server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
                try:
                    wait_ready(f"http://127.0.0.1:{port}", server, 600)
                    # jemalloc hands freed pages back within about a second; RSS is read after that.
                    time.sleep(3)
                    idle = rss_mb(server.pid)
                    held = {m["name"]: m.get("memory", {}).get("bytes", 0) / 1e6
                            for m in get_json(port, "/v1/models")["models"]}
                    speeds = {name: throughput(port, name, image, args.seconds) for name in names}
                    if args.c1_seconds > 0:
                        lone = {name: throughput(port, name, image, args.c1_seconds, clients=1) for name in names}
                        print(f"{layout}: c=1 " + ", ".join(f"{n} {s:.1f}/s" for n, s in lone.items()), flush=True)
                    time.sleep(3)
                    loaded = rss_mb(server.pid)
                    churn = None
                    if index == 0 and args.cycles:
                        before = loaded
                        for cycle in range(args.cycles):
                            name = names[cycle % len(names)]
                            post(port, f"/v1/models/{name}/unload")
                            post(port, f"/v1/models/{name}/load")
                        for name in names:
                            throughput(port, name, image, 2)
                        time.sleep(3)
                        churn = (before, rss_mb(server.pid))
                    rows.append((layout, idle, speeds, loaded, churn))
                    speed_text = ", ".join(f"{n} {s:.1f}/s" for n, s in speeds.items())
                    held_text = ", ".join(f"{n} {held.get(n, 0):.0f}" for n in names)
                    print(f"{layout}: idle {idle:.0f} MB ({idle * 1048576 / files:.2f}× files; the models hold "
                          f"{held_text} MB), {speed_text}, "
                          f"after load {loaded:.0f} MB" + (f", after {args.cycles} unload/load cycles "
                          f"{churn[1]:.0f} MB ({(churn[1] / churn[0] - 1) * 100:+.1f} %)" if churn else ""), flush=True)
                finally:
                    server.terminate()
                    server.wait(timeout=60)
        if args.budget_share > 0:
            budget = int(rows[0][1] * 1048576 * args.budget_share)
            port = free_port()
            command = [args.graft, "serve", "--listen", f"127.0.0.1:{port}", "--model-dir", str(folder),
                       "--data-dir", str(work / "data-budget"), "--workers", "0", "--max-model-memory", str(budget)]
            with open(work / "graft-budget.log", "w") as log:
                server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
                try:
                    wait_ready(f"http://127.0.0.1:{port}", server, 600)
                    report = round_robin_under_budget(port, server.pid, names, image, args.budget_requests, budget)
                    print(f"--max-model-memory {budget} ({args.budget_share:.0%} of the first layout's idle RSS): "
                          f"{report}", flush=True)
                finally:
                    server.terminate()
                    server.wait(timeout=60)
    base = rows[0]
    print("\n| layout | idle RSS | ÷ model files | after c=8 load | c=8 throughput ÷ first layout (" + ", ".join(names) + ") |")
    print("|---|---|---|---|---|")
    for layout, idle, speeds, loaded, _ in rows:
        ratios = " / ".join(f"{speeds[n] / base[2][n]:.2f}" for n in names)
        print(f"| {layout} | {idle:.0f} MB | {idle * 1048576 / files:.1f}× | {loaded:.0f} MB | {ratios} |")


if __name__ == "__main__":
    main()
