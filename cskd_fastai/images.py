"""Decoding images from outside the project (uploads, dataset files) safely: known raster formats only, a pixel
budget checked before decoding, every mode (grey, CMYK, 16-bit, transparency) turned into 8-bit RGB correctly, and
one-line errors that name the file."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["safe_image", "to_rgb", "verify_image", "one_line", "MAX_PIXELS", "MAX_SIDE", "IMAGE_FORMATS"]

# Refused outright: decoding alone would cost seconds and hundreds of MB per request (a 40 MP RGB image is 120 MB).
MAX_PIXELS = 40_000_000
# Downscaled to this longest side before the learner's pipeline: the models here see <= 224-448 px, so larger
# inputs only make the per-request resize slower.
MAX_SIDE = 1024
# Formats Pillow may decode from an upload; the rest (EPS goes through Ghostscript, for one) are refused.
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")


def one_line(e: BaseException) -> str:
    "An exception's message on one line (or its type's name)."
    return " ".join(str(e).split()) or type(e).__name__


def _check_pixels(im: Image.Image, name: str) -> None:
    w, h = im.size
    if w * h > MAX_PIXELS:
        raise ValueError(f"{name} is {w}x{h} = {w * h / 1e6:.0f} MP, over the {MAX_PIXELS / 1e6:.0f} MP limit; "
                         f"downscale it first")
    if w < 1 or h < 1: raise ValueError(f"{name} is empty ({w}x{h} pixels)")


def _open(src, name: str) -> Image.Image:
    "Decode `src` (path or file object) with Pillow, restricted to `IMAGE_FORMATS`, within the pixel budget."
    try:
        im = Image.open(src, formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        raise ValueError(f"{name} is not an image (expected one of {', '.join(IMAGE_FORMATS)})") from None
    except Image.DecompressionBombError as e:
        raise ValueError(f"{name} is too large to decode safely: {one_line(e)}") from None
    except OSError as e:
        raise ValueError(f"cannot read {name}: {one_line(e)}") from None
    _check_pixels(im, name)  # from the header: refuse before decoding
    try:
        im.draft("RGB", (MAX_SIDE, MAX_SIDE))  # JPEG: decode at a reduced scale right away (a no-op elsewhere)
        im.load()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise ValueError(f"{name} is corrupt or truncated ({one_line(e)})") from None
    return im


def _from_array(a: np.ndarray) -> Image.Image:
    "HxW, HxWx1, HxWx3 or HxWx4 array (uint8, or float in [0, 1]) -> PIL image."
    if a.ndim == 3 and a.shape[-1] == 1: a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))) or a.size == 0:
        raise ValueError(f"expected an HxW, HxWx3 or HxWx4 image array, got shape {a.shape}")
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.number) or not np.isfinite(a).all():
            raise ValueError(f"expected a uint8 (or finite float in [0, 1]) image array, got {a.dtype}")
        a = np.clip(np.rint(a * 255.0 if a.max() <= 1.0 else a), 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(a))


def to_rgb(im: Image.Image) -> Image.Image:
    "RGB for every mode: transparency composited on white (not dropped to black), 16-bit/float scaled to 8 bits."
    if im.mode == "RGB": return im
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        a = np.asarray(im, dtype=np.float64)
        hi = float(a.max()) if a.size else 0.0
        scale = 255.0 if im.mode == "F" and hi <= 1.0 else 255.0 / 65535.0 if hi > 255 else 1.0
        return Image.fromarray(np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)).convert("RGB")
    return im.convert("RGB")


def safe_image(obj) -> Image.Image:
    """A decoded RGB PIL image from a file path, bytes, a numpy array or a PIL image; a one-line `ValueError` on
    anything else (not an image, corrupt, over `MAX_PIXELS`). Longer sides than `MAX_SIDE` are downscaled."""
    if obj is None: raise ValueError("no image: upload one or pick an example")
    if isinstance(obj, Image.Image):
        _check_pixels(obj, "the image")
        im = obj
    elif isinstance(obj, np.ndarray):
        im = _from_array(obj)
        _check_pixels(im, "the image array")
    elif isinstance(obj, (bytes, bytearray)):
        im = _open(io.BytesIO(bytes(obj)), "the uploaded data")
    elif isinstance(obj, (str, os.PathLike)):
        p = Path(obj)
        if not p.is_file(): raise ValueError(f"no image file at {p}")
        with open(p, "rb") as f: im = _open(f, f"file {p.name!r}")
    else:
        raise ValueError(f"expected an image (file path, bytes, numpy array or PIL image), got {type(obj).__name__}")
    try:
        im = ImageOps.exif_transpose(im)  # phone photos: honour the orientation tag, as viewers do
    except Exception:
        pass  # a broken EXIF block is no reason to refuse the pixels
    if max(im.size) > MAX_SIDE:
        im = im.copy()  # thumbnail works in place: never resize the caller's image
        im.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.BILINEAR)
    try: return to_rgb(im)
    except Exception as e: raise ValueError(f"cannot convert the {im.mode} image to RGB: {one_line(e)}") from None


def verify_image(path) -> None:
    "Decode the whole file as `load_image` would; a one-line `ValueError` naming the file when it cannot be used."
    p = Path(path)
    if p.stat().st_size == 0: raise ValueError(f"{p} is empty (0 bytes)")
    with open(p, "rb") as f:
        try: im = Image.open(f)
        except UnidentifiedImageError: raise ValueError(f"{p} is not an image Pillow can read") from None
        except Image.DecompressionBombError as e:   # raised by open itself, before any pixel: name the file, go on
            raise ValueError(f"{p} is too large to decode safely ({one_line(e)}); downscale it or remove it") from None
        except (OSError, SyntaxError, ValueError) as e: raise ValueError(f"{p} is corrupt or truncated ({one_line(e)})") from None
        if max(im.size) > MAX_SIDE: im.draft("RGB", (MAX_SIDE, MAX_SIDE))   # as training decodes it (a JPEG: reduced)
        w, h = im.size
        if w * h > MAX_PIXELS:   # training refuses it too: list it here, before training
            raise ValueError(f"{p} is {w}x{h} = {w * h / 1e6:.0f} MP, over the {MAX_PIXELS / 1e6:.0f} MP limit; "
                             f"downscale it or remove it")
        try: im.load()
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
            raise ValueError(f"{p} is corrupt or truncated ({one_line(e)})") from None
