#!/usr/bin/env python3
"""Head-training benchmark: graft's trainers against scikit-learn and Keras on the same
features, on three data sets, and graft's feature pass against ONNX Runtime from Python.

    make bench-train            # or: python bench/train_bench.py --graft target/release/graft

Data sets, all built from images that scikit-image and scikit-learn ship (nothing is
downloaded) and deterministic from --seed:

  photos  10 classes × 250: random crops (160–256 px; flipped, brightness and contrast
          jittered, some turned grayscale; JPEG quality 60–94) of ten scikit-image photos,
          some close (two views of one motorcycle, three textures). Easy.
  digits  scikit-learn's load_digits(): 1,797 8 × 8 digits, each upscaled to a 96 × 96
          grayscale PNG by bilinear interpolation (a blurred low-resolution scan rather than
          12 × 12 blocks, whose hard edges the base model reads as texture), dark ink on
          white, one class folder per digit.
  tiles   32 classes × 40: the four quadrants of eight photos are the classes, so that
          quadrants of one photo (star fields, retina, tissue) compete; each image is a
          48–64 px crop of its quadrant with Gaussian noise (σ 8–24) and JPEG quality 8–25.
          Hard: many classes, few small and noisy images per class.

Every data set is uploaded with split 0.5,0.25,0.25 (train, valid, test). graft draws each
image's split from its hash, not per class, so a quarter for validation is what gives tiles
about ten images a class (and few classes under five) to choose a penalty with; the test
split is as large, so that one tiles image is a third of a point. All trainers see exactly
these splits and the features graft cached (read from its data folder), so the rows differ
only in the fit.

Rows of each data set's table (test accuracy; fit seconds; feature seconds):

  graft defaults                   a job naming only the dataset and base model: graft's
                                   convex fit, its L2 penalty chosen on the validation split
                                   (the chosen l2 is shown). Deterministic: one run.
  graft Keras recipe               Adam 1e-3, 20 epochs, batch 32, no early stopping.
  graft hidden 256 (defaults)      hidden_units 256 and nothing else of the recipe.
  graft hidden 256 (Keras recipe)  hidden_units 256 with the Keras recipe.
  sklearn LogisticRegression()     its defaults (C = 1) on the raw train split, max_iter
                                   raised to 10,000 so that lbfgs converges.
  sklearn best C, raw              C from 0.01 to 100 in half decades, the one with the best
  sklearn best C, standardised     validation accuracy kept (ties: the smaller C), without
                                   and with a StandardScaler fitted on the train split; fit
                                   seconds are the whole grid's (nine independent fits).
  Keras model.fit                  Dense softmax, Adam 1e-3, 20 epochs, batch 32.

The mini-batch rows (graft's three and Keras) are the mean over --repeats seeds (seed, seed+1,
…; the graft jobs name the seed, which is not a recipe setting). Graft's feature seconds are
the first job's feature pass (later jobs read the cache); the scikit-learn and Keras rows'
are the Python pipeline's pass over the same images, which their users would have to run.

The convex fit at the size the defaults must handle (when photos is among the data sets):
the photos uploaded again with split 0.4,0.3,0.3 and a default job with `augment` of 2
variants, so the head is fitted on 1,000 × 3 = 3,000 rows of 1,280 features, 10 classes;
its fit seconds are the whole penalty path's (target ≤ 2 s). The 2,500 images' features
are already cached; only the augmented variants are computed.

Feature-pass throughput, once (on photos, else digits, else the data set chosen): raw ONNX
Runtime on random input at batch 1, 8, 16 and 32; the Python pipeline (Pillow decode,
resize, crop, normalise, ONNX Runtime at batch 32); graft's first job. Python's ONNX Runtime
runs with intra_op_num_threads = os.cpu_count() and returns the pooled tensor the manifest
names as its features, as graft does. Other work on the machine lowers these figures
unevenly: the last line gives the load average.
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
import tomllib
import urllib.request
import uuid
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_preprocess as rp  # noqa: E402

SPLIT = "0.5,0.25,0.25"
# The convex fit's target size: photos with 40 % for training and 2 augmented variants
# (3 rows an image) give 3,000 training rows.
CONVEX_SIZE_SPLIT = "0.4,0.3,0.3"
CONVEX_SIZE_AUGMENT = {"variants": 2}
KERAS_RECIPE = {"optimizer": "adam", "learning_rate": 0.001, "epochs": 20, "batch_size": 32, "early_stopping": None}
C_GRID = (0.01, 0.0316, 0.1, 0.316, 1, 3.16, 10, 31.6, 100)
SKLEARN_MAX_ITER = 10_000
ORT_BATCHES = (1, 8, 16, 32)
PIPELINE_BATCH = 32
# Long enough per batch size for several batch-32 runs on two cores.
ORT_SECONDS = 3.0

# ---------------------------------------------------------------- data sets

# Ten classes, some deliberately close: two views of one motorcycle, three textures.
PHOTOS = ["motorcycle_left.png", "motorcycle_right.png", "grass.png", "gravel.png", "brick.png", "chelsea.png",
          "coffee.png", "astronaut.png", "rocket.jpg", "retina.jpg"]
PHOTOS_PER_CLASS = 250
# Eight photos whose quadrants are the tiles classes; a star field, a retina and a tissue
# slide look alike from quadrant to quadrant.
TILE_PHOTOS = ["astronaut.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg", "ihc.png", "retina.jpg",
               "china.jpg", "flower.jpg"]
TILES_PER_CLASS = 40
DIGIT_SIDE = 96


def sample_photo(name):
    """A photo shipped with scikit-image or scikit-learn, as RGB."""
    import skimage
    import sklearn
    for folder in (Path(skimage.__file__).parent / "data", Path(sklearn.__file__).parent / "datasets" / "images"):
        if (folder / name).exists():
            return Image.open(folder / name).convert("RGB")
    sys.exit(f"no sample photo {name}")


def encoded(image, fmt, **options):
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def build_photos(seed):
    """(class, file name, bytes) for each image of the photos set."""
    rng = random.Random(seed)
    images = []
    for photo in PHOTOS:
        source = sample_photo(photo)
        w, h = source.size
        for i in range(PHOTOS_PER_CLASS):
            side = int(min(w, h) * rng.uniform(0.1, 0.4))
            x, y = rng.randrange(0, w - side), rng.randrange(0, h - side)
            crop = source.crop((x, y, x + side, y + side)).resize((rng.randrange(160, 257),) * 2, Image.BILINEAR)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            crop = ImageEnhance.Brightness(crop).enhance(rng.uniform(0.7, 1.3))
            crop = ImageEnhance.Contrast(crop).enhance(rng.uniform(0.7, 1.3))
            if rng.random() < 0.3:
                crop = crop.convert("L").convert("RGB")
            images.append((Path(photo).stem, f"{i:04d}.jpg", encoded(crop, "JPEG", quality=rng.randrange(60, 95))))
    return images


def build_digits(seed):
    """The digits set; fixed, so the seed only matters for the split."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = []
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        # 0..16 ink density to 8-bit paper: 0 → white, 16 → black.
        gray = np.round(255 - pixels * (255 / 16)).astype(np.uint8)
        image = Image.fromarray(gray, "L").resize((DIGIT_SIDE, DIGIT_SIDE), Image.BILINEAR)
        images.append((str(label), f"{i:04d}.png", encoded(image, "PNG")))
    return images


def build_tiles(seed):
    """(class, file name, bytes) for each image of the tiles set."""
    rng = np.random.default_rng(seed)
    images = []
    for photo in TILE_PHOTOS:
        source = sample_photo(photo)
        qw, qh = source.width // 2, source.height // 2
        for row, col in ((0, 0), (0, 1), (1, 0), (1, 1)):
            name = f"{Path(photo).stem}-{('top', 'bottom')[row]}-{('left', 'right')[col]}"
            for i in range(TILES_PER_CLASS):
                side = int(min(qw, qh) * rng.uniform(0.25, 0.6))
                x = col * qw + int(rng.integers(0, qw - side + 1))
                y = row * qh + int(rng.integers(0, qh - side + 1))
                size = int(rng.integers(48, 65))
                crop = np.asarray(source.crop((x, y, x + side, y + side)).resize((size, size), Image.BILINEAR))
                noisy = crop + rng.normal(0.0, rng.uniform(8, 24), crop.shape)
                tile = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
                images.append((name, f"{i:04d}.jpg", encoded(tile, "JPEG", quality=int(rng.integers(8, 26)))))
    return images


DATASETS = {"photos": build_photos, "digits": build_digits, "tiles": build_tiles}


def class_folder_zip(name, images):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for label, file_name, data in images:
            archive.writestr(f"{name}/{label}/{file_name}", data)
    return buffer.getvalue()


# ---------------------------------------------------------------- graft


def request(method, url, body=None, content_type=None):
    req = urllib.request.Request(url, data=body, method=method)
    if content_type:
        req.add_header("content-type", content_type)
    with urllib.request.urlopen(req, timeout=600) as response:
        return json.loads(response.read() or b"null")


def multipart(fields, file_field, file_name, data):
    boundary = uuid.uuid4().hex
    parts = [f"--{boundary}\r\ncontent-disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n".encode()
             for k, v in fields.items()]
    parts.append(f"--{boundary}\r\ncontent-disposition: form-data; name=\"{file_field}\"; filename=\"{file_name}\"\r\n"
                 f"content-type: application/zip\r\n\r\n".encode() + data + f"\r\n--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class Graft:
    """`graft serve` on a fresh data folder, for the length of a `with` block."""

    def __init__(self, binary, model_dir, model, data_dir):
        self.binary, self.model_dir, self.model, self.data_dir = binary, model_dir, model, Path(data_dir)

    def __enter__(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"
        self.log = open(self.data_dir.parent / "graft.log", "wb")
        self.server = subprocess.Popen([self.binary, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir",
                                        str(self.data_dir), "--model-dir", self.model_dir, "--models", self.model],
                                       stdout=self.log, stderr=subprocess.STDOUT)
        self.wait_ready()
        return self

    def __exit__(self, *exc):
        self.server.terminate()
        self.server.wait()
        self.log.close()

    def wait_ready(self):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and self.server.poll() is None:
            try:
                if urllib.request.urlopen(f"{self.base}/readyz", timeout=2).status == 200:
                    return
            except OSError:
                time.sleep(0.1)
        self.log.flush()
        sys.exit(f"graft did not become ready:\n{(self.data_dir.parent / 'graft.log').read_text()[-2000:]}")

    def upload(self, name, archive, seed, split=SPLIT):
        body, content_type = multipart({"name": name, "seed": seed, "split": split}, "archive", f"{name}.zip", archive)
        return request("POST", f"{self.base}/v1/datasets", body, content_type)

    def job(self, spec):
        """The finished job and its wall time from submission."""
        started = time.perf_counter()
        job = request("POST", f"{self.base}/v1/jobs", json.dumps(spec).encode(), "application/json")
        while job["state"] not in ("succeeded", "failed", "cancelled"):
            time.sleep(0.05)
            job = request("GET", f"{self.base}/v1/jobs/{job['id']}")
        if job["state"] != "succeeded":
            sys.exit(f"job failed: {json.dumps(job)[:2000]}")
        return job, time.perf_counter() - started

    def features(self, dataset_id):
        """{split: (features, labels)} exactly as graft cached them."""
        db = sqlite3.connect(self.data_dir / "graft.db")
        rows = db.execute("SELECT sha256, class_idx, split FROM dataset_items WHERE dataset_id = ? ORDER BY path",
                          (dataset_id,)).fetchall()
        db.close()
        (fingerprint,) = list((self.data_dir / "blobs" / "features" / self.model).iterdir())
        split = {}
        for sha, label, part in rows:
            vector = np.fromfile(fingerprint / sha[:2] / f"{sha}.f32", dtype="<f4")
            split.setdefault(part, ([], []))
            split[part][0].append(vector)
            split[part][1].append(label)
        return {k: (np.stack(x), np.array(y)) for k, (x, y) in split.items()}


# ---------------------------------------------------------------- ONNX Runtime from Python


def protobuf_field(number, payload):
    """A length-delimited protobuf field."""
    key, length, out = (number << 3) | 2, len(payload), bytearray()
    for value in (key, length):
        while value > 0x7F:
            out.append(value & 0x7F | 0x80)
            value >>= 7
        out.append(value)
    return bytes(out) + payload


def with_output(model_bytes, name):
    """The model with tensor `name` added as a float graph output.

    A protobuf parser merges a singular message field that appears twice, so a second
    ModelProto.graph (7) holding one GraphProto.output (12) appends that output to the graph:
    no onnx package needed.
    """
    float_tensor = protobuf_field(1, b"\x08\x01")  # TypeProto.tensor_type{elem_type: FLOAT}
    value_info = protobuf_field(1, name.encode()) + protobuf_field(2, float_tensor)
    return model_bytes + protobuf_field(7, protobuf_field(12, value_info))


@dataclass
class Model:
    """The base as the Python pipeline runs it: graft's manifest, read by the reference
    preprocessing shared with bench/python_server.py, and the pooled-feature tensor graft
    trains on."""

    manifest: rp.Manifest
    features: str


def read_model(model_dir, model):
    path = Path(model_dir) / f"{model}.toml"
    output = tomllib.loads(path.read_text())["output"]
    return Model(rp.load_manifest(path), output.get("features", output["name"]))


def ort_session(model):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count()
    options.inter_op_num_threads = 1
    graph = with_output(model.manifest.file.read_bytes(), model.features)
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def input_shape(model, batch):
    spec = model.manifest.spec
    if spec.layout == "NCHW":
        return batch, 3, spec.height, spec.width
    return batch, spec.height, spec.width, 3


def raw_throughput(session, model, seed):
    """{batch: images/s} of the session alone on pre-made random input."""
    rng = np.random.default_rng(seed)
    rates = {}
    for batch in ORT_BATCHES:
        feed = {model.manifest.input_name: rng.standard_normal(input_shape(model, batch), dtype=np.float32)}
        session.run([model.features], feed)
        runs, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < ORT_SECONDS:
            session.run([model.features], feed)
            runs += 1
        rates[batch] = runs * batch / elapsed
    return rates


@dataclass
class PythonPass:
    images: int
    preprocess_seconds: float
    inference_seconds: float

    @property
    def seconds(self):
        return self.preprocess_seconds + self.inference_seconds


def python_feature_pass(session, model, images):
    """Pillow decode and preprocessing, then ONNX Runtime, in batches, timed apart."""
    spec, prep, infer = model.manifest.spec, 0.0, 0.0
    for start in range(0, len(images), PIPELINE_BATCH):
        t0 = time.perf_counter()
        batch = np.concatenate([rp.preprocess(rp.decode(data), spec)
                                for _, _, data in images[start:start + PIPELINE_BATCH]])
        t1 = time.perf_counter()
        session.run([model.features], {model.manifest.input_name: batch})
        t2 = time.perf_counter()
        prep, infer = prep + t1 - t0, infer + t2 - t1
    return PythonPass(len(images), prep, infer)


# ---------------------------------------------------------------- references


@dataclass
class Fit:
    accuracy: float
    seconds: float
    note: str = ""


def logistic_regression(c):
    from sklearn.linear_model import LogisticRegression
    return LogisticRegression(C=c, max_iter=SKLEARN_MAX_ITER)


def converged_fit(model, x, y):
    """Fits and tells whether lbfgs converged before max_iter (reported in the row's note)."""
    from sklearn.exceptions import ConvergenceWarning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, y)
    return int(np.max(model.n_iter_)) < SKLEARN_MAX_ITER


def sklearn_default(features):
    (x, y), (tx, ty) = features["train"], features["test"]
    model = logistic_regression(1.0)
    started = time.perf_counter()
    converged = converged_fit(model, x, y)
    seconds = time.perf_counter() - started
    return Fit(float(model.score(tx, ty)), seconds, "C 1" + ("" if converged else ", not converged"))


def sklearn_best_c(features, standardise):
    """The grid's model with the best validation accuracy (ties: the smaller C)."""
    from sklearn.preprocessing import StandardScaler
    (x, y), (vx, vy), (tx, ty) = features["train"], features["valid"], features["test"]
    started = time.perf_counter()
    if standardise:
        scaler = StandardScaler().fit(x)
        x, vx, tx = scaler.transform(x), scaler.transform(vx), scaler.transform(tx)
    best, unconverged = None, 0
    for c in C_GRID:
        model = logistic_regression(c)
        unconverged += not converged_fit(model, x, y)
        valid = model.score(vx, vy)
        if best is None or valid > best[0]:
            best = (valid, c, model)
    seconds = time.perf_counter() - started
    _, c, chosen = best
    note = f"C {c:g}" + (f", {unconverged} not converged" if unconverged else "")
    return Fit(float(chosen.score(tx, ty)), seconds, note)


def keras_fit(features, classes, seed):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    tf.keras.utils.set_random_seed(seed)
    (x, y), (vx, vy), (tx, ty) = features["train"], features["valid"], features["test"]
    model = tf.keras.Sequential([tf.keras.Input((x.shape[1],)), tf.keras.layers.Dense(classes, activation="softmax")])
    model.compile(optimizer=tf.keras.optimizers.Adam(KERAS_RECIPE["learning_rate"]),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    started = time.perf_counter()
    model.fit(x, y, validation_data=(vx, vy), epochs=KERAS_RECIPE["epochs"], batch_size=KERAS_RECIPE["batch_size"],
              verbose=0)
    seconds = time.perf_counter() - started
    return Fit(float((model.predict(tx, verbose=0).argmax(axis=1) == ty).mean()), seconds)


# ---------------------------------------------------------------- the benchmark


@dataclass
class Row:
    trainer: str
    fits: list
    feature_seconds: float

    @property
    def accuracy(self):
        return float(np.mean([f.accuracy for f in self.fits]))

    @property
    def spread(self):
        return f"±{np.std([f.accuracy for f in self.fits]):.4f}" if len(self.fits) > 1 else ""

    @property
    def seconds(self):
        return float(np.mean([f.seconds for f in self.fits]))


@dataclass
class GraftRuns:
    dataset: dict
    first: tuple  # (job, wall seconds): the job that computed the features
    second: tuple  # the same job again, from the cache
    rows: list
    features: dict


def job_fit(job):
    evaluation = job["evaluation"]
    solver = evaluation.get("solver")
    note = f"l2 {solver['l2']:.3g}" if solver else f"epoch {evaluation['best_epoch']}/{evaluation['epochs_run']}"
    return Fit(evaluation["test"]["accuracy"], evaluation["timings"]["training_seconds"], note)


def run_graft(graft, name, images, model, seed, repeats):
    """Every graft row of one data set; the first job computes the features."""
    dataset = graft.upload(name, class_folder_zip(name, images), seed)
    base = {"dataset": dataset["id"], "base_model": model}
    first, second = graft.job(base), graft.job(base)
    feature_seconds = first[0]["evaluation"]["timings"]["features_seconds"]
    rows = [Row("graft defaults", [job_fit(first[0])], feature_seconds)]
    variants = [("graft Keras recipe", KERAS_RECIPE), ("graft hidden 256 (defaults)", {"hidden_units": 256}),
                ("graft hidden 256 (Keras recipe)", {"hidden_units": 256, **KERAS_RECIPE})]
    for trainer, settings in variants:
        fits = [job_fit(graft.job({**base, **settings, "seed": seed + i})[0]) for i in range(repeats)]
        rows.append(Row(trainer, fits, feature_seconds))
    return GraftRuns(dataset, first, second, rows, graft.features(dataset["id"]))


def convex_at_size(graft, images, model, seed):
    """The default job on about 3,000 training rows (photos, CONVEX_SIZE_SPLIT, 2 variants)
    and the number of rows it fitted on."""
    dataset = graft.upload("photos-3000", class_folder_zip("photos-3000", images), seed, CONVEX_SIZE_SPLIT)
    job, _ = graft.job({"dataset": dataset["id"], "base_model": model, "augment": CONVEX_SIZE_AUGMENT})
    rows = sum(c["train"] for c in dataset["classes"]) * (1 + CONVEX_SIZE_AUGMENT["variants"])
    return job, rows


def print_convex_at_size(job, rows):
    evaluation = job["evaluation"]
    solver = evaluation["solver"]
    iterations = sum(step["iterations"] for step in solver["path"])
    print(f"== convex fit at the target size (photos, split {CONVEX_SIZE_SPLIT}, augment {CONVEX_SIZE_AUGMENT})")
    print(f"{rows} training rows, {len(solver['path'])} path steps, {iterations} L-BFGS iterations, chosen "
          f"{solver['scaling']} l2 {solver['l2']:.3g}: fit {evaluation['timings']['training_seconds']:.2f} s "
          f"(target ≤ 2 s), test accuracy {evaluation['test']['accuracy']:.4f}")
    print()


def reference_rows(features, classes, python_seconds, seed, repeats):
    return [
        Row("sklearn LogisticRegression()", [sklearn_default(features)], python_seconds),
        Row("sklearn best C, raw", [sklearn_best_c(features, standardise=False)], python_seconds),
        Row("sklearn best C, standardised", [sklearn_best_c(features, standardise=True)], python_seconds),
        Row("Keras model.fit", [keras_fit(features, classes, seed + i) for i in range(repeats)], python_seconds),
    ]


def print_dataset(name, runs, rows, model):
    dataset, features = runs.dataset, runs.features
    sizes = " / ".join(f"{k} {len(features[k][1])}" for k in ("train", "valid", "test"))
    width = features["train"][0].shape[1]
    print(f"== {name}: {dataset['images']} images, {len(dataset['classes'])} classes, {sizes}, "
          f"{width}-wide {model} features")
    print(f"{'trainer':34}{'test acc':>9}{'spread':>9}{'fit s':>9}{'feature s':>11}  chosen")
    for row in rows:
        notes = sorted({f.note for f in row.fits if f.note})
        print(f"{row.trainer:34}{row.accuracy:>9.4f}{row.spread:>9}{row.seconds:>9.3f}{row.feature_seconds:>11.2f}"
              f"  {'; '.join(notes)}")
    best = max((r for r in rows if r.trainer.startswith("sklearn")), key=lambda r: r.accuracy)
    print(f"graft defaults − best scikit-learn ({best.trainer}, {best.accuracy:.4f}): "
          f"{100 * (rows[0].accuracy - best.accuracy):+.2f} points (target ≥ −0.5)")
    (first, first_s), (second, second_s) = runs.first, runs.second
    print(f"feature cache: first job {first_s:.2f} s ({first['evaluation']['features']['computed']} computed), "
          f"identical second job {second_s:.2f} s ({second['evaluation']['features']['computed']} computed): "
          f"ratio {second_s / first_s:.3f} (target ≤ 0.1)")
    for warning in sorted(set(first["evaluation"].get("warnings", []))):
        print(f"graft defaults warns: {warning}")
    print()


def print_throughput(name, raw, python, first_job):
    import onnxruntime as ort
    print(f"== feature pass on {name} ({python.images} images; onnxruntime {ort.__version__}, "
          f"intra_op_num_threads = os.cpu_count() = {os.cpu_count()})")
    best_batch = max(raw, key=raw.get)
    rates = ", ".join(f"batch {b} {r:.1f}" for b, r in raw.items())
    print(f"raw ONNX Runtime, random input (images/s): {rates}; best {raw[best_batch]:.1f} (batch {best_batch})")
    print(f"Python pipeline, batch {PIPELINE_BATCH}: {python.images / python.seconds:.1f} images/s "
          f"(decode + preprocess {python.preprocess_seconds:.2f} s, inference {python.inference_seconds:.2f} s)")
    evaluation = first_job["evaluation"]
    timings, computed = evaluation["timings"], evaluation["features"]["computed"]
    graft_rate = computed / timings["features_seconds"]
    seconds = lambda key: "n/a" if timings.get(key) is None else f"{timings[key]:.2f} s"
    print(f"graft, first job: {graft_rate:.1f} images/s ({computed} in {timings['features_seconds']:.2f} s; "
          f"decode {seconds('decode_seconds')}, inference {seconds('inference_seconds')})")
    print(f"graft ÷ best raw ONNX Runtime = {graft_rate / raw[best_batch]:.3f} (target ≥ 0.9)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--graft", default="target/release/graft")
    parser.add_argument("--model-dir", default="models")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma list of " + ", ".join(DATASETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="seeds for graft's mini-batch rows and Keras")
    args = parser.parse_args()
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    if unknown := [n for n in names if n not in DATASETS]:
        parser.error(f"unknown data sets {unknown}; choose from {list(DATASETS)}")
    started = time.perf_counter()
    log = lambda message: print(f"[{time.perf_counter() - started:6.1f} s] {message}", file=sys.stderr, flush=True)

    images = {}
    for name in names:
        images[name] = DATASETS[name](args.seed)
        log(f"{name}: built {len(images[name])} images")
    graft_runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "data").mkdir()
        with Graft(args.graft, args.model_dir, args.model, Path(tmp) / "data") as graft:
            for name in names:
                graft_runs[name] = run_graft(graft, name, images[name], args.model, args.seed, args.repeats)
                log(f"{name}: graft jobs done")
            if "photos" in names:
                at_size = convex_at_size(graft, images["photos"], args.model, args.seed)
                log("photos: convex fit at the target size done")

    base = read_model(args.model_dir, args.model)
    session = ort_session(base)
    raw = raw_throughput(session, base, args.seed)
    log("raw ONNX Runtime measured")
    python = {}
    for name in names:
        python[name] = python_feature_pass(session, base, images[name])
        log(f"{name}: Python feature pass done")

    for name in names:
        runs = graft_runs[name]
        rows = runs.rows + reference_rows(runs.features, len(runs.dataset["classes"]), python[name].seconds,
                                          args.seed, args.repeats)
        log(f"{name}: references fitted")
        print_dataset(name, runs, rows, args.model)
    if "photos" in names:
        print_convex_at_size(*at_size)
    shown = next((n for n in ("photos", "digits") if n in names), names[0])
    print_throughput(shown, raw, python[shown], graft_runs[shown].first[0])
    # Other work on the machine slows every row: the load average tells a reader how quiet it was.
    print(f"\nbenchmark wall time {time.perf_counter() - started:.0f} s; 1-minute load average at the end "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (this benchmark's own fits included)")


if __name__ == "__main__":
    main()
