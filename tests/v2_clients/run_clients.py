#!/usr/bin/env python3
"""Published Open Inference Protocol clients against a live graft.

Starts the graft binary with the fixture models on free loopback ports (HTTP and
`--grpc-listen`) and drives it, unchanged, with:

- `tritonclient.http` and `tritonclient.grpc` (Triton's own clients): health, server and model
  metadata, the model configuration, FP32 inference (JSON and binary over HTTP, raw over
  gRPC), BYTES tensors of encoded images, the classification extension, async inference with
  many requests in flight, and the errors for an unknown model and a bad shape;
- the KServe Python SDK: `InferenceRESTClient(RESTConfig(protocol="v2"))` (health, which it
  reads from the JSON bodies, model readiness, inference with JSON and binary tensors, and
  its parsing of graft's `{"error"}`), `InferenceGRPCClient`, and the SDK's own compiled gRPC
  stub for server and model metadata.

Every answer is compared with graft's `/v1/.../classify` on the same images: the same top k,
scores within 1e-6. tritonclient and the KServe SDK each compile the protocol's messages into
protobuf's one default pool, so each runs in a process of its own (`--check`).

Usage: run_clients.py --graft target/debug/graft --models tests/fixtures/generated/models
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from graft_process import free_port, wait_ready  # noqa: E402

IMAGES = ["img0.png", "img1.png", "china.jpg"]




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


def read_images(fixtures: str) -> tuple[list[bytes], list[str]]:
    files = [open(os.path.join(fixtures, "images", name), "rb").read() for name in IMAGES]
    types = ["image/png" if name.endswith(".png") else "image/jpeg" for name in IMAGES]
    return files, types


def check_against_v1(base: str, model: str, output: str, scores: np.ndarray, files, types, who: str) -> None:
    """Each image's scores (logits for tiny_nchw) equal /v1's probabilities, with the same top 5."""
    probabilities = softmax(scores) if output == "logits" else scores.astype(np.float64)
    for i, (image, kind) in enumerate(zip(files, types)):
        v1 = v1_scores(base, model, image, kind)
        check(np.abs(probabilities[i] - v1).max() < 1e-6, f"{who}: {model} {IMAGES[i]}: BYTES scores equal /v1's")
        check(list(np.argsort(-v1, kind="stable")[:5]) == list(np.argsort(-probabilities[i], kind="stable")[:5]),
              f"{who}: {model} {IMAGES[i]}: the same top 5 as /v1")


def as_ints(shape) -> list[int]:
    """A shape from JSON or from protobuf's JSON (which writes int64 as strings)."""
    return [int(d) for d in shape]


def run_tritonclient(base: str, grpc_url: str, fixtures: str) -> None:
    import tritonclient.grpc as triton_grpc
    import tritonclient.http as triton_http

    run_triton(base, base.removeprefix("http://"), fixtures, triton_http, False)
    run_triton(base, grpc_url, fixtures, triton_grpc, True)


def run_triton(base: str, url: str, fixtures: str, triton, is_grpc: bool) -> None:
    """tritonclient.http or tritonclient.grpc: the same calls, each as that client makes them."""
    from tritonclient.utils import InferenceServerException

    who = "tritonclient.grpc" if is_grpc else "tritonclient.http"
    binary = {} if is_grpc else {"binary_data": True}
    client = triton.InferenceServerClient(url)
    check(client.is_server_live() and client.is_server_ready(), f"{who}: server live and ready")
    check(client.is_model_ready("tiny_nchw") and not client.is_model_ready("nope"), f"{who}: model ready, unknown not")
    server = client.get_server_metadata(**({"as_json": True} if is_grpc else {}))
    check(server["name"] == "graft" and "classification" in server["extensions"], f"{who}: server metadata {server}")
    meta = client.get_model_metadata("tiny_nchw", **({"as_json": True} if is_grpc else {}))
    inputs = [(t["name"], t["datatype"], as_ints(t["shape"])) for t in meta["inputs"]]
    outputs = [(t["name"], t["datatype"], as_ints(t["shape"])) for t in meta["outputs"]]
    check(inputs == [("pixels", "FP32", [-1, 3, 32, 32])], f"{who}: model metadata input")
    check(outputs[0] == ("logits", "FP32", [-1, 10]) and [o[0] for o in outputs[1:]] == ["features"],
          f"{who}: model metadata outputs {outputs}")
    config = client.get_model_config("tiny_nchw", **({"as_json": True} if is_grpc else {}))
    config = config.get("config", config)
    check(int(config["max_batch_size"]) == 64 and as_ints(config["input"][0]["dims"]) == [3, 32, 32],
          f"{who}: model configuration {config['max_batch_size']} {config['input'][0]['dims']}")

    # FP32 tensors: over HTTP as JSON and as binary, over gRPC raw; the same logits.
    x = np.random.default_rng(7).standard_normal((4, 3, 32, 32)).astype(np.float32)
    answers = []
    for as_binary in ((True,) if is_grpc else (False, True)):
        tensor = triton.InferInput("pixels", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, **({} if is_grpc else {"binary_data": as_binary}))
        wanted = [triton.InferRequestedOutput("logits", **({} if is_grpc else {"binary_data": as_binary}))]
        answers.append(client.infer("tiny_nchw", [tensor], outputs=wanted).as_numpy("logits"))
    check(answers[0].shape == (4, 10) and all(np.array_equal(answers[0], a) for a in answers),
          f"{who}: FP32 logits of shape (4, 10)" + ("" if is_grpc else ", JSON and binary agree"))

    # Encoded images as a BYTES tensor, against /v1 on the same files.
    files, types = read_images(fixtures)
    for model, output in (("tiny_nhwc", "probs"), ("tiny_nchw", "logits")):
        images = triton.InferInput("IMAGE", [len(files)], "BYTES")
        images.set_data_from_numpy(np.array(files, dtype=np.object_), **binary)
        result = client.infer(model, [images], outputs=[
            triton.InferRequestedOutput(output, **binary),
            # tritonclient.http finds binary outputs by name: the second of a name goes as JSON.
            triton.InferRequestedOutput(output, class_count=3, **({} if is_grpc else {"binary_data": False})),
        ])
        # Both requested outputs share a name: the first answer is the tensor.
        check_against_v1(base, model, output, result.as_numpy(output), files, types, who)

    # The classification extension alone.
    images = triton.InferInput("IMAGE", [1], "BYTES")
    images.set_data_from_numpy(np.array([files[2]], dtype=np.object_), **binary)
    result = client.infer("tiny_nchw", [images], outputs=[triton.InferRequestedOutput("logits", class_count=3)])
    top = [entry.decode().split(":") for entry in result.as_numpy("logits")[0]]
    v1 = v1_scores(base, "tiny_nchw", files[2], "image/jpeg")
    check([int(index) for _, index, _ in top] == list(np.argsort(-v1, kind="stable")[:3]), f"{who}: classification top 3 {top}")

    # Many requests in flight at once join the same batcher.
    tensor = triton.InferInput("pixels", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, **binary)
    if is_grpc:
        done = []
        for i in range(32):
            client.async_infer("tiny_nchw", [tensor], lambda result, error: done.append((result, error)), request_id=str(i))
        deadline = time.monotonic() + 60
        while len(done) < 32 and time.monotonic() < deadline:
            time.sleep(0.01)
        check(len(done) == 32 and all(error is None for _, error in done), f"{who}: 32 async requests answered")
        results = [result for result, _ in done]
        ids = sorted(int(r.get_response().id) for r in results)
    else:
        pending = [client.async_infer("tiny_nchw", [tensor], request_id=str(i)) for i in range(32)]
        results = [p.get_result() for p in pending]
        ids = [int(r.get_response()["id"]) for r in results]
    check(all(np.array_equal(r.as_numpy("logits"), answers[-1]) for r in results), f"{who}: 32 async requests answer alike")
    check(ids == list(range(32)), f"{who}: async answers echo their ids")

    # Errors come back as InferenceServerException with the status and graft's sentence.
    cases = (("nope", (1, 3, 32, 32), "StatusCode.NOT_FOUND" if is_grpc else "404"),
             ("tiny_nchw", (1, 3, 16, 16), "StatusCode.INVALID_ARGUMENT" if is_grpc else "400"))
    for model, tensor_shape, status in cases:
        bad = triton.InferInput("pixels", list(tensor_shape), "FP32")
        bad.set_data_from_numpy(np.zeros(tensor_shape, np.float32))
        try:
            client.infer(model, [bad])
            raise AssertionError(f"{who}: {model} {tensor_shape} was answered")
        except InferenceServerException as error:
            check(error.status() == status and error.message(), f"{who}: {model} {tensor_shape}: {status} {error.message()}")
    client.close()


async def run_kserve(base: str, grpc_url: str, fixtures: str) -> None:
    """The KServe SDK's v2 clients, and its compiled gRPC stub for what they do not call."""
    import grpc
    import httpx

    sys.argv = sys.argv[:1]  # kserve parses the command line (its model server's) when imported
    from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as kserve_pb2
    from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    who = "kserve REST"
    files, types = read_images(fixtures)
    x = np.random.default_rng(7).standard_normal((4, 3, 32, 32)).astype(np.float32)
    rest = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
    # Its health checks read {"live": true} and {"ready": true} from the bodies.
    check(await rest.is_server_live(base) is True and await rest.is_server_ready(base) is True, f"{who}: live and ready")
    check(await rest.is_model_ready(base, "tiny_nchw") and not await rest.is_model_ready(base, "nope"),
          f"{who}: model ready, unknown not")
    logits = []
    for as_binary in (False, True):
        tensor = InferInput("pixels", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=as_binary)
        answer = await rest.infer(base, InferRequest("tiny_nchw", [tensor], request_id="k1"), model_name="tiny_nchw")
        check(answer.id == "k1" and answer.outputs[0].name == "logits", f"{who}: answer of {answer.model_name}")
        logits.append(answer.outputs[0].as_numpy())
    check(logits[0].shape == (4, 10) and np.array_equal(logits[0], logits[1]), f"{who}: FP32 as JSON and as binary agree")
    images = InferInput("IMAGE", [len(files)], "BYTES")
    images.set_data_from_numpy(np.array(files, dtype=np.object_), binary_data=True)
    answer = await rest.infer(base, InferRequest("tiny_nhwc", [images]), model_name="tiny_nhwc")
    check_against_v1(base, "tiny_nhwc", "probs", answer.outputs[0].as_numpy(), files, types, who)
    # Its errors carry graft's sentence, which it reads from {"error"} when the type is application/json.
    bad = InferInput("pixels", [1, 3, 16, 16], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3, 16, 16), np.float32), binary_data=False)
    try:
        await rest.infer(base, InferRequest("tiny_nchw", [bad]), model_name="tiny_nchw")
        raise AssertionError(f"{who}: a bad shape was answered")
    except httpx.HTTPStatusError as error:
        check(error.response.status_code == 400 and "shape must be" in str(error), f"{who}: 400 {error}")
    await rest.close()

    who = "kserve gRPC"
    client = InferenceGRPCClient(grpc_url, retries=0)
    check(await client.is_server_live() and await client.is_server_ready(), f"{who}: live and ready")
    check(await client.is_model_ready("tiny_nchw"), f"{who}: model ready")
    tensor = InferInput("pixels", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=False)
    answer = await client.infer(InferRequest("tiny_nchw", [tensor], request_id="k2"))
    check(np.array_equal(answer.outputs[0].as_numpy(), logits[0]), f"{who}: FP32 logits equal the REST client's")
    images = InferInput("IMAGE", [len(files)], "BYTES")
    images.set_data_from_numpy(np.array(files, dtype=np.object_), binary_data=True)
    answer = await client.infer(InferRequest("tiny_nhwc", [images]))
    check_against_v1(base, "tiny_nhwc", "probs", answer.outputs[0].as_numpy(), files, types, who)
    await client.close()

    async with grpc.aio.insecure_channel(grpc_url) as channel:
        stub = GRPCInferenceServiceStub(channel)
        server = await stub.ServerMetadata(kserve_pb2.ServerMetadataRequest())
        check(server.name == "graft" and "binary_tensor_data" in server.extensions, f"{who}: server metadata")
        meta = await stub.ModelMetadata(kserve_pb2.ModelMetadataRequest(name="tiny_nhwc"))
        shapes = [(t.name, t.datatype, list(t.shape)) for t in (*meta.inputs, *meta.outputs)]
        check(shapes[:2] == [("input_1", "FP32", [-1, 32, 32, 3]), ("probs", "FP32", [-1, 10])]
              and [s[0] for s in shapes[2:]] == ["features"], f"{who}: model metadata {shapes}")
        try:
            await stub.ModelMetadata(kserve_pb2.ModelMetadataRequest(name="nope"))
            raise AssertionError(f"{who}: an unknown model has metadata")
        except grpc.aio.AioRpcError as error:
            check(error.code() == grpc.StatusCode.NOT_FOUND and error.details(), f"{who}: NOT_FOUND {error.details()}")


CHECKS = {
    "tritonclient": run_tritonclient,
    "kserve": lambda base, grpc_url, fixtures: asyncio.run(run_kserve(base, grpc_url, fixtures)),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graft")
    parser.add_argument("--models")
    parser.add_argument("--check", choices=CHECKS, help="run one client's checks against a running graft")
    parser.add_argument("--base", help="with --check: graft's HTTP URL")
    parser.add_argument("--grpc", help="with --check: graft's gRPC host:port")
    parser.add_argument("--fixtures", help="with --check: the fixtures folder")
    args = parser.parse_args()
    if args.check:
        CHECKS[args.check](args.base, args.grpc, args.fixtures)
        return 0
    if not (args.graft and args.models):
        parser.error("--graft and --models are required")
    fixtures = os.path.dirname(os.path.abspath(args.models))
    with tempfile.TemporaryDirectory(prefix="graft-v2-clients-") as work:
        port, grpc_port = free_port(), free_port()
        base = f"http://127.0.0.1:{port}"
        log_path = os.path.join(work, "graft.log")
        with open(log_path, "w") as log:
            server = subprocess.Popen(
                [args.graft, "serve", "--listen", f"127.0.0.1:{port}", "--grpc-listen", f"127.0.0.1:{grpc_port}",
                 "--model-dir", args.models,
                 "--data-dir", os.path.join(work, "data"), "--workers", "0"],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": "warn"},
            )
        try:
            wait_ready(base, server)
            for client in CHECKS:
                command = [sys.executable, __file__, "--check", client, "--base", base,
                           "--grpc", f"127.0.0.1:{grpc_port}", "--fixtures", fixtures]
                if subprocess.run(command).returncode != 0:
                    raise AssertionError(f"the {client} checks failed")
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
