"""The reference Python image classification server: Starlette + uvicorn + onnxruntime + Pillow + numpy.

What a user would write instead of graft: one onnxruntime InferenceSession per model
(CPUExecutionProvider, all graph optimisations), one image per request and per session.run
(no dynamic batching), decoding, preprocessing and inference in a thread pool so that the
event loop stays free, no per-request logging.

    .venv-bench/bin/python bench/python_server.py --model models/efficientnet_lite0.toml \
        --port 8090 --intra-threads 2

    curl --data-binary @flower.jpg -H 'content-type: image/jpeg' \
        'localhost:8090/v1/models/efficientnet_lite0/classify?top_k=5'

It answers graft's JSON: {"model": name, "predictions": [[{"index", "class_id", "label",
"score"}, ...]]}; errors are application/problem+json with graft's status codes for the
raw-body cases (415 no or non-image content type, 422 undecodable image, 413 body too
large, 404 unknown model, 400 bad top_k). `GET /healthz` and `GET /readyz` answer 200 once
the server listens (models are loaded and warmed up before that).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

sys.dont_write_bytecode = True  # no bench/__pycache__ in the working tree
sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_preprocess as rp  # noqa: E402

MAX_BODY = 20 * 1024 * 1024  # graft's default body limit
CONFIG_ENV = "GRAFT_PY_SERVER_CONFIG"  # passes the options to worker processes


class Model:
    def __init__(self, manifest_path: str, intra_threads: int, inter_threads: int):
        self.manifest = rp.load_manifest(manifest_path)
        self.name = self.manifest.name
        self.labels = rp.load_labels(self.manifest.labels_file)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = intra_threads
        options.inter_op_num_threads = inter_threads
        self.session = ort.InferenceSession(
            str(self.manifest.file), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.manifest.input_name
        self.output_name = self.manifest.output_name
        spec = self.manifest.spec
        shape = (1, 3, spec.height, spec.width) if spec.layout == "NCHW" else (1, spec.height, spec.width, 3)
        # Warm-up, as graft does before /readyz answers 200.
        out = self.session.run([self.output_name], {self.input_name: np.zeros(shape, np.float32)})[0]
        if out.shape[-1] != len(self.labels):
            raise SystemExit(
                f"{manifest_path}: the model has {out.shape[-1]} classes, the labels file {len(self.labels)}"
            )

    def classify(self, body: bytes, top_k: int) -> list[dict]:
        """Decode, preprocess, run, rank: all of it off the event loop."""
        img = rp.decode(body)
        tensor = rp.preprocess(img, self.manifest.spec)
        scores = self.session.run([self.output_name], {self.input_name: tensor})[0][0]
        if self.manifest.output_kind == "logits":
            e = np.exp(scores - scores.max())
            scores = e / e.sum()
        best = np.argsort(-scores, kind="stable")[:top_k]
        return [
            {
                "index": int(i),
                "class_id": self.labels[i][0],
                "label": self.labels[i][1],
                # float32's shortest repr, as graft prints its f32 scores
                "score": float(str(np.float32(scores[i]))),
            }
            for i in best
        ]


def problem(status: int, title: str, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        status_code=status,
        media_type="application/problem+json",
        headers=headers,
    )


def create_app(config: dict | None = None) -> Starlette:
    if config is None:
        config = json.loads(os.environ[CONFIG_ENV])
    models = {}
    for path in config["models"]:
        model = Model(path, config["intra_threads"], config["inter_threads"])
        models[model.name] = model
    executor = ThreadPoolExecutor(max_workers=config.get("executor_threads"))

    async def classify(request: Request) -> Response:
        name = request.path_params["name"]
        model = models.get(name)
        if model is None:
            return problem(404, "Not Found", f"no model named {name!r}")
        raw_k = request.query_params.get("top_k", "5")
        try:
            top_k = int(raw_k)
        except ValueError:
            return problem(400, "Bad Request", f"top_k must be a number, not {raw_k!r}")
        if not 1 <= top_k <= len(model.labels):
            return problem(400, "Bad Request", f"top_k must be from 1 to {len(model.labels)}")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if not content_type.startswith("image/"):
            return problem(
                415, "Unsupported Media Type", "send the image as the body with an image/* content type"
            )
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
            return problem(413, "Content Too Large", f"the body is over {MAX_BODY} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                return problem(413, "Content Too Large", f"the body is over {MAX_BODY} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
        if not body:
            return problem(422, "Unprocessable Content", "the body is empty")
        loop = asyncio.get_running_loop()
        try:
            predictions = await loop.run_in_executor(executor, model.classify, body, top_k)
        except rp.ImageError as e:
            return problem(422, "Unprocessable Content", str(e))
        except Exception as e:  # never take the server down
            return problem(500, "Internal Server Error", f"{type(e).__name__}: {e}")
        return JSONResponse({"model": name, "predictions": [predictions]})

    async def ok(request: Request) -> Response:
        return Response("ok\n", media_type="text/plain")

    async def list_models(request: Request) -> Response:
        return JSONResponse({"models": [{"name": n, "status": "ready"} for n in models]})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        executor.shutdown(wait=False)

    return Starlette(
        routes=[
            Route("/v1/models/{name}/classify", classify, methods=["POST", "PUT"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/healthz", ok, methods=["GET"]),
            Route("/readyz", ok, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, help="a graft manifest (models/NAME.toml); repeatable")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--intra-threads", type=int, default=0, help="onnxruntime intra_op_num_threads (0: its default)")
    parser.add_argument("--inter-threads", type=int, default=0, help="onnxruntime inter_op_num_threads (0: its default)")
    parser.add_argument("--executor-threads", type=int, default=None,
                        help="thread pool size for decode+preprocess+run (default: Python's, min(32, cpus + 4))")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes, each with its own sessions")
    parser.add_argument("--loop", default="auto", help="uvicorn event loop: auto (uvloop when installed), asyncio, uvloop")
    parser.add_argument("--http", default="auto", help="uvicorn HTTP parser: auto (httptools when installed), h11, httptools")
    args = parser.parse_args()

    config = {
        "models": [str(Path(m).resolve()) for m in args.model],
        "intra_threads": args.intra_threads,
        "inter_threads": args.inter_threads,
        "executor_threads": args.executor_threads,
    }
    common = dict(
        host=args.host, port=args.port, loop=args.loop, http=args.http,
        access_log=False, log_level="warning", server_header=False,
    )
    if args.workers > 1:
        os.environ[CONFIG_ENV] = json.dumps(config)
        uvicorn.run(
            "python_server:create_app", factory=True, workers=args.workers,
            app_dir=str(Path(__file__).resolve().parent), **common,
        )
    else:
        app = create_app(config)
        print(f"serving {', '.join(m for m in (Path(p).stem for p in config['models']))} "
              f"on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
        uvicorn.run(app, **common)


if __name__ == "__main__":
    main()
