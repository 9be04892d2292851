"""`make docker-test`: builds the CPU runtime image on this machine and checks it running.

No registry is reachable here, so the image is built from a local Debian base (made once with
debootstrap and `docker import`) with the binary and ONNX Runtime built outside it
(`--build-arg BINARY=prebuilt ORT=prebuilt`). The container runs with a models volume and a
data volume; the script checks `/readyz`, a classify of a real photo, the non-root user, the
HEALTHCHECK's verdict, and that a dataset uploaded before a restart is still there after it.
Starts dockerd when none answers (the script runs as root on CI machines).
"""

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from graft_process import free_port  # noqa: E402

BASE = "local/debian:bookworm-slim"
IMAGE = "graft:docker-test"
# Debian's docker.io client builds with the engine's own BuildKit (DOCKER_BUILDKIT=1); a newer
# client on the PATH may want the buildx plugin instead, which cannot be had here.
DOCKER = os.environ.get("DOCKER") or ("/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker")
os.environ["DOCKER_BUILDKIT"] = "1"


def run(*args: str, check: bool = True, capture: bool = True, both: bool = False) -> str:
    args = (DOCKER, *args[1:]) if args[0] == "docker" else args
    result = subprocess.run(args, check=False, text=True, capture_output=capture)
    if check and result.returncode != 0:
        sys.exit(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return ((result.stdout or "") + (result.stderr or "" if both else "")).strip()


def step(message: str) -> float:
    print(f"== {message}", flush=True)
    return time.monotonic()


def ensure_tools() -> None:
    missing = [tool for tool in (DOCKER, "dockerd", "debootstrap") if not shutil.which(tool)]
    if missing:
        sys.exit(f"missing {', '.join(missing)}: apt-get install docker.io debootstrap (as root)")


def ensure_dockerd() -> None:
    if subprocess.run([DOCKER, "info"], capture_output=True).returncode == 0:
        return
    log = open("/tmp/graft-dockerd.log", "w")
    subprocess.Popen(["dockerd"], stdout=log, stderr=log, start_new_session=True)
    for _ in range(60):
        if subprocess.run([DOCKER, "info"], capture_output=True).returncode == 0:
            return
        time.sleep(1)
    sys.exit("dockerd did not start (see /tmp/graft-dockerd.log)")


def ensure_base() -> None:
    if run("docker", "images", "-q", BASE):
        return
    root = Path(tempfile.mkdtemp(prefix="graft-debootstrap-"))
    run("debootstrap", "--variant=minbase", "--include=ca-certificates,curl", "bookworm", str(root),
        "http://deb.debian.org/debian")
    tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run([DOCKER, "import", "-", BASE], stdin=tar.stdout, check=True, capture_output=True)
    tar.wait()
    run("rm", "-rf", str(root))


def get(url: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 30):
    request = urllib.request.Request(url, data=data, headers=headers or {})
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return answer.status, answer.read()


def wait_ready(base: str, container: str, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if get(f"{base}/readyz", timeout=2)[0] == 200:
                return
        except OSError:
            pass
        if run("docker", "inspect", "-f", "{{.State.Running}}", container) != "true":
            sys.exit(f"the container stopped:\n{run('docker', 'logs', container, check=False, both=True)}")
        time.sleep(0.5)
    sys.exit(f"not ready after {seconds} s:\n{run('docker', 'logs', container, check=False, both=True)}")


def dataset_zip() -> bytes:
    """Two classes of four tiny PNGs each (solid colours), as a class-folder archive."""
    import struct
    import zlib

    def png(rgb: tuple[int, int, int]) -> bytes:
        raw = b"".join(b"\x00" + bytes(rgb) * 16 for _ in range(16))
        chunk = lambda kind, body: struct.pack(">I", len(body)) + kind + body + struct.pack(  # noqa: E731
            ">I", zlib.crc32(kind + body))
        header = struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, rgb in [("red", (220, 20, 20)), ("blue", (20, 20, 220))]:
            for i in range(4):
                archive.writestr(f"colours/{name}/{i}.png", png((rgb[0], rgb[1] + i, rgb[2])))
    return buffer.getvalue()


def upload(base: str, archive: bytes) -> dict:
    boundary = "graftdockertest"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\ncolours\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"archive\"; filename=\"colours.zip\"\r\n"
            "Content-Type: application/zip\r\n\r\n").encode() + archive + f"\r\n--{boundary}--\r\n".encode()
    status, answer = get(f"{base}/v1/datasets", body, {"content-type": f"multipart/form-data; boundary={boundary}"})
    if status != 201:
        sys.exit(f"upload answered {status}: {answer[:500]!r}")
    return json.loads(answer)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="models", help="folder mounted as the models volume")
    parser.add_argument("--photo", default="tests/fixtures/generated/images/china.jpg")
    parser.add_argument("--model", default="efficientnet_lite0")
    args = parser.parse_args()
    started = time.monotonic()

    t = step("Docker engine")
    ensure_tools()
    ensure_dockerd()
    print(f"   {run('docker', 'version', '-f', '{{.Server.Version}}')} ({time.monotonic() - t:.1f} s)")
    t = step(f"local base image {BASE} (debootstrap once)")
    ensure_base()
    print(f"   {time.monotonic() - t:.1f} s")
    t = step(f"docker build -t {IMAGE} (RUNTIME_IMAGE={BASE}, BINARY=prebuilt, ORT=prebuilt)")
    run("docker", "build", "-q", "--build-arg", f"RUNTIME_IMAGE={BASE}", "--build-arg", "BINARY=prebuilt",
        "--build-arg", "ORT=prebuilt", "-t", IMAGE, ".")
    size = int(run("docker", "image", "inspect", "-f", "{{.Size}}", IMAGE))
    print(f"   built in {time.monotonic() - t:.1f} s, {size / 1e6:.0f} MB")
    config = json.loads(run("docker", "image", "inspect", "-f", "{{json .Config}}", IMAGE))
    assert config["User"] == "graft", config["User"]
    assert "readyz" in " ".join(config["Healthcheck"]["Test"]), config["Healthcheck"]
    print(f"   user {config['User']}, healthcheck {config['Healthcheck']['Test']}")

    port = free_port()
    volume = f"graft-docker-test-{os.getpid()}"
    container = f"graft-docker-test-{os.getpid()}"
    models = Path(args.models).resolve()
    base = f"http://127.0.0.1:{port}"
    try:
        t = step("docker run with the models volume and a data volume")
        run("docker", "run", "-d", "--name", container, "-p", f"127.0.0.1:{port}:8080",
            "-v", f"{models}:/opt/graft/models:ro", "-v", f"{volume}:/var/lib/graft/data",
            "-e", f"GRAFT_MODELS={args.model}", IMAGE)
        wait_ready(base, container)
        print(f"   /readyz 200 after {time.monotonic() - t:.1f} s")

        uid = run("docker", "exec", container, "id", "-u")
        assert uid == "10001", f"the process runs as uid {uid}"
        print(f"   runs as uid {uid} ({run('docker', 'exec', container, 'id', '-un')})")

        photo = Path(args.photo).read_bytes()
        status, answer = get(f"{base}/v1/models/{args.model}/classify?top_k=3", photo, {"content-type": "image/jpeg"})
        labels = [(p["label"], round(p["score"], 3)) for p in json.loads(answer)["predictions"][0]]
        assert status == 200 and labels, answer
        print(f"   classify {Path(args.photo).name}: {labels}")

        t = step("HEALTHCHECK")
        deadline = time.monotonic() + 150
        while (health := run("docker", "inspect", "-f", "{{.State.Health.Status}}", container)) != "healthy":
            assert health in ("starting", "healthy"), f"health {health}"
            assert time.monotonic() < deadline, "never healthy"
            time.sleep(1)
        print(f"   healthy after {time.monotonic() - t:.1f} s")

        t = step("data in the volume across a restart")
        dataset = upload(base, dataset_zip())
        run("docker", "restart", container)
        wait_ready(base, container)
        status, answer = get(f"{base}/v1/datasets/{dataset['id']}")
        after = json.loads(answer)
        assert status == 200 and after["images"] == dataset["images"] == 8, after
        print(f"   dataset {dataset['id']} ({after['images']} images) still there after the restart "
              f"({time.monotonic() - t:.1f} s)")
    finally:
        run("docker", "rm", "-f", container, check=False)
        run("docker", "volume", "rm", "-f", volume, check=False)
    print(f"docker-test passed in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
