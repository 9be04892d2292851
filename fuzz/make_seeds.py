"""Writes the fuzz targets' seed corpora (fuzz/corpus/<target>/seed-*): small valid inputs
of every kind each target reads, so the fuzzer starts from real structure. The seeds are
committed; run this again only to change them (needs Pillow: `.venv/bin/python`)."""

import io
import json
import sys
import tarfile
import zipfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent / "corpus"


def write(target: str, name: str, data: bytes) -> None:
    folder = ROOT / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"seed-{name}").write_bytes(data)


def gradient(width: int, height: int, mode: str = "RGB") -> Image.Image:
    image = Image.new("RGB", (width, height))
    image.putdata([((x * 255) // max(width - 1, 1), (y * 255) // max(height - 1, 1), 128)
                   for y in range(height) for x in range(width)])
    return image.convert(mode)


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def images() -> dict[str, bytes]:
    rgb = gradient(24, 16)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90° clockwise
    return {
        "baseline.jpg": encoded(rgb, "JPEG", quality=80),
        "progressive.jpg": encoded(rgb, "JPEG", quality=80, progressive=True),
        "exif.jpg": encoded(rgb, "JPEG", exif=exif.tobytes()),
        "gray.jpg": encoded(rgb.convert("L"), "JPEG"),
        "rgb.png": encoded(rgb, "PNG"),
        "rgba.png": encoded(gradient(9, 7, "RGBA"), "PNG"),
        "palette.png": encoded(rgb.convert("P"), "PNG"),
        "wide.png": encoded(gradient(200, 1), "PNG"),
        "tall.png": encoded(gradient(1, 200), "PNG"),
        "anim.gif": encoded(rgb.convert("P"), "GIF"),
        "lossless.webp": encoded(rgb, "WEBP", lossless=True),
        "image.bmp": encoded(rgb, "BMP"),
    }


VOC = """<annotation><folder>images</folder><filename>cat/1.jpg</filename>
<size><width>24</width><height>16</height><depth>3</depth></size>
<object><name>cat</name><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>20</xmax><ymax>14</ymax></bndbox></object>
<object><name>dog</name><bndbox><xmin>1.5</xmin><ymin>0</ymin><xmax>9</xmax><ymax>8</ymax></bndbox></object>
</annotation>"""

VIA_CSV = """filename,file_size,file_attributes,region_count,region_id,region_shape_attributes,region_attributes
1.jpg,100,"{}",2,0,"{""name"":""rect"",""x"":2,""y"":3,""width"":10,""height"":8}","{""label"":""cat""}"
1.jpg,100,"{}",2,1,"{""name"":""polygon"",""all_points_x"":[1,5,9],""all_points_y"":[2,8,3]}","{""label"":""dog""}"
"""

VIA_JSON = json.dumps({
    "1.jpg100": {"filename": "1.jpg", "size": 100, "file_attributes": {}, "regions": [
        {"shape_attributes": {"name": "rect", "x": 2, "y": 3, "width": 10, "height": 8},
         "region_attributes": {"label": "cat"}},
        {"shape_attributes": {"name": "circle", "cx": 8, "cy": 8, "r": 4}, "region_attributes": {"label": "dog"}},
    ]},
})

COCO = json.dumps({
    "images": [{"id": 1, "file_name": "1.jpg", "width": 24, "height": 16}, {"id": "2", "file_name": "b/2.png"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 8], "area": 80, "iscrowd": 0},
        {"id": 2, "image_id": "2", "category_id": 2, "bbox": [0.5, 1, 4, 4], "segmentation": [[0, 0, 4, 0, 4, 4]]},
    ],
    "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
})

CSV = "filename,label,xmin,ymin,xmax,ymax\n1.jpg,cat,2,3,20,14\n2.png,dog,0.5,1,9,8\n3.jpg,,,,,\n"


def archives(pictures: dict[str, bytes]) -> dict[str, bytes]:
    files = {f"flowers/{cls}/{i}.{name.split('.')[-1]}": data
             for cls, picks in (("daisy", ("baseline.jpg", "rgb.png")), ("rose", ("gray.jpg", "image.bmp")))
             for i, (name, data) in enumerate((p, pictures[p]) for p in picks)}
    boxes = {"photos/1.jpg": pictures["baseline.jpg"], "photos/2.png": pictures["rgb.png"],
             "photos/boxes.csv": CSV.replace("1.jpg", "photos/1.jpg").replace("2.png", "photos/2.png").encode()}
    voc = {"img/1.jpg": pictures["baseline.jpg"], "img/1.xml": VOC.replace("cat/1.jpg", "1.jpg").encode()}
    out = {}
    for label, members in (("classes", files), ("boxes", boxes), ("voc", voc)):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path, data in members.items():
                archive.writestr(path, data)
        out[f"{label}.zip"] = buffer.getvalue()
        for suffix, mode in (("tar", "w"), ("tar.gz", "w:gz")):
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode=mode) as archive:
                for path, data in members.items():
                    info = tarfile.TarInfo(path)
                    info.size = len(data)
                    archive.addfile(info, io.BytesIO(data))
            out[f"{label}.{suffix}"] = buffer.getvalue()
    return out


JOBS = [
    {"dataset": "d", "base_model": "m"},
    {"dataset": "d", "base_model": "m", "name": "flowers", "epochs": 20, "batch_size": 32, "optimizer": "adam",
     "learning_rate": 0.001, "early_stopping": {"patience": 5, "metric": "val_accuracy"}, "seed": 0,
     "hidden_units": 64, "dropout": 0.2, "class_weights": True, "weight_decay": 0.0001},
    {"dataset": "d", "base_model": "m", "augment": {"flip": True, "crop": 0.1, "brightness": 0.1, "contrast": 0.1,
                                                     "variants": 3}, "optimizer": "sgd", "momentum": 0.9},
    {"dataset": "d", "base_model": "m", "task": "localize", "box_head": "spatial",
     "loss_weights": {"class": 0.8, "box": 0.2}, "early_stopping": None},
    {"dataset": "d", "base_model": "m", "freeze_base": False, "unfreeze": {"blocks": 2},
     "fine_tune": {"epochs": 3, "learning_rate": 0.0001, "batch_size": 16}},
    {"dataset": "d", "base_model": "m", "unfreeze": {"tensor": "block6a"}, "optimizer": "nadam"},
]


def main() -> None:
    pictures = images()
    for position, (name, data) in enumerate(pictures.items()):
        # The target's first two bytes choose the resize mode, layout, colour order and input size.
        write("decode_preprocess", name, bytes([position % 3 | (position & 3) << 4, 24 + position]) + data)
    for name, data in archives(pictures).items():
        write("archive_ingest", name, data)
    for target, text in (("annotations_voc", VOC), ("annotations_via_csv", VIA_CSV),
                         ("annotations_via_json", VIA_JSON), ("annotations_coco", COCO), ("annotations_csv", CSV)):
        write(target, "sample", text.encode())
    for i, job in enumerate(JOBS):
        write("job_spec", f"{i}.json", json.dumps(job).encode())
    print(f"seeds written under {ROOT}", file=sys.stderr)


if __name__ == "__main__":
    main()
