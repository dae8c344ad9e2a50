"""Decode once: a uint8 cache of a dataset's images, resized for the recipe, in memory or as a memory-mapped file.

Every epoch of the plain pipeline re-decodes every JPEG, partners included (the paper's CUB schedule decodes
~2.4M crops). With `train.cache: memory | disk` each image is decoded and resized once, by fastai's own
validation-time transform, and training crops are cut from that array:

* `resized_crop_flip` recipes cache the whole image squashed to S x S, S = size + fastai's `val_xtra` margin
  (64 -> 80, 224 -> 256), which is exactly what `RandomResizedCrop` does to a validation image before its centre
  crop. Validation and test images are therefore pixel for pixel those of `cache: none`. A training crop is drawn
  with `RandomResizedCrop`'s own geometry (area 8-100% and aspect 3/4-4/3 *of the original image*), mapped onto
  the S x S array and resized to `size` (antialiased bilinear on uint8): a small crop is resampled from S px
  instead of the original resolution, the one difference from `cache: none`.
* the other augmentations cache `Resize(size)`'s validation output (centre square, resized); training then pads,
  crops and flips that array. The plain pipeline's training `Resize` also shifts the square along the long side at
  random; the cached one stays centred (no difference for square images such as CIFAR or Tiny-ImageNet).

The disk cache is a `.npy` file under `<out>/.cache/`, named by dataset, mode, side and a hash of the items (paths,
file sizes, modification times; array items by content), so a changed dataset builds a new one. It is written to a
temporary name and renamed, so a killed build never leaves a half file behind.
"""
from __future__ import annotations

import hashlib
import math
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from fastai.torch_core import TensorImage
from fastai.vision.augment import RandTransform, Resize

from .transforms import load_image

__all__ = ["ImageCache", "build_cache", "cache_side", "CachedCrop", "TensorFlip", "TensorPadCrop", "cache_item_tfms"]


def cache_side(size: int, augment: str) -> int:
    "Side of the cached square: `RandomResizedCrop`'s validation resize (size + val_xtra margin) or `size`."
    if augment == "resized_crop_flip": return size + math.ceil(size * 0.14 / 8) * 8
    return size


@dataclass
class ImageCache:
    "`images[i]` (S x S x 3 uint8) and the original `(w, h)` of item i, in the order of the items it was built from."
    images: np.ndarray
    sizes: np.ndarray
    mode: str          # "rrc": squashed whole image; "resize": Resize(size)'s centre crop
    path: Optional[Path] = None

    @property
    def side(self) -> int: return int(self.images.shape[1])
    def __len__(self) -> int: return len(self.images)


def _decode(item, side: int, mode: str) -> tuple[np.ndarray, tuple[int, int]]:
    img = load_image(item)                            # the plain pipeline's loader: same RGB conversion
    w, h = img.size
    if mode == "rrc":   # RandomResizedCrop, validation: the whole image resized to final_size (bilinear)
        out = img.crop_pad((w, h), (0, 0), orig_sz=(w, h), resize_mode=2, resize_to=(side, side))
    else:               # Resize(side), validation: the centred largest square, resized
        out = Resize(side)(img, split_idx=1)
    return np.asarray(out, dtype=np.uint8), (w, h)


def _key(items: Sequence, side: int, mode: str) -> str:
    "Hash of what the cache depends on: the items (path + size + mtime, or array bytes), side and mode."
    h = hashlib.sha256(f"{mode}:{side}:{len(items)}".encode())
    for it in items:
        if isinstance(it, np.ndarray): h.update(hashlib.sha1(np.ascontiguousarray(it).tobytes()).digest())
        else:
            st = os.stat(it)
            h.update(f"{it}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()[:16]


def _fill(images: np.ndarray, sizes: np.ndarray, items: Sequence, side: int, mode: str, threads: int) -> None:
    def one(i):
        images[i], sizes[i] = _decode(items[i], side, mode)
    with ThreadPoolExecutor(max(1, threads)) as ex:   # Pillow releases the GIL while decoding
        list(ex.map(one, range(len(items))))


def build_cache(items: Sequence, side: int, mode: str, where: str = "memory", cache_dir: Optional[Path] = None,
                name: str = "data", threads: int = 2, log: Callable[[str], None] = print) -> ImageCache:
    """Decode `items` once into an `ImageCache` (`where`: 'memory', or 'disk' for a memory-mapped `.npy` under
    `cache_dir`, reused while the items are unchanged)."""
    if mode not in ("rrc", "resize"): raise ValueError(f"cache mode must be 'rrc' or 'resize', got {mode!r}")
    n = len(items)
    if where == "memory":
        images, sizes = np.empty((n, side, side, 3), np.uint8), np.empty((n, 2), np.int32)
        _fill(images, sizes, items, side, mode, threads)
        return ImageCache(images, sizes, mode)
    if where != "disk": raise ValueError(f"cache must be 'memory' or 'disk', got {where!r}")
    if cache_dir is None: raise ValueError("a disk cache needs a cache_dir")
    cache_dir = Path(cache_dir); cache_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-{mode}{side}"
    key = _key(items, side, mode)
    f, fs = cache_dir / f"{stem}-{key}.npy", cache_dir / f"{stem}-{key}.sizes.npy"
    if f.exists() and fs.exists():
        images = np.load(f, mmap_mode="r")
        if images.shape == (n, side, side, 3):
            log(f"image cache: reusing {f} ({images.nbytes / 2**20:.0f} MB)")
            return ImageCache(images, np.load(fs), mode, f)
    for old in cache_dir.glob(f"{stem}-*.npy"): old.unlink(missing_ok=True)   # a changed dataset: rebuild
    tmp = cache_dir / f".{stem}-{key}.{os.getpid()}.tmp.npy"
    try:
        images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, side, side, 3))
        sizes = np.empty((n, 2), np.int32)
        _fill(images, sizes, items, side, mode, threads)
        images.flush(); del images
        np.save(fs, sizes)
        os.replace(tmp, f)
    finally:
        tmp.unlink(missing_ok=True)
    log(f"image cache: wrote {f} ({n} images, {side}px)")
    return ImageCache(np.load(f, mmap_mode="r"), np.load(fs), mode, f)


# ---- transforms on cached uint8 tensors -------------------------------------------------------------------
class CachedCrop(RandTransform):
    """Item index -> uint8 `TensorImage` (3 x size x size) from an `ImageCache`.

    Training: 'rrc' draws `RandomResizedCrop`'s crop (area `min_scale`..1 and aspect `ratio` of the *original*
    image, as fastai does) and resizes it to `size`; 'resize' returns the cached square. Validation: the centre
    crop (`RandomResizedCrop`'s) or the cached square, identical to the plain pipeline's."""
    split_idx, order = None, 0

    def __init__(self, cache: ImageCache, size: int, min_scale: float = 0.08, ratio=(3 / 4, 4 / 3)):
        super().__init__()
        self.cache, self.size, self.min_scale, self.ratio = cache, size, min_scale, tuple(ratio)

    def before_call(self, b, split_idx): self.train = not split_idx

    def encodes(self, i: int):
        from torchvision.transforms.v2.functional import resized_crop
        a = torch.from_numpy(np.array(self.cache.images[int(i)])).permute(2, 0, 1)   # copy: memmaps are read-only
        s, n = self.cache.side, self.size
        if self.cache.mode == "resize": return TensorImage(a)
        if not self.train:
            o = (s - n) // 2
            return TensorImage(a[:, o:o + n, o:o + n].contiguous())
        w, h = (int(v) for v in self.cache.sizes[int(i)])
        x0, y0, cw, ch = self._box(w, h)
        sx, sy = s / w, s / h   # original pixels -> cached pixels (the cache squashed w x h to s x s)
        top, left = int(round(y0 * sy)), int(round(x0 * sx))
        height, width = max(1, int(round(ch * sy))), max(1, int(round(cw * sx)))
        return TensorImage(resized_crop(a, top, left, min(height, s - top), min(width, s - left), [n, n],
                                        antialias=True))

    def _box(self, w: int, h: int) -> tuple[int, int, int, int]:
        "`RandomResizedCrop.before_call`'s training crop in original pixels: (left, top, width, height)."
        for _ in range(10):
            area = random.uniform(self.min_scale, 1.0) * w * h
            ratio = math.exp(random.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
            nw, nh = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
            if nw <= w and nh <= h: return random.randint(0, w - nw), random.randint(0, h - nh), nw, nh
        if w / h < self.ratio[0]: cw, ch = w, int(w / self.ratio[0])
        elif w / h > self.ratio[1]: cw, ch = int(h * self.ratio[1]), h
        else: cw, ch = w, h
        return (w - cw) // 2, (h - ch) // 2, cw, ch


class TensorFlip(RandTransform):
    "Horizontal flip of a uint8 `TensorImage` with probability `p` (training only)."
    split_idx, order = 0, 2
    def __init__(self, p: float = 0.5): super().__init__(p=p)
    def encodes(self, x: TensorImage): return TensorImage(x.as_subclass(torch.Tensor).flip(-1))


class TensorPadCrop(RandTransform):
    "Zero-pad a `TensorImage` by `padding` and crop its size at a random place (training only; CIFAR style)."
    split_idx, order = 0, 1
    def __init__(self, padding: int): super().__init__(); self.padding = padding
    def encodes(self, x: TensorImage):
        t, p = x.as_subclass(torch.Tensor), self.padding
        _, h, w = t.shape
        i, j = random.randint(0, 2 * p), random.randint(0, 2 * p)
        return TensorImage(torch.nn.functional.pad(t, (p, p, p, p))[:, i:i + h, j:j + w].contiguous())


def cache_item_tfms(cache: ImageCache, size: int, augment: str, gpu_augment: bool) -> list:
    "Item transforms of a cached dataset; with `gpu_augment` the flips and pad-crops are left to the batch."
    tfms = [CachedCrop(cache, size)]
    if gpu_augment: return tfms
    if augment in ("crop", "crop_flip"): tfms.append(TensorPadCrop(max(1, size // 8)))
    if augment in ("flip", "crop_flip", "resized_crop_flip"): tfms.append(TensorFlip(0.5))
    return tfms
