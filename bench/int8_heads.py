#!/usr/bin/env python3
"""The head's test accuracy on an INT8 base against FP32, on the `make bench-train` data sets.

For each data set (photos, digits, tiles, built exactly as bench/train_bench.py builds them)
it uploads the images to a real `graft serve` and submits the default job with
`"quantize": true` and `"max_accuracy_drop": 100`, so that both precisions are always
trained and tested: the base quantised on the train split, the head fitted on FP32 features
and on INT8 features, both tested on the same test split. It prints both accuracies and the
drop (target: within 1 point).

Usage: int8_heads.py [--graft target/release/graft] [--datasets photos,digits,tiles]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

from train_bench import DATASETS, Graft, class_folder_zip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--graft", default="target/release/graft")
    parser.add_argument("--model-dir", default="models")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    print(f"{'data set':10}{'train':>7}{'test':>6}{'FP32 acc':>10}{'INT8 acc':>10}{'drop pts':>10}"
          f"{'calib':>7}{'job s':>8}  served")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "data").mkdir()
        with Graft(args.graft, args.model_dir, args.model, Path(tmp) / "data") as graft:
            for name in names:
                dataset = graft.upload(name, class_folder_zip(name, DATASETS[name](args.seed)), args.seed)
                spec = {"dataset": dataset["id"], "base_model": args.model, "quantize": True, "max_accuracy_drop": 100}
                started = time.perf_counter()
                job, _ = graft.job(spec)
                verdict = job["evaluation"]["quantization"]
                train = sum(c["train"] for c in dataset["classes"])
                test = job["evaluation"]["test"]["count"]
                worst = max(worst, verdict["accuracy_drop"])
                print(f"{name:10}{train:>7}{test:>6}{verdict['fp32_test_accuracy']:>10.4f}"
                      f"{verdict['int8_test_accuracy']:>10.4f}{verdict['accuracy_drop']:>+10.2f}"
                      f"{verdict['calibration_images']:>7}{time.perf_counter() - started:>8.1f}  {verdict['served']}",
                      flush=True)
    print(f"largest drop {worst:+.2f} points (target ≤ 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
