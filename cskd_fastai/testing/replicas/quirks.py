"Image-file quirks of the real releases: grey, CMYK and 16-bit files; a truncated and a zero-byte image."
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["add_image_quirks", "break_images"]


def _train_files(root, name: str, n: int) -> list[Path]:
    "The first training file of each of the first `n` classes that have one (in the loader's view)."
    from ...datasets import load_dataset
    ds = load_dataset(name, root)
    firsts: dict[int, Path] = {}
    for item, label in zip(ds.train.items, ds.train.labels):
        if isinstance(item, Path): firsts.setdefault(label, item)
    files = [firsts[c] for c in sorted(firsts)][:n]
    if len(files) < n: raise ValueError(f"{name} replica at {root} has fewer than {n} classes with image files")
    return files


def add_image_quirks(root, name: str) -> dict[str, Path]:
    """Re-save one training image each as 8-bit greyscale ('L'), CMYK JPEG and 16-bit greyscale PNG (under its
    original name, as some real files are), keeping its class's brightness; returns `{quirk: path}`."""
    files = _train_files(root, name, 3)
    out = {}
    for quirk, f in zip(("grey", "cmyk", "16bit"), files):
        im = Image.open(f).convert("RGB")
        if quirk == "grey": im.convert("L").save(f, "JPEG" if f.suffix.lower() in (".jpg", ".jpeg") else "PNG")
        elif quirk == "cmyk": im.convert("CMYK").save(f, "JPEG", quality=95)
        else:   # 16-bit: values up to 65535, which a plain convert("RGB") clips to white
            a = np.asarray(im.convert("L"), dtype=np.uint16) * 257
            Image.fromarray(a.astype(np.uint16)).save(f, "PNG")
        out[quirk] = f
    return out


def break_images(root, name: str) -> dict[str, Path]:
    "Truncate one training image to half its bytes and empty another (zero bytes); returns `{quirk: path}`."
    files = _train_files(root, name, 2)
    data = files[0].read_bytes()
    files[0].write_bytes(data[: len(data) // 2])
    files[1].write_bytes(b"")
    return {"corrupt": files[0], "zero_byte": files[1]}
