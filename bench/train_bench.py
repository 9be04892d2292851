#!/usr/bin/env python3
"""Head-training benchmark: graft's native trainer against scikit-learn and Keras, on the
same features, plus the speed-up of a second job from graft's feature cache.

    make bench-train            # or: python bench/train_bench.py --graft target/release/graft

1. Builds a labelled photo set from scikit-image's sample photos: each class is random
   crops (flipped, jittered) of one photo, JPEG-encoded, written as a class-folder zip.
2. Starts `graft serve` on a fresh data folder, uploads the zip, and runs a job on the
   base model (features computed, head trained), then the same job again (features cached).
3. Reads the exact features graft cached and the dataset's splits, and fits
   scikit-learn's LogisticRegression and the same head in Keras (Dense softmax, Adam, same
   epochs and batch size) on them.
4. Prints accuracies, times and the ratios the targets are stated in.
"""

import argparse
import io
import json
import os
import random
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

# Ten classes, some deliberately close: two views of one motorcycle, three textures.
PHOTOS = ["motorcycle_left.png", "motorcycle_right.png", "grass.png", "gravel.png", "brick.png", "chelsea.png",
          "coffee.png", "astronaut.png", "rocket.jpg", "retina.jpg"]


def build_dataset(per_class, seed):
    import skimage
    photos = Path(skimage.__file__).parent / "data"
    rng = random.Random(seed)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for photo in PHOTOS:
            source = Image.open(photos / photo).convert("RGB")
            w, h = source.size
            for i in range(per_class):
                side = int(min(w, h) * rng.uniform(0.1, 0.4))
                x, y = rng.randrange(0, w - side), rng.randrange(0, h - side)
                crop = source.crop((x, y, x + side, y + side)).resize((rng.randrange(160, 257),) * 2, Image.BILINEAR)
                if rng.random() < 0.5:
                    crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
                crop = ImageEnhance.Brightness(crop).enhance(rng.uniform(0.7, 1.3))
                crop = ImageEnhance.Contrast(crop).enhance(rng.uniform(0.7, 1.3))
                if rng.random() < 0.3:
                    crop = crop.convert("L").convert("RGB")
                out = io.BytesIO()
                crop.save(out, "JPEG", quality=rng.randrange(60, 95))
                archive.writestr(f"photos/{Path(photo).stem}/{i:04d}.jpg", out.getvalue())
    return buffer.getvalue()


def request(method, url, body=None, content_type=None):
    req = urllib.request.Request(url, data=body, method=method)
    if content_type:
        req.add_header("content-type", content_type)
    with urllib.request.urlopen(req, timeout=600) as response:
        return json.loads(response.read() or b"null")


def upload(base, archive):
    boundary = uuid.uuid4().hex
    # A large test split (30 %) so that accuracy differences of half a point are a few images, not one.
    body = (f"--{boundary}\r\ncontent-disposition: form-data; name=\"split\"\r\n\r\n0.6,0.1,0.3\r\n"
            f"--{boundary}\r\ncontent-disposition: form-data; name=\"archive\"; filename=\"photos.zip\"\r\n"
            f"content-type: application/zip\r\n\r\n").encode() + archive + f"\r\n--{boundary}--\r\n".encode()
    return request("POST", f"{base}/v1/datasets", body, f"multipart/form-data; boundary={boundary}")


def run_job(base, spec):
    started = time.perf_counter()
    job = request("POST", f"{base}/v1/jobs", json.dumps(spec).encode(), "application/json")
    while job["state"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.05)
        job = request("GET", f"{base}/v1/jobs/{job['id']}")
    if job["state"] != "succeeded":
        sys.exit(f"job failed: {job}")
    return job, time.perf_counter() - started


def graft_features(data_dir, dataset_id, model):
    db = sqlite3.connect(data_dir / "graft.db")
    rows = db.execute("SELECT sha256, class_idx, split FROM dataset_items WHERE dataset_id = ?", (dataset_id,)).fetchall()
    (fingerprint,) = list((data_dir / "blobs" / "features" / model).iterdir())
    split = {}
    for sha, label, part in rows:
        vector = np.fromfile(fingerprint / sha[:2] / f"{sha}.f32", dtype="<f4")
        split.setdefault(part, ([], []))
        split[part][0].append(vector)
        split[part][1].append(label)
    return {k: (np.stack(x), np.array(y)) for k, (x, y) in split.items()}


def keras_fit(features, classes, epochs, batch_size, learning_rate, seed):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    tf.keras.utils.set_random_seed(seed)
    (x, y), (vx, vy), (tx, ty) = features["train"], features["valid"], features["test"]
    model = tf.keras.Sequential([tf.keras.Input((x.shape[1],)), tf.keras.layers.Dense(classes, activation="softmax")])
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    started = time.perf_counter()
    history = model.fit(x, y, validation_data=(vx, vy), epochs=epochs, batch_size=batch_size, verbose=0)
    seconds = time.perf_counter() - started
    accuracy = float((model.predict(tx, verbose=0).argmax(axis=1) == ty).mean())
    return accuracy, seconds


def sklearn_fit(features):
    from sklearn.linear_model import LogisticRegression
    (x, y), (tx, ty) = features["train"], features["test"]
    started = time.perf_counter()
    model = LogisticRegression(max_iter=5000).fit(x, y)
    return float(model.score(tx, ty)), time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--graft", default="target/release/graft")
    parser.add_argument("--model-dir", default="models")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--per-class", type=int, default=250)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5, help="seeds per trainer (at least 2: the second job measures the cache)")
    args = parser.parse_args()

    archive = build_dataset(args.per_class, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        server = subprocess.Popen([args.graft, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir),
                                   "--model-dir", args.model_dir, "--models", args.model],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(600):
                try:
                    if urllib.request.urlopen(f"{base}/readyz", timeout=2).status == 200:
                        break
                except OSError:
                    time.sleep(0.1)
            dataset = upload(base, archive)
            spec = {"dataset": dataset["id"], "base_model": args.model, "epochs": args.epochs,
                    "batch_size": args.batch_size, "learning_rate": args.learning_rate, "optimizer": "adam",
                    "early_stopping": None, "seed": args.seed}
            runs = [run_job(base, {**spec, "seed": args.seed + i}) for i in range(args.repeats)]
            features = graft_features(data_dir, dataset["id"], args.model)
        finally:
            server.terminate()
            server.wait()

    classes = len(dataset["classes"])
    (first, first_seconds), (second, second_seconds) = runs[0], runs[1]
    graft = [(job["evaluation"]["test"]["accuracy"], job["evaluation"]["timings"]["training_seconds"]) for job, _ in runs]
    keras = [keras_fit(features, classes, args.epochs, args.batch_size, args.learning_rate, args.seed + i)
             for i in range(args.repeats)]
    sk_accuracy, sk_seconds = sklearn_fit(features)
    graft_accuracy, graft_train_seconds = (float(np.mean(v)) for v in zip(*graft))
    keras_accuracy, keras_seconds = (float(np.mean(v)) for v in zip(*keras))
    spread = lambda runs: f"±{np.std([a for a, _ in runs]):.4f}"
    sizes = {k: len(v[1]) for k, v in features.items()}
    width = features["train"][0].shape[1]

    print(f"dataset: {dataset['images']} images, {classes} classes, splits {sizes}, {width}-wide {args.model} features")
    print(f"head: Dense softmax, Adam lr {args.learning_rate}, {args.epochs} epochs, batch {args.batch_size}; "
          f"graft and Keras: mean over seeds {args.seed}..{args.seed + args.repeats - 1}")
    print()
    print(f"{'':28}{'test accuracy':>14}{'(spread)':>10}{'train seconds':>15}")
    print(f"{'graft (native trainer)':28}{graft_accuracy:>14.4f}{spread(graft):>10}{graft_train_seconds:>15.3f}")
    print(f"{'scikit-learn LogisticReg.':28}{sk_accuracy:>14.4f}{'':>10}{sk_seconds:>15.3f}")
    print(f"{'Keras model.fit':28}{keras_accuracy:>14.4f}{spread(keras):>10}{keras_seconds:>15.3f}")
    print()
    best = max(sk_accuracy, keras_accuracy)
    print(f"accuracy: graft − best reference = {100 * (graft_accuracy - best):+.2f} points (target ≥ −0.5)")
    print(f"speed: Keras fit time / graft training time = {keras_seconds / graft_train_seconds:.1f}× (target ≥ 5×)")
    print(f"feature cache: first job {first_seconds:.2f} s "
          f"({first['evaluation']['features']['computed']} feature vectors computed), second job {second_seconds:.2f} s "
          f"({second['evaluation']['features']['computed']} computed): ratio {second_seconds / first_seconds:.3f} "
          f"(target ≤ 0.1)")


if __name__ == "__main__":
    main()
