#!/usr/bin/env python3
"""Triton's perf_analyzer against graft's Open Inference Protocol endpoints.

perf_analyzer reads the model's metadata and configuration (graft serves Triton's model
configuration extension for it), sends random FP32 tensors of the model's input shape, and
reports throughput and latency per concurrency. It comes from the `perf-analyzer` wheel on
the Python index, whose binary needs glibc 2.38; on an older system (Debian bookworm has 2.36)
this script runs it with Debian trixie's C and C++ runtime, fetched with apt-get into
target/bench/perf-analyzer (nothing is installed on the system).

Usage: perf_analyzer.py --graft target/release/graft --model-dir models --model efficientnet_lite0
           [--protocols grpc,http] [--concurrency 1:8:1] [--batch 1]
"""

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from graft_process import free_port, wait_ready  # noqa: E402

VERSION = "2.60.0"
WORK = os.path.join("target", "bench", "perf-analyzer")
TRIXIE_PACKAGES = ["libc6", "libstdc++6", "libgcc-s1"]


def perf_analyzer_binary() -> str:
    binary = os.path.join(WORK, "wheel", "perf_analyzer", "bin", "perf_analyzer")
    if os.path.isfile(binary):
        return binary
    downloads = os.path.join(WORK, "download")
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--platform", "manylinux_2_38_x86_64", "--dest", downloads, f"perf-analyzer=={VERSION}"], check=True)
    wheel = next(f for f in os.listdir(downloads) if f.startswith(f"perf_analyzer-{VERSION}"))
    with zipfile.ZipFile(os.path.join(downloads, wheel)) as archive:
        archive.extractall(os.path.join(WORK, "wheel"))
    os.chmod(binary, 0o755)
    return binary


def glibc_is_old() -> bool:
    version = platform.libc_ver()[1] or "0"
    return tuple(int(p) for p in version.split(".")[:2]) < (2, 38)


def trixie_runtime() -> list[str]:
    """The command prefix that runs a binary with trixie's loader and libraries."""
    root = os.path.join(WORK, "trixie")
    loader = os.path.join(root, "usr", "lib64", "ld-linux-x86-64.so.2")
    if not os.path.isfile(loader):
        apt = os.path.abspath(os.path.join(WORK, "apt"))
        for folder in ("sources", "lists/partial", "cache/archives/partial", "debs"):
            os.makedirs(os.path.join(apt, folder), exist_ok=True)
        with open(os.path.join(apt, "sources", "trixie.sources"), "w") as sources:
            sources.write("Types: deb\nURIs: http://deb.debian.org/debian\nSuites: trixie\nComponents: main\n"
                          "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
        open(os.path.join(apt, "status"), "w").close()
        options = ["-o", "Dir::Etc::SourceList=/dev/null", "-o", f"Dir::Etc::SourceParts={apt}/sources",
                   "-o", f"Dir::State={apt}", "-o", f"Dir::State::Lists={apt}/lists", "-o", f"Dir::Cache={apt}/cache",
                   "-o", f"Dir::State::status={apt}/status", "-o", "APT::Sandbox::User=root"]
        subprocess.run(["apt-get", *options, "-qq", "update"], check=True)
        subprocess.run(["apt-get", *options, "-qq", "download", *TRIXIE_PACKAGES], check=True, cwd=f"{apt}/debs")
        for deb in os.listdir(f"{apt}/debs"):
            subprocess.run(["dpkg-deb", "-x", os.path.join(apt, "debs", deb), root], check=True)
    libraries = os.path.join(root, "usr", "lib", "x86_64-linux-gnu")
    return [loader, "--library-path", f"{libraries}:/usr/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu"]




def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graft", default="target/release/graft")
    parser.add_argument("--model-dir", default="models")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--protocols", default="grpc,http")
    parser.add_argument("--concurrency", default="1:8:1", help="perf_analyzer's --concurrency-range")
    parser.add_argument("--batch", default="1", help="images per request")
    parser.add_argument("--interval-ms", default="3000", help="perf_analyzer's --measurement-interval")
    args = parser.parse_args()

    command = [perf_analyzer_binary()]
    if glibc_is_old():
        command = trixie_runtime() + command
    http_port, grpc_port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="graft-perf-analyzer-") as data:
        server = subprocess.Popen(
            [args.graft, "serve", "--listen", f"127.0.0.1:{http_port}", "--grpc-listen", f"127.0.0.1:{grpc_port}",
             "--model-dir", args.model_dir, "--models", args.model, "--data-dir", data, "--workers", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"},
        )
        try:
            wait_ready(f"http://127.0.0.1:{http_port}", server, 180)
            for protocol in args.protocols.split(","):
                port = grpc_port if protocol == "grpc" else http_port
                print(f"\n=== perf_analyzer {VERSION}, {protocol}, model {args.model}, batch {args.batch} ===", flush=True)
                run = subprocess.run(command + [
                    "-m", args.model, "-i", protocol, "-u", f"127.0.0.1:{port}", "-b", args.batch,
                    "--concurrency-range", args.concurrency, "--measurement-interval", args.interval_ms,
                ])
                if run.returncode != 0:
                    return run.returncode
        finally:
            server.terminate()
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
