#!/usr/bin/env python3
"""The web console in a real headless Chromium, against a graft started here with the fixture
models and an API key.

It classifies a photo by upload, localizes with a trained localizer and finds the box drawn
where the model put it, uploads a dataset and sees its counts and thumbnails, starts a job
from the form and sees the curves gain points while it runs, opens a confusion-matrix cell
of misclassified images, cancels a job, and gets in with a wrong key and then a right one.
Every page is saved as a screenshot at 1280×800 and 390×844.

Usage: run_console.py --graft target/debug/graft --fixtures tests/fixtures/generated
                      [--chromium /usr/bin/chromium] [--screenshots target/console-screenshots]
"""

import argparse
import base64
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

from PIL import Image, ImageDraw
from playwright.sync_api import Page, expect, sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from graft_process import free_port, wait_ready  # noqa: E402

KEY = "console-test-key"
# A running job stops at its next check, and a stream sends what happened every 250 ms.
expect.set_options(timeout=60_000)
SIZES = [(1280, 800), (390, 844)]
TIMEOUT_MS = 120_000


class Graft:
    """The HTTP API, for setting up and for computing what the console should show."""

    def __init__(self, base: str):
        self.base = base

    def call(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None):
        request = urllib.request.Request(self.base + path, data=body, method=method)
        request.add_header("authorization", f"Bearer {KEY}")
        if content_type:
            request.add_header("content-type", content_type)
        with urllib.request.urlopen(request, timeout=120) as answer:
            return json.loads(answer.read() or b"null")

    def upload(self, archive: bytes, name: str):
        boundary = "consoletestboundary"
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\n{name}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="archive"; filename="a.zip"\r\n'
            "Content-Type: application/zip\r\n\r\n"
        ).encode() + archive + f"\r\n--{boundary}--\r\n".encode()
        return self.call("POST", "/v1/datasets", body, f"multipart/form-data; boundary={boundary}")

    def wait_job(self, job_id: str, seconds: float = 300):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            job = self.call("GET", f"/v1/jobs/{job_id}")
            if job["state"] in ("succeeded", "failed", "cancelled"):
                return job
            time.sleep(0.2)
        sys.exit(f"job {job_id} did not end in {seconds} s")


# ---- test data -------------------------------------------------------------------------

def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def noisy(colour: tuple[int, int, int], size: tuple[int, int], rng: random.Random, spread: int = 40) -> Image.Image:
    w, h = size
    data = bytearray()
    for _ in range(w * h):
        data.extend(max(0, min(255, c + rng.randint(-spread, spread))) for c in colour)
    return Image.frombytes("RGB", size, bytes(data))


def colour_zip(per_class: int) -> bytes:
    """red and green folders, and `twin`: images drawn like green's, so the head confuses them;
    plus a text file the upload rejects."""
    rng = random.Random(7)
    colours = {"red": (210, 40, 40), "green": (40, 180, 60), "twin": (40, 180, 60)}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, colour in colours.items():
            for i in range(per_class):
                size = (rng.randint(28, 60), rng.randint(28, 60))
                archive.writestr(f"colours/{name}/{i:03}.png", png_bytes(noisy(colour, size, rng)))
        archive.writestr("colours/notes.txt", b"not an image")
    return out.getvalue()


def scene(cls: int, seed: int) -> tuple[Image.Image, list[int]]:
    """A red square (cls 1) or blue disc (cls 0) on a greenish textured background, and its box."""
    rng = random.Random(seed)
    w, h = (96, 72) if seed % 2 == 0 else (72, 96)
    green = rng.randint(90, 199)
    image = noisy((green * rng.randint(50, 94) // 100, green, green * rng.randint(40, 94) // 100), (w, h), rng, 8)
    side = rng.randint(22, 39)
    x0, y0 = rng.randint(0, w - side - 1), rng.randint(0, h - side - 1)
    draw = ImageDraw.Draw(image)
    if cls == 1:
        draw.rectangle([x0, y0, x0 + side - 1, y0 + side - 1], fill=(210, 40, 40))
    else:
        draw.ellipse([x0, y0, x0 + side - 1, y0 + side - 1], fill=(40, 60, 210))
    return image, [x0, y0, x0 + side, y0 + side]


def voc(file: str, size: tuple[int, int], label: str, box: list[int]) -> bytes:
    x0, y0, x1, y1 = box
    return (f"<annotation><filename>{file}</filename><size><width>{size[0]}</width><height>{size[1]}</height>"
            f"<depth>3</depth></size><object><name>{label}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object></annotation>").encode()


def box_zip(per_class: int) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for cls, label in enumerate(["blue", "red"]):
            for i in range(per_class):
                image, box = scene(cls, cls * 10_000 + i)
                archive.writestr(f"photos/{label}_{i:03}.png", png_bytes(image))
                archive.writestr(f"photos/{label}_{i:03}.xml", voc(f"{label}_{i:03}.png", image.size, label, box))
    return out.getvalue()


def iou(a, b) -> float:
    overlap = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return overlap / (area(a) + area(b) - overlap)


# ---- the browser -----------------------------------------------------------------------

class Console:
    def __init__(self, page: Page, base: str, shots: Path):
        self.page, self.base, self.shots = page, base, shots
        self.origin_requests: list[str] = []
        self.foreign_requests: list[str] = []
        self.policy_violations: list[str] = []
        page.on("request", self._seen)
        page.on("console", lambda m: self.policy_violations.append(m.text) if "Content Security Policy" in m.text else None)
        page.on("pageerror", lambda error: sys.exit(f"a script error in the console: {error}"))
        page.set_default_timeout(TIMEOUT_MS)

    def _seen(self, request):
        url = request.url
        if url.startswith(self.base) or url.startswith(("blob:", "data:")):
            self.origin_requests.append(url)
        else:
            self.foreign_requests.append(url)

    def go(self, fragment: str):
        self.page.goto(f"{self.base}/#{fragment}")

    def shoot(self, name: str):
        """Screenshots at both sizes, and checks that every field has a label and nothing
        overflows the phone width."""
        for width, height in SIZES:
            self.page.set_viewport_size({"width": width, "height": height})
            self.page.wait_for_timeout(150)
            path = self.shots / f"{name}-{width}x{height}.png"
            self.page.screenshot(path=str(path), full_page=True)
            overflow = self.page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 1, f"{name} at {width}px is {overflow}px wider than the window"
        unlabelled = self.page.evaluate("""[...document.querySelectorAll('input, select')]
            .filter(e => e.type !== 'hidden' && e.labels.length === 0 && !e.getAttribute('aria-label'))
            .map(e => e.outerHTML)""")
        assert not unlabelled, f"{name}: fields without a label: {unlabelled}"
        self.page.set_viewport_size({"width": SIZES[0][0], "height": SIZES[0][1]})


def log(message: str):
    print(f"[console] {message}", flush=True)


def check_key_prompt(console: Console):
    """No key yet: the prompt comes; a wrong key brings it back; the right one lets the page in."""
    page = console.page
    console.go("/datasets")
    dialog = page.locator("#key-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#key-why")).to_contain_text("needs an API key")
    expect(page.locator("#key-input")).to_be_focused()
    console.shoot("key-prompt")
    page.fill("#key-input", "wrong-key")
    page.click("#key-dialog button[type=submit]")
    # The server's answer to the wrong key brings the prompt back, saying why.
    expect(page.locator("#key-why")).to_contain_text("not valid")
    expect(dialog).to_be_visible()
    expect(page.locator("#ds-list")).to_have_count(0)
    page.fill("#key-input", KEY)
    page.click("#key-dialog button[type=submit]")
    expect(dialog).to_be_hidden()
    expect(page.locator("#ds-list")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('graft.apiKey')") == KEY
    log("wrong key, then the right one: ok")


def check_classify(console: Console, fixtures: Path):
    page = console.page
    best = json.loads((fixtures / "models" / "expected.json").read_text())["tiny_nchw"]["img1.png"][0]
    expected = best["index"]
    labels = [line.split("\t")[2] for line in (fixtures / "models" / "fixture_labels.tsv").read_text().splitlines()[1:]]
    console.go("/models?model=tiny_nchw")
    expect(page.locator("#try-model")).to_have_value("tiny_nchw")
    page.set_input_files("#try-files", str(fixtures / "images" / "img1.png"))
    top = page.locator("#try-results .top-label").first
    expect(top).to_have_text(labels[expected])
    expect(page.locator("#try-results .latency").first).to_contain_text("answered in")
    bars = page.locator("#try-results .bars li")
    expect(bars).to_have_count(5)
    # The top bar is as long as its probability (computed by the fixture script).
    filled = page.evaluate("""() => {
        const bar = document.querySelector('#try-results .bars li .bar');
        return bar.firstChild.getBoundingClientRect().width / bar.getBoundingClientRect().width; }""")
    assert abs(filled - best["score"]) < 0.02, (filled, best["score"])
    # Dropped on the zone, and pasted: the same answer as the API's for those images.
    for how, name in (("drop", "img0.png"), ("paste", "img2.png")):
        want = json.loads((fixtures / "models" / "expected.json").read_text())["tiny_nchw"][name][0]["index"]
        payload = base64.b64encode((fixtures / "images" / name).read_bytes()).decode()
        page.evaluate("""([how, name, payload]) => {
            const bytes = Uint8Array.from(atob(payload), c => c.charCodeAt(0));
            const data = new DataTransfer();
            data.items.add(new File([bytes], name, { type: 'image/png' }));
            if (how === 'drop') {
                document.getElementById('drop-zone').dispatchEvent(new DragEvent('drop', { dataTransfer: data, bubbles: true, cancelable: true }));
            } else {
                document.dispatchEvent(new ClipboardEvent('paste', { clipboardData: data, bubbles: true }));
            }
        }""", [how, name, payload])
        latest = page.locator("#try-results .result").first
        expect(latest.locator(".latency")).to_contain_text(name)
        expect(latest.locator(".top-label")).to_have_text(labels[want])
    console.shoot("models")
    log(f"classify by upload, drop and paste: top labels as the fixture script computed: ok")


def check_localize(console: Console, graft: Graft):
    page = console.page
    dataset = graft.upload(box_zip(100), "scenes")
    job = graft.call("POST", "/v1/jobs", json.dumps({
        "dataset": dataset["id"], "base_model": "tiny_spatial", "name": "scenes", "task": "localize",
        "epochs": 200, "learning_rate": 0.02, "batch_size": 16, "seed": 5, "early_stopping": {"patience": 40},
    }).encode(), "application/json")
    done = graft.wait_job(job["id"])
    assert done["state"] == "succeeded", done
    console.go("/models?model=scenes")
    expect(page.locator("#try-model")).to_have_value("scenes")
    work = Path(tempfile.mkdtemp())
    ious = []
    for seed in (90_001, 90_002, 90_003):
        image, truth = scene(1, seed)
        file = work / f"scene_{seed}.png"
        image.save(file)
        page.set_input_files("#try-files", str(file))
        result = page.locator("#try-results .result").first
        expect(result.locator(".top-label, .error")).to_have_count(1)
        rect = result.locator("rect.predicted-box")
        assert rect.count() == 1, f"no box drawn: {result.inner_text()}"
        drawn = [float(rect.get_attribute(f"data-{k}")) for k in ("x-min", "y-min", "x-max", "y-max")]
        answer = graft.call("POST", "/v1/models/scenes/localize", file.read_bytes(), "image/png")
        served = answer["localizations"][0]["box"]
        served = [served[k] for k in ("x_min", "y_min", "x_max", "y_max")]
        assert all(abs(a - b) < 1e-3 for a, b in zip(drawn, served)), (drawn, served)
        # Where it is on screen: the box scaled from original pixels onto the shown photo.
        photo = result.locator(".photo img").bounding_box()
        shown = rect.bounding_box()
        sx, sy = photo["width"] / image.width, photo["height"] / image.height
        assert abs(shown["x"] - (photo["x"] + drawn[0] * sx)) < 3 + image.width / 100 * sx, (shown, photo, drawn)
        assert abs(shown["y"] - (photo["y"] + drawn[1] * sy)) < 3 + image.width / 100 * sy, (shown, photo, drawn)
        ious.append(iou(drawn, truth))
    assert sum(ious) / len(ious) >= 0.5, f"boxes drawn where the model finds the square: IoUs {ious}"
    console.shoot("models-localize")
    log(f"localize: drawn boxes match the answers, IoU with the squares {[round(i, 3) for i in ious]}: ok")


def check_dataset_and_job(console: Console, graft: Graft, work: Path):
    page = console.page
    archive = work / "colours.zip"
    archive.write_bytes(colour_zip(24))
    console.go("/datasets")
    page.set_input_files("#ds-archive", str(archive))
    page.fill("#ds-name", "colours")
    page.click("form[aria-labelledby=ds-upload] button[type=submit]")
    page.wait_for_url("**/#/datasets/*")
    dataset_id = page.url.rsplit("/", 1)[1]
    dataset = graft.call("GET", f"/v1/datasets/{dataset_id}")
    rows = page.locator("#class-counts tbody tr")
    expect(rows).to_have_count(3)
    for i, c in enumerate(dataset["classes"]):
        cells = rows.nth(i).locator("td")
        expect(cells).to_have_text([str(c["train"]), str(c["valid"]), str(c["test"]), "24"])
    expect(page.locator("#rejected")).to_contain_text("colours/notes.txt")
    for c in dataset["classes"]:
        thumbs = page.locator(f".thumbs[data-class='{c['name']}'] img")
        expect(thumbs).to_have_count(12)
        page.wait_for_function(
            "name => [...document.querySelectorAll(`.thumbs[data-class='${name}'] img`)].every(i => i.complete && i.naturalWidth > 0)",
            arg=c["name"])
    console.shoot("dataset")
    # The rest of a class, a page at a time, until there is no more.
    first = dataset["classes"][0]["name"]
    section = page.locator(f"section:has(.thumbs[data-class='{first}'])")
    section.get_by_role("button", name="Show more").click()
    expect(section.locator(".thumbs img")).to_have_count(24)
    expect(section.get_by_role("button", name="Show more")).to_have_count(0)
    console.go("/datasets")
    expect(page.get_by_role("link", name="colours")).to_be_visible()
    console.shoot("datasets")
    log("dataset upload: counts, thumbnails and the rejected file: ok")

    # A job from the form, trained by epochs without early stopping so it runs a while.
    console.go(f"/jobs?dataset={dataset_id}")
    expect(page.locator("#job-dataset")).to_have_value(dataset_id)
    page.select_option("#job-base", "tiny_nchw")
    page.fill("#job-name", "console-colours")
    page.click("#job-form summary")
    page.check("#job-by-epochs")
    page.fill("#job-epochs", "1500")
    page.fill("#job-rate", "0.05")
    page.uncheck("#job-early")
    console.shoot("jobs")
    page.click("#job-form button[type=submit]")
    page.wait_for_url("**/#/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]
    counts = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        counts.append(page.locator("circle.point-train_loss").count())
        if page.locator("#job-state").text_content() == "succeeded":
            break
        page.wait_for_timeout(60)
    final = graft.call("GET", f"/v1/jobs/{job_id}")
    assert final["state"] == "succeeded", final
    expect(page.locator("table.heat")).to_be_visible()
    expect(page.locator("circle.point-train_loss")).to_have_count(len(final["epochs"]))
    seen = sorted(set(c for c in counts if 0 < c < len(final["epochs"])))
    assert len(seen) >= 2, f"the curve gains points while the job runs: counts seen {sorted(set(counts))}"
    log(f"live job: the curve grew through {len(seen)} sizes to {len(final['epochs'])} epochs: ok")

    # The per-class table and the matrix as the evaluation has them; a red cell opens its images.
    test = final["evaluation"]["test"]
    expect(page.locator("#per-class tbody tr")).to_have_count(3)
    cells = page.locator("table.heat button.cell")
    expect(cells).to_have_count(9)
    for t in range(3):
        for p in range(3):
            expect(cells.nth(t * 3 + p)).to_have_text(str(test["confusion"][t][p]))
    wrong = page.locator("table.heat button.cell:not([disabled])")
    assert wrong.count() > 0, f"green and twin look alike: {test['confusion']}"
    cell = wrong.first
    t, p = int(cell.get_attribute("data-true")), int(cell.get_attribute("data-predicted"))
    cell.click()
    images = page.locator("#misclassified .thumbs img")
    expect(images).to_have_count(test["confusion"][t][p])
    page.wait_for_function(
        "() => [...document.querySelectorAll('#misclassified .thumbs img')].every(i => i.complete && i.naturalWidth > 0)")
    listed = graft.call("GET", f"/v1/jobs/{job_id}/misclassified?true_class={t}&predicted_class={p}&limit=200")
    for image in listed["images"]:
        expect(page.locator("#misclassified figcaption", has_text=image["path"])).to_have_count(1)
    expect(page.locator("#job-try")).to_have_attribute("href", "#/models?model=console-colours")
    console.shoot("job")
    log(f"confusion matrix: cell ({t}, {p}) opened its {test['confusion'][t][p]} images: ok")
    return dataset_id


def check_cancel(console: Console, graft: Graft, dataset_id: str):
    page = console.page
    console.go(f"/jobs?dataset={dataset_id}")
    page.select_option("#job-base", "tiny_nchw")
    page.fill("#job-name", "console-cancelled")
    page.click("#job-form summary")
    page.check("#job-by-epochs")
    page.fill("#job-epochs", "10000")
    page.uncheck("#job-early")
    page.click("#job-form button[type=submit]")
    page.wait_for_url("**/#/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("circle.point-train_loss").first).to_be_attached()
    page.click("#job-cancel")
    expect(page.locator("#job-state")).to_have_text("cancelled")
    expect(page.locator("#job-cancel")).to_be_hidden()
    assert graft.wait_job(job_id, 60)["state"] == "cancelled"
    log("cancel: ok")


def check_phase2(console: Console, graft: Graft, dataset_id: str):
    """A job that also tunes the top of its base: its curves go on into phase 2, marked."""
    page = console.page
    job = graft.call("POST", "/v1/jobs", json.dumps({
        "dataset": dataset_id, "base_model": "tune_blind", "name": "console-tuned", "freeze_base": False,
        "epochs": 8, "learning_rate": 0.01, "early_stopping": None, "fine_tune": {"epochs": 4, "learning_rate": 0.01},
    }).encode(), "application/json")
    done = graft.wait_job(job["id"])
    assert done["state"] == "succeeded", done
    evaluation = done["evaluation"]
    phase1, phase2 = evaluation["phase1"]["epochs_run"], evaluation["fine_tune"]["epochs_run"]
    console.go(f"/jobs/{job['id']}")
    expect(page.locator("#job-results table.heat")).to_be_visible()
    expect(page.locator("circle.point-train_loss")).to_have_count(phase1 + phase2)
    expect(page.locator("line.phase2-mark")).to_have_count(2)  # on the loss and the accuracy chart
    console.shoot("job-phase2")
    log(f"phase 2: {phase1} + {phase2} epochs plotted, phase 2 marked: ok")


def check_keyboard(console: Console):
    """Tab moves through the page without getting stuck on one element."""
    page = console.page
    console.go("/jobs")
    expect(page.locator("#job-form")).to_be_visible()
    focused = []
    for _ in range(25):
        page.keyboard.press("Tab")
        focused.append(page.evaluate("document.activeElement && (document.activeElement.id || document.activeElement.outerHTML.slice(0, 60))"))
    assert len(set(focused)) >= 10, f"focus order: {focused}"
    page.focus("#job-name")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.tagName") == "SUMMARY", "the advanced options come after the name"
    log("keyboard: focus moves on through the page: ok")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--graft", required=True)
    parser.add_argument("--fixtures", required=True)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--screenshots", default="target/console-screenshots")
    args = parser.parse_args()
    fixtures = Path(args.fixtures).resolve()
    shots = Path(args.screenshots).resolve()
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        models = work / "models"
        models.mkdir()
        for folder in ("models", "spatial", "tune"):
            for file in (fixtures / folder).iterdir():
                if file.suffix in (".onnx", ".toml", ".tsv") and not (models / file.name).exists():
                    shutil.copy(file, models / file.name)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        with open(work / "graft.log", "w") as graft_log:
            server = subprocess.Popen(
                [args.graft, "serve", "--listen", f"127.0.0.1:{port}", "--model-dir", str(models),
                 "--data-dir", str(work / "data"), "--api-key", KEY],
                stdout=graft_log, stderr=subprocess.STDOUT)
            try:
                wait_ready(base, server)
                graft = Graft(base)
                with sync_playwright() as playwright:
                    browser = playwright.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
                    context = browser.new_context(viewport={"width": 1280, "height": 800})
                    console = Console(context.new_page(), base, shots)
                    check_key_prompt(console)
                    check_classify(console, fixtures)
                    check_localize(console, graft)
                    dataset_id = check_dataset_and_job(console, graft, work)
                    check_cancel(console, graft, dataset_id)
                    check_phase2(console, graft, dataset_id)
                    check_keyboard(console)
                    console.go("/settings")
                    expect(console.page.locator("#settings-key")).to_have_value(KEY)
                    console.shoot("settings")
                    assert not console.foreign_requests, f"requests to other hosts: {console.foreign_requests}"
                    assert not console.policy_violations, f"refused by the page's policy: {console.policy_violations}"
                    log(f"{len(console.origin_requests)} requests, none to another host")
                    browser.close()
            except BaseException:
                graft_log.flush()
                with open(work / "graft.log") as text:
                    print("--- graft's log (last 40 lines) ---\n" + "".join(text.readlines()[-40:]), file=sys.stderr)
                raise
            finally:
                server.terminate()
                server.wait(timeout=30)
    names = sorted(p.name for p in shots.iterdir())
    log(f"screenshots in {shots}: {', '.join(names)}")


if __name__ == "__main__":
    main()
