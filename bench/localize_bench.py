#!/usr/bin/env python3
"""Localization benchmark: graft's localize jobs against the Keras recipe and a linear
read-out of the feature map, on the same features and split.

    make bench-localize        # or: python bench/localize_bench.py --graft target/release/graft

The data set is generated from photos that scikit-image and scikit-learn ship (nothing is
downloaded) and is deterministic from --seed: --images (720) JPEGs, a third each of three
classes — a filled circle, square or triangle of a random colour, its side 20–58 % of the
image's shorter side (24–70 px on 120 px) — on a random crop of a real photo. Images are landscape
(160×120, 200×150, 240×180) or portrait (120×160, 150×200, 180×240), and a quarter of the
objects touch an edge of their image. The archive carries class folders, a Pascal VOC file
beside every image and one boxes.csv for all of them: the same boxes twice, as labelling
tools leave them. It is uploaded with split 0.6/0.2/0.2.

Rows (test mean IoU, share of boxes with IoU ≥ 0.5, class accuracy, fit seconds):

  graft defaults            a job naming only the dataset, base model and task "localize".
  graft pooled head         box_head "pooled": the seed's Dense(4) on the pooled features.
  ... (--jobs adds rows: a JSON object of job fields per row, as 'name=JSON')
  Keras recipe              Dense(classes) softmax + Dense(4) sigmoid on the pooled features,
                            0.8 · cross-entropy + 0.2 · MSE, Adam 1e-3, 20 epochs, batch 32,
                            in Keras on the features graft cached for its defaults.
  linear read-out of map    scikit-learn Ridge from the flattened spatial map to the box,
                            alpha chosen on the validation split (no class).

IoU is computed on the box as a fraction of the whole image, the geometry graft's default
localize job trains in, so every row is measured the same way.
"""

import argparse
import io
import json
import math
import os
import random
import sys
import tempfile
import time
import urllib.error
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_bench as tb  # noqa: E402  (the Graft server wrapper and sample photos)

SPLIT = "0.6,0.2,0.2"
CLASSES = ("circle", "square", "triangle")
SIZES = ((160, 120), (200, 150), (240, 180), (120, 160), (150, 200), (180, 240))
BACKGROUNDS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "grass.png",
               "gravel.png", "brick.png", "hubble_deep_field.jpg", "ihc.png", "retina.jpg", "china.jpg", "flower.jpg")
EDGE_SHARE = 0.25
KERAS = {"learning_rate": 0.001, "epochs": 20, "batch_size": 32}
RIDGE_ALPHAS = (0.1, 1, 10, 100, 1000, 10000)

# ---------------------------------------------------------------- the data set


def draw_shape(draw, kind, box, colour):
    x0, y0, x1, y1 = box
    if kind == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=colour)
    elif kind == "square":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=colour)
    else:
        draw.polygon(((x0 + x1) / 2, y0, x1 - 1, y1 - 1, x0, y1 - 1), fill=colour)


def voc_xml(file_name, size, label, box):
    (w, h), (x0, y0, x1, y1) = size, box
    return (f"<annotation><filename>{file_name}</filename><size><width>{w}</width><height>{h}</height>"
            f"<depth>3</depth></size><object><name>{label}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object></annotation>").encode()


@dataclass
class Sample:
    label: str
    file_name: str
    data: bytes
    size: tuple  # (width, height)
    box: tuple  # (x_min, y_min, x_max, y_max) in pixels


def build(count, seed):
    rng = random.Random(seed)
    photos = [tb.sample_photo(name) for name in BACKGROUNDS]
    samples = []
    for i in range(count):
        label = CLASSES[i % len(CLASSES)]
        w, h = rng.choice(SIZES)
        photo = rng.choice(photos)
        scale = rng.uniform(0.3, 1.0)
        cw, ch = max(w, int(photo.width * scale)), max(h, int(photo.height * scale))
        cw, ch = min(cw, photo.width), min(ch, photo.height)
        x, y = rng.randrange(0, photo.width - cw + 1), rng.randrange(0, photo.height - ch + 1)
        image = photo.crop((x, y, x + cw, y + ch)).resize((w, h), Image.BILINEAR)
        # 24–70 px on a 120-px side, in proportion on larger images.
        side = int(min(w, h) * rng.uniform(0.2, 0.58))
        # Triangles and circles keep their aspect; squares too, so the class is the shape.
        x0, y0 = rng.randrange(0, w - side + 1), rng.randrange(0, h - side + 1)
        if rng.random() < EDGE_SHARE:
            edge = rng.choice(("left", "right", "top", "bottom"))
            x0 = 0 if edge == "left" else w - side if edge == "right" else x0
            y0 = 0 if edge == "top" else h - side if edge == "bottom" else y0
        box = (x0, y0, x0 + side, y0 + side)
        colour = tuple(rng.randrange(256) for _ in range(3))
        draw_shape(ImageDraw.Draw(image), label, box, colour)
        out = io.BytesIO()
        image.save(out, "JPEG", quality=90)
        samples.append(Sample(label, f"{label}_{i:04d}.jpg", out.getvalue(), (w, h), box))
    return samples


def archive(samples):
    buffer = io.BytesIO()
    rows = ["filename,label,xmin,ymin,xmax,ymax"]
    with zipfile.ZipFile(buffer, "w") as z:
        for s in samples:
            z.writestr(f"shapes/{s.label}/{s.file_name}", s.data)
            z.writestr(f"shapes/{s.label}/{Path(s.file_name).stem}.xml", voc_xml(s.file_name, s.size, s.label, s.box))
            rows.append(f"{s.file_name},{s.label},{','.join(map(str, s.box))}")
        z.writestr("shapes/boxes.csv", "\n".join(rows) + "\n")
    return buffer.getvalue()


# ---------------------------------------------------------------- features and references


def cached_features(graft, dataset_id, model):
    """{split: (pooled, spatial or None, labels, shas)} of the one set of cached features (with maps, if any)."""
    import sqlite3
    db = sqlite3.connect(graft.data_dir / "graft.db")
    rows = db.execute("SELECT sha256, class_idx, split FROM dataset_items WHERE dataset_id = ? ORDER BY path",
                      (dataset_id,)).fetchall()
    db.close()
    folders = list((graft.data_dir / "blobs" / "features" / model).iterdir())
    if len(folders) != 1:
        raise SystemExit(f"expected one set of cached features, found {len(folders)}")
    folder = folders[0]
    out = {}
    for sha, label, part in rows:
        base = folder / sha[:2] / sha
        pooled = np.fromfile(f"{base}.f32", dtype="<f4")
        spatial = Path(f"{base}.spatial.f32")
        entry = out.setdefault(part, ([], [], [], []))
        entry[0].append(pooled)
        entry[1].append(np.fromfile(spatial, dtype="<f4") if spatial.exists() else None)
        entry[2].append(label)
        entry[3].append(sha)
    result = {}
    for part, (pooled, spatial, labels, shas) in out.items():
        maps = np.stack(spatial) if all(m is not None for m in spatial) else None
        result[part] = (np.stack(pooled), maps, np.array(labels), shas)
    return result


def normalised_boxes(samples_by_sha, shas):
    """[cx, cy, w, h] as fractions of each image."""
    boxes = []
    for sha in shas:
        s = samples_by_sha[sha]
        (w, h), (x0, y0, x1, y1) = s.size, s.box
        boxes.append([(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h])
    return np.array(boxes, dtype=np.float32)


def iou(a, b):
    """Row-wise IoU of [cx, cy, w, h] boxes."""
    ax0, ay0, ax1, ay1 = a[:, 0] - a[:, 2] / 2, a[:, 1] - a[:, 3] / 2, a[:, 0] + a[:, 2] / 2, a[:, 1] + a[:, 3] / 2
    bx0, by0, bx1, by1 = b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2
    iw = np.clip(np.minimum(ax1, bx1) - np.maximum(ax0, bx0), 0, None)
    ih = np.clip(np.minimum(ay1, by1) - np.maximum(ay0, by0), 0, None)
    inter = iw * ih
    union = np.clip(a[:, 2], 0, None) * np.clip(a[:, 3], 0, None) + b[:, 2] * b[:, 3] - inter
    return inter / np.maximum(union, 1e-9)


@dataclass
class Row:
    name: str
    mean_iou: float
    at_half: float
    accuracy: float | None
    seconds: float
    note: str = ""


def keras_recipe(features, boxes, classes, seed):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    tf.keras.utils.set_random_seed(seed)
    (x, _, y, _), (tx, _, ty, _) = features["train"], features["test"]
    inputs = tf.keras.Input((x.shape[1],))
    label = tf.keras.layers.Dense(classes, activation="softmax", name="label")(inputs)
    box = tf.keras.layers.Dense(4, activation="sigmoid", name="box")(inputs)
    model = tf.keras.Model(inputs, [label, box])
    model.compile(optimizer=tf.keras.optimizers.Adam(KERAS["learning_rate"]),
                  loss={"label": "sparse_categorical_crossentropy", "box": "mse"},
                  loss_weights={"label": 0.8, "box": 0.2})
    started = time.perf_counter()
    model.fit(x, {"label": y, "box": boxes["train"]}, epochs=KERAS["epochs"], batch_size=KERAS["batch_size"], verbose=0)
    seconds = time.perf_counter() - started
    probabilities, predicted = model.predict(tx, verbose=0)
    overlap = iou(predicted, boxes["test"])
    return Row("Keras recipe (pooled, 0.8/0.2)", float(overlap.mean()), float((overlap >= 0.5).mean()),
               float((probabilities.argmax(1) == ty).mean()), seconds)


def linear_readout(features, boxes):
    from sklearn.linear_model import Ridge
    if features["train"][1] is None:
        return None
    (x, vx, tx) = (features[p][1] for p in ("train", "valid", "test"))
    started = time.perf_counter()
    best = None
    for alpha in RIDGE_ALPHAS:
        model = Ridge(alpha=alpha).fit(x, boxes["train"])
        score = iou(model.predict(vx), boxes["valid"]).mean()
        if best is None or score > best[0]:
            best = (score, alpha, model)
    seconds = time.perf_counter() - started
    overlap = iou(best[2].predict(tx), boxes["test"])
    return Row("linear read-out of the map (Ridge)", float(overlap.mean()), float((overlap >= 0.5).mean()), None,
               seconds, f"alpha {best[1]:g}")


# ---------------------------------------------------------------- the benchmark


def job_row(name, job):
    evaluation = job["evaluation"]
    test, boxes = evaluation["test"], evaluation["test_boxes"]
    timings = evaluation["timings"]
    note = f"{evaluation.get('box_head')}, epoch {evaluation['best_epoch']}/{evaluation['epochs_run']}"
    if evaluation.get("fine_tune"):
        note += ", phase 2"
    return Row(name, boxes["mean_iou"], boxes["iou_at_least_half"], test["accuracy"], timings["training_seconds"], note)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--graft", default="target/release/graft")
    parser.add_argument("--model-dir", default="models")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--images", type=int, default=720)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", action="append", default=[], metavar="NAME=JSON",
                        help="another graft row: job fields added to the defaults, e.g. 'pad={\"geometry\": \"pad\"}'")
    args = parser.parse_args()
    started = time.perf_counter()
    log = lambda message: print(f"[{time.perf_counter() - started:6.1f} s] {message}", file=sys.stderr, flush=True)

    samples = build(args.images, args.seed)
    log(f"built {len(samples)} images")
    extra = [(name, json.loads(spec)) for name, spec in (j.split("=", 1) for j in args.jobs)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "data").mkdir()
        with tb.Graft(args.graft, args.model_dir, args.model, Path(tmp) / "data") as graft:
            body, content_type = tb.multipart({"name": "shapes", "seed": args.seed, "split": SPLIT}, "archive",
                                              "shapes.zip", archive(samples))
            dataset = tb.request("POST", f"{graft.base}/v1/datasets", body, content_type)
            report = dataset["report"]
            log(f"uploaded: {dataset['images']} images, annotations {report.get('annotations')}, "
                f"several boxes {report.get('images_with_several_boxes')}, problems {report.get('annotation_problems_total')}")
            base = {"dataset": dataset["id"], "base_model": args.model, "task": "localize", "seed": args.seed}
            features = None
            for name, fields in [("graft defaults", {}), ("graft pooled head", {"box_head": "pooled"})] + extra:
                try:
                    job, _ = graft.job({**base, **fields})
                except urllib.error.HTTPError as refused:
                    log(f"{name}: refused: {refused.read().decode(errors='replace')}")
                    continue
                rows.append(job_row(name, job))
                log(f"{name}: done")
                if features is None:
                    # The defaults' features (their geometry), before another row caches others.
                    features = cached_features(graft, dataset["id"], args.model)

    by_sha = {}
    import hashlib
    for s in samples:
        by_sha[hashlib.sha256(s.data).hexdigest()] = s
    boxes = {part: normalised_boxes(by_sha, features[part][3]) for part in features}
    rows.append(keras_recipe(features, boxes, len(CLASSES), args.seed))
    if (readout := linear_readout(features, boxes)) is not None:
        rows.append(readout)

    sizes = " / ".join(f"{p} {len(features[p][2])}" for p in ("train", "valid", "test"))
    print(f"== shapes: {len(samples)} images ({sizes}), {len(CLASSES)} classes, {args.model}")
    print(f"{'':36}{'mean IoU':>9}{'IoU≥0.5':>9}{'class acc':>10}{'fit s':>8}  note")
    for r in rows:
        accuracy = "" if r.accuracy is None else f"{r.accuracy:.4f}"
        print(f"{r.name:36}{r.mean_iou:>9.4f}{r.at_half:>9.3f}{accuracy:>10}{r.seconds:>8.2f}  {r.note}")
    print("targets for graft defaults: mean IoU ≥ 0.75, IoU ≥ 0.5 for ≥ 90 % of boxes, class accuracy ≥ 0.95")
    print(f"\nbenchmark wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
