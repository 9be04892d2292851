"""The reference Python preprocessing: Pillow + numpy, as a user would write it.

Shared by bench/python_server.py and bench/preprocess_bench.py. It reads a graft model
manifest (models/<name>.toml) and follows graft's semantics (src/zoo/manifest.rs,
src/vision/preprocess.rs):

* resize "crop": shorter side to round(size / crop_fraction) (the longer side truncated, as
  torchvision's Resize does), then a centre crop with left = int(round((w - size) / 2.0));
* resize "pad": tf.image.resize_with_pad's geometry (ratio = max(w/W, h/H), sizes and
  offsets floored), zero (black) padding;
* resize "stretch": straight to the input size;
* every resize is Pillow's antialiased BILINEAR;
* value = (x * scale - mean[c]) / std[c], x in 0..255, channels in the manifest's colour
  order: caffe = BGR minus [103.939, 116.779, 123.68]; tf = x / 127.5 - 1;
  torch = (x / 255 - ImageNet mean) / ImageNet std; custom = the manifest's mean, std, scale.
"""

from __future__ import annotations

import io
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# graft's default pixel budget (40 megapixels), checked from the header before decoding.
MAX_PIXELS = 40_000_000
# Pillow's own decompression-bomb guard would only trip at ~179 MP; ours is stricter.
Image.MAX_IMAGE_PIXELS = None

# The formats graft accepts.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")

CAFFE = (1.0, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0))
TF = (1.0 / 127.5, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0))
TORCH = (1.0 / 255.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class ManifestError(ValueError):
    pass


class ImageError(ValueError):
    """Bytes that are no (acceptable) image: answered with 422."""


@dataclass(frozen=True)
class Spec:
    width: int
    height: int
    layout: str  # "NCHW" or "NHWC"
    color: str  # "rgb" or "bgr"
    resize: str  # "crop", "pad" or "stretch"
    crop_fraction: float
    # value = x * a[c] + b[c] with a = scale / std, b = -mean / std (float32, per output channel)
    a: np.ndarray
    b: np.ndarray


@dataclass(frozen=True)
class Manifest:
    name: str
    path: Path
    file: Path
    input_name: str
    spec: Spec
    output_name: str
    output_kind: str  # "logits" or "probabilities"
    labels_file: Path


def load_manifest(path: str | Path) -> Manifest:
    path = Path(path)
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    directory = path.parent
    inp, out = raw["input"], raw["output"]

    def field(name: str, message: str) -> ManifestError:
        return ManifestError(f"{path}: field `{name}`: {message}")

    layout = inp["layout"]
    if layout not in ("NCHW", "NHWC"):
        raise field("input.layout", "must be NCHW or NHWC")
    resize = inp["resize"]
    if resize not in ("crop", "pad", "stretch"):
        raise field("input.resize", "must be crop, pad or stretch")
    if "crop_fraction" in inp and resize != "crop":
        raise field("input.crop_fraction", 'only applies to resize = "crop"')
    fraction = float(inp.get("crop_fraction", 0.875))
    if not 0.0 < fraction <= 1.0:
        raise field("input.crop_fraction", "must be in (0, 1]")

    normalize = inp["normalize"]
    custom_given = any(k in inp for k in ("mean", "std", "scale"))
    if normalize == "custom":
        if "mean" not in inp or "std" not in inp:
            raise field("input.mean", 'normalize = "custom" needs `mean` and `std`')
        scale, mean, std = float(inp.get("scale", 1.0)), inp["mean"], inp["std"]
        if any(s == 0 for s in std) or scale == 0:
            raise field("input.std", "std and scale must be non-zero")
        natural = "rgb"
    elif custom_given:
        raise field("input.mean", 'mean, std and scale are only read with normalize = "custom"')
    elif normalize == "caffe":
        (scale, mean, std), natural = CAFFE, "bgr"
    elif normalize == "tf":
        (scale, mean, std), natural = TF, "rgb"
    elif normalize == "torch":
        (scale, mean, std), natural = TORCH, "rgb"
    else:
        raise field("input.normalize", "must be caffe, tf, torch or custom")
    color = inp.get("color", natural)
    if color not in ("rgb", "bgr"):
        raise field("input.color", "must be rgb or bgr")
    if normalize == "caffe" and color != "bgr":
        raise field("input.color", "caffe normalisation is defined on BGR input")

    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    spec = Spec(
        width=int(inp["width"]),
        height=int(inp["height"]),
        layout=layout,
        color=color,
        resize=resize,
        crop_fraction=fraction,
        a=(np.float32(scale) / std).astype(np.float32),
        b=(-mean / std).astype(np.float32),
    )
    kind = out["kind"]
    if kind not in ("logits", "probabilities"):
        raise field("output.kind", "must be logits or probabilities")
    return Manifest(
        name=path.stem,
        path=path,
        file=directory / raw["file"],
        input_name=inp["name"],
        spec=spec,
        output_name=out["name"],
        output_kind=kind,
        labels_file=directory / out["labels"],
    )


def load_labels(path: str | Path) -> list[tuple[str, str]]:
    """(class_id, label) by index, from a tab-separated `index  wnid  name` file with a header."""
    labels: dict[int, tuple[str, str]] = {}
    with open(path, encoding="utf-8") as f:
        next(f, None)
        for line in f:
            line = line.rstrip("\r\n")
            if not line:
                continue
            index, class_id, name = line.split("\t", 2)
            labels[int(index)] = (class_id, name)
    return [labels[i] for i in range(len(labels))]


def decode(data: bytes) -> Image.Image:
    """Bytes to a loaded 8-bit RGB Pillow image, EXIF orientation applied."""
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)
        w, h = img.size
        if w * h > MAX_PIXELS:
            raise ImageError(f"the image is {w}×{h}, over the {MAX_PIXELS} pixel budget")
        ImageOps.exif_transpose(img, in_place=True)  # loads the pixels
        if img.mode != "RGB":
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                # Transparent pixels over white, as graft does.
                rgba = img.convert("RGBA")
                img = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                img.alpha_composite(rgba)
            img = img.convert("RGB")
        img.load()
        return img
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(str(e)) from None
    except Image.UnidentifiedImageError:
        raise ImageError("the bytes are no image in a supported format (JPEG, PNG, WebP, GIF, BMP)") from None
    except Exception as e:  # UnidentifiedImageError, truncated data, bad headers, ...
        raise ImageError(f"not a decodable image: {e}") from None


def resize(img: Image.Image, spec: Spec) -> np.ndarray:
    """The resized (and cropped or padded) image as a uint8 array [height, width, 3], RGB."""
    tw, th = spec.width, spec.height
    w, h = img.size
    if spec.resize == "stretch":
        if (w, h) != (tw, th):
            img = img.resize((tw, th), Image.BILINEAR)
        return np.asarray(img)
    if spec.resize == "crop":
        side_w, side_h = round(tw / spec.crop_fraction), round(th / spec.crop_fraction)
        if w <= h:
            rw = max(side_w, tw)
            size = (rw, max(int(rw * h / w), th))
        else:
            rh = max(side_h, th)
            size = (max(int(rh * w / h), tw), rh)
        if size != (w, h):
            img = img.resize(size, Image.BILINEAR)
        left = int(round((size[0] - tw) / 2.0))
        top = int(round((size[1] - th) / 2.0))
        return np.asarray(img)[top : top + th, left : left + tw]
    # pad: tf.image.resize_with_pad's geometry
    ratio = max(w / tw, h / th)
    rw_f, rh_f = w / ratio, h / ratio
    rw = min(max(int(np.floor(rw_f)), 1), tw)
    rh = min(max(int(np.floor(rh_f)), 1), th)
    left = min(max(int(np.floor((tw - rw_f) / 2.0)), 0), tw - rw)
    top = min(max(int(np.floor((th - rh_f) / 2.0)), 0), th - rh)
    if (rw, rh) != (w, h):
        img = img.resize((rw, rh), Image.BILINEAR)
    canvas = np.zeros((th, tw, 3), dtype=np.uint8)
    canvas[top : top + rh, left : left + rw] = np.asarray(img)
    return canvas


def normalize(pixels: np.ndarray, spec: Spec) -> np.ndarray:
    """uint8 [H, W, 3] RGB to the float32 model input of one image: [1, 3, H, W] or [1, H, W, 3]."""
    if spec.color == "bgr":
        pixels = pixels[..., ::-1]
    x = pixels.astype(np.float32)
    x *= spec.a
    x += spec.b
    if spec.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x)[None]


def preprocess(img: Image.Image, spec: Spec) -> np.ndarray:
    return normalize(resize(img, spec), spec)
