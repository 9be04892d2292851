#!/usr/bin/env python3
"""Published Open Inference Protocol clients against a live graft.

Starts the graft binary with the fixture models on a free loopback port and drives it with
`tritonclient.http` (Triton's own client, unchanged): health, server and model metadata,
FP32 inference as JSON and as binary tensors, BYTES tensors of encoded images, the
classification extension, async inference with many requests in flight, and the errors for an
unknown model and a bad shape. Every answer is compared with graft's `/v1/.../classify` on the
same images: the same top k, scores within 1e-6.

Usage: run_clients.py --graft target/debug/graft --models tests/fixtures/generated/models
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

IMAGES = ["img0.png", "img1.png", "china.jpg"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"graft exited with {server.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit("graft was not ready after 120 s")


def v1_scores(base: str, model: str, image: bytes, content_type: str) -> np.ndarray:
    """/v1's probabilities for every class, in class order."""
    request = urllib.request.Request(
        f"{base}/v1/models/{model}/classify?top_k=10", image, {"Content-Type": content_type}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        predictions = json.load(answer)["predictions"][0]
    scores = np.zeros(len(predictions), dtype=np.float64)
    for p in predictions:
        scores[p["index"]] = p["score"]
    return scores


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x.astype(np.float64) - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def check(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)
    print(f"ok  {what}", flush=True)


def run(base: str, host: str, fixtures: str) -> None:
    client = triton_http.InferenceServerClient(host)
    check(client.is_server_live() and client.is_server_ready(), "server live and ready")
    check(client.is_model_ready("tiny_nchw") and not client.is_model_ready("nope"), "model ready, unknown not")
    server = client.get_server_metadata()
    check(server["name"] == "graft" and "classification" in server["extensions"], f"server metadata {server}")
    meta = client.get_model_metadata("tiny_nchw")
    check(meta["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 3, 32, 32]}], "model metadata input")
    check(meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}], "model metadata output")

    # FP32 tensors: JSON and binary give the same logits.
    x = np.random.default_rng(7).standard_normal((4, 3, 32, 32)).astype(np.float32)
    answers = []
    for binary in (False, True):
        tensor = triton_http.InferInput("pixels", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        wanted = [triton_http.InferRequestedOutput("logits", binary_data=binary)]
        answers.append(client.infer("tiny_nchw", [tensor], outputs=wanted).as_numpy("logits"))
    check(answers[0].shape == (4, 10) and np.array_equal(answers[0], answers[1]), "FP32 as JSON and as binary agree")

    # Encoded images as a BYTES tensor, against /v1 on the same files.
    files = [open(os.path.join(fixtures, "images", name), "rb").read() for name in IMAGES]
    types = ["image/png" if name.endswith(".png") else "image/jpeg" for name in IMAGES]
    for model, output in (("tiny_nhwc", "probs"), ("tiny_nchw", "logits")):
        images = triton_http.InferInput("IMAGE", [len(files)], "BYTES")
        images.set_data_from_numpy(np.array(files, dtype=np.object_), binary_data=True)
        result = client.infer(model, [images], outputs=[
            triton_http.InferRequestedOutput(output, binary_data=True),
            triton_http.InferRequestedOutput(output, binary_data=False, class_count=3),
        ])
        # Both requested outputs share a name: the first answer is the tensor.
        scores = result.as_numpy(output)
        probabilities = softmax(scores) if output == "logits" else scores.astype(np.float64)
        for i, (image, kind) in enumerate(zip(files, types)):
            v1 = v1_scores(base, model, image, kind)
            check(np.abs(probabilities[i] - v1).max() < 1e-6, f"{model} {IMAGES[i]}: BYTES scores equal /v1's")
            check(list(np.argsort(-v1, kind="stable")[:5]) == list(np.argsort(-probabilities[i], kind="stable")[:5]),
                  f"{model} {IMAGES[i]}: the same top 5 as /v1")

    # The classification extension alone.
    images = triton_http.InferInput("IMAGE", [1], "BYTES")
    images.set_data_from_numpy(np.array([files[2]], dtype=np.object_), binary_data=True)
    result = client.infer("tiny_nchw", [images], outputs=[triton_http.InferRequestedOutput("logits", class_count=3)])
    top = [entry.decode().split(":") for entry in result.as_numpy("logits")[0]]
    v1 = v1_scores(base, "tiny_nchw", files[2], "image/jpeg")
    check([int(index) for _, index, _ in top] == list(np.argsort(-v1, kind="stable")[:3]), f"classification top 3 {top}")

    # Many requests in flight at once join the same batcher.
    tensor = triton_http.InferInput("pixels", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    pending = [client.async_infer("tiny_nchw", [tensor], request_id=str(i)) for i in range(32)]
    results = [p.get_result() for p in pending]
    check(all(np.array_equal(r.as_numpy("logits"), answers[1]) for r in results), "32 async requests answer alike")
    check([r.get_response()["id"] for r in results] == [str(i) for i in range(32)], "async answers echo their ids")

    # Errors come back as InferenceServerException with the status and graft's sentence.
    for model, tensor_shape, status in (("nope", (1, 3, 32, 32), "404"), ("tiny_nchw", (1, 3, 16, 16), "400")):
        bad = triton_http.InferInput("pixels", list(tensor_shape), "FP32")
        bad.set_data_from_numpy(np.zeros(tensor_shape, np.float32))
        try:
            client.infer(model, [bad])
            raise AssertionError(f"{model} {tensor_shape} was answered")
        except InferenceServerException as error:
            check(error.status() == status and error.message(), f"{model} {tensor_shape}: {status} {error.message()}")
    client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graft", required=True)
    parser.add_argument("--models", required=True)
    args = parser.parse_args()
    fixtures = os.path.dirname(os.path.abspath(args.models))
    with tempfile.TemporaryDirectory(prefix="graft-v2-clients-") as work:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log_path = os.path.join(work, "graft.log")
        with open(log_path, "w") as log:
            server = subprocess.Popen(
                [args.graft, "serve", "--listen", f"127.0.0.1:{port}", "--model-dir", args.models,
                 "--data-dir", os.path.join(work, "data"), "--workers", "0"],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": "warn"},
            )
        try:
            wait_ready(base, server)
            run(base, f"127.0.0.1:{port}", fixtures)
            return 0
        except (AssertionError, SystemExit) as failure:
            print(f"FAILED {failure}", file=sys.stderr)
            with open(log_path) as log:
                print("--- graft's log (last 40 lines) ---\n" + "".join(log.readlines()[-40:]), file=sys.stderr)
            return 1
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
