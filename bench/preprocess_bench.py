"""Times the reference Python preprocessing (Pillow + numpy) of one image to one model input.

    .venv-bench/bin/python bench/preprocess_bench.py --image tests/fixtures/generated/images/china.jpg \
        --manifest models/efficientnet_lite0.toml --iterations 200

Per iteration, from the encoded bytes already in memory: decode (Image.open, EXIF
orientation, convert to RGB, img.load()), resize + crop/pad (Pillow BILINEAR, numpy slicing),
normalisation + layout (numpy, float32) — exactly the code bench/python_server.py runs
(bench/reference_preprocess.py). Prints one line of JSON on stdout, in milliseconds:

    {"pillow_numpy_ms_median": ..., "pillow_numpy_ms_p10": ..., "iterations": ..., ...}

The extra keys are the median of each stage, the 90th percentile of the total, the image
and the model input shape.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.dont_write_bytecode = True  # no bench/__pycache__ in the working tree
sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_preprocess as rp  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--manifest", required=True, help="a graft manifest (models/NAME.toml)")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10, help="untimed iterations first")
    args = parser.parse_args()
    if args.iterations < 1:
        parser.error("--iterations must be at least 1")

    spec = rp.load_manifest(args.manifest).spec
    data = Path(args.image).read_bytes()
    clock = time.perf_counter_ns

    for _ in range(args.warmup):
        rp.normalize(rp.resize(rp.decode(data), spec), spec)

    decode_ns, resize_ns, normalize_ns, total_ns = [], [], [], []
    for _ in range(args.iterations):
        t0 = clock()
        img = rp.decode(data)
        t1 = clock()
        pixels = rp.resize(img, spec)
        t2 = clock()
        tensor = rp.normalize(pixels, spec)
        t3 = clock()
        decode_ns.append(t1 - t0)
        resize_ns.append(t2 - t1)
        normalize_ns.append(t3 - t2)
        total_ns.append(t3 - t0)

    def ms(values: list[int], q: float) -> float:
        return round(float(np.percentile(np.asarray(values, dtype=np.float64), q)) / 1e6, 4)

    print(json.dumps({
        "pillow_numpy_ms_median": ms(total_ns, 50),
        "pillow_numpy_ms_p10": ms(total_ns, 10),
        "pillow_numpy_ms_p90": ms(total_ns, 90),
        "decode_ms_median": ms(decode_ns, 50),
        "resize_ms_median": ms(resize_ns, 50),
        "normalize_ms_median": ms(normalize_ns, 50),
        "iterations": args.iterations,
        "image": args.image,
        "image_size": list(img.size),
        "tensor_shape": list(tensor.shape),
    }), flush=True)


if __name__ == "__main__":
    main()
