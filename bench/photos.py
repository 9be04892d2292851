#!/usr/bin/env python3
"""Real photos for calibration and agreement checks, from the packages that ship them.

Writes COUNT JPEG files into OUT: the colour photos scikit-image and scikit-learn ship, and
random crops of them (a third to all of the short side, flipped, brightness and contrast
jittered), so that a quantised model is calibrated and checked on natural images without
downloading any. The same seed gives the same files.

Usage: photos.py OUT [--count 512] [--seed 0]
"""

import argparse
import io
import random
from pathlib import Path

from PIL import Image, ImageEnhance

SOURCES = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png",
           "hubble_deep_field.jpg", "immunohistochemistry.png", "retina.jpg", "logo.png",
           "china.jpg", "flower.jpg"]


def shipped_photos() -> list[Image.Image]:
    import skimage
    import sklearn
    folders = [Path(skimage.__file__).parent / "data", Path(sklearn.__file__).parent / "datasets" / "images"]
    photos = []
    for name in SOURCES:
        for folder in folders:
            if (folder / name).exists():
                photos.append(Image.open(folder / name).convert("RGB"))
                break
    if not photos:
        raise SystemExit("no photos found in scikit-image or scikit-learn")
    return photos


def variant(photo: Image.Image, rng: random.Random) -> Image.Image:
    w, h = photo.size
    side = int(min(w, h) * rng.uniform(0.33, 1.0))
    x, y = rng.randrange(0, w - side + 1), rng.randrange(0, h - side + 1)
    crop = photo.crop((x, y, x + side, y + side)).resize((rng.randrange(224, 385),) * 2, Image.BILINEAR)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    crop = ImageEnhance.Brightness(crop).enhance(rng.uniform(0.8, 1.2))
    return ImageEnhance.Contrast(crop).enhance(rng.uniform(0.8, 1.2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    photos = shipped_photos()
    args.out.mkdir(parents=True, exist_ok=True)
    for i in range(args.count):
        photo = photos[i % len(photos)]
        image = photo if i < len(photos) else variant(photo, rng)
        out = io.BytesIO()
        image.save(out, "JPEG", quality=rng.randrange(75, 95))
        (args.out / f"{i:05d}.jpg").write_bytes(out.getvalue())
    print(f"wrote {args.count} photos from {len(photos)} shipped ones to {args.out}")


if __name__ == "__main__":
    main()
