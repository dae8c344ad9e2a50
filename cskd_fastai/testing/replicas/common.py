"Pixels, writers and per-class counts shared by every replica layout."
from __future__ import annotations

import colorsys
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

__all__ = ["class_colour", "class_grey", "noise_image", "write_image", "write_text", "check_n_classes", "wnid",
           "odd_name", "per_class_counts", "shuffled_labels"]


def class_colour(label: int) -> np.ndarray:
    "Mean RGB colour (float, 0..255) of replica images of class `label`: well-spread hues, two saturations/values."
    h = (label * 0.6180339887) % 1.0
    s = 0.9 if label % 2 == 0 else 0.55
    v = 0.95 if (label // 2) % 2 == 0 else 0.65
    return np.array(colorsys.hsv_to_rgb(h, s, v)) * 255.0


def class_grey(label: int) -> float:
    "Mean grey level (0..255) of Fashion-MNIST replica images of class `label` (0..9)."
    return 25.0 + 22.0 * label


def noise_image(rng: np.random.Generator, label: int, size: int, noise: float = 20.0) -> np.ndarray:
    img = class_colour(label) + rng.normal(0.0, noise, (size, size, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def write_image(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = path.suffix.lower()
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".webp": "WEBP"}[ext]
    kw = {"quality": 95} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}
    Image.fromarray(arr).save(path, fmt, **kw)
    return path


def write_text(path: Path, lines: Sequence[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{ln}\n" for ln in lines))
    return path


def check_n_classes(n_classes: int, limit: int | None = None, name: str = ""):
    if n_classes < 1 or (limit is not None and n_classes > limit):
        raise ValueError(f"{name} replica supports 1..{limit} classes, got {n_classes}")


def wnid(i: int, base: int = 1440764) -> str:
    return f"n{base + 1000 * i:08d}"


def odd_name(j: int, stem: str) -> str:
    "The first file of each class gets a name with spaces, parentheses, '#' and extra dots, as downloads do."
    return f"{stem} (copy #1).v2" if j == 0 else stem


def per_class_counts(n, n_classes: int, what: str = "n_per_class") -> list[int]:
    "One count per class: an int for every class, or a list of per-class counts (0 and 1 allowed)."
    counts = [int(n)] * n_classes if np.isscalar(n) else [int(c) for c in n]
    if len(counts) != n_classes or min(counts, default=0) < 0:
        raise ValueError(f"{what} must be an int or {n_classes} counts >= 0, got {n!r}")
    return counts


def shuffled_labels(n_classes: int, n, rng) -> list[int]:
    "n items of every class (or n[c] of class c), shuffled (the official files are not sorted by class)."
    labels = np.repeat(np.arange(n_classes), per_class_counts(n, n_classes))
    rng.shuffle(labels)
    return labels.tolist()
