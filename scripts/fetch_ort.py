#!/usr/bin/env python3
"""Fetches the ONNX Runtime shared library from its wheel on the Python package index.

The library inside the wheel is the same for every Python version, so one pinned
platform/Python pair is downloaded; only onnxruntime/capi/*.so* is unpacked.

    python3 scripts/fetch_ort.py --package onnxruntime --version 1.31.1 --dest .ort/cpu
"""

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--package", default="onnxruntime", help="onnxruntime (CPU) or onnxruntime-gpu (CUDA)")
    parser.add_argument("--version", default="1.31.1")
    parser.add_argument("--dest", type=Path, required=True)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             "--platform", "manylinux_2_28_x86_64", "--python-version", "3.12",
             f"{args.package}=={args.version}", "-d", tmp],
            check=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            sys.exit(f"expected one wheel, found {wheels}")
        args.dest.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheels[0]) as wheel:
            libraries = [n for n in wheel.namelist()
                         if n.startswith("onnxruntime/capi/lib") and ".so" in n]
            for name in libraries:
                target = args.dest / Path(name).name
                target.write_bytes(wheel.read(name))
                print(f"  {target}")
    if not (args.dest / f"libonnxruntime.so.{args.version}").is_file():
        sys.exit(f"libonnxruntime.so.{args.version} was not in the wheel")


if __name__ == "__main__":
    main()
