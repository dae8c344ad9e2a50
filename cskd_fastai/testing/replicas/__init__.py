"""Tiny, format-exact replicas of the official dataset layouts, for tests and smoke runs.

Every `make_<name>(root, n_per_class=3, n_classes=5, ...)` writes real files (python pickles, MATLAB .mat via
`scipy.io.savemat`, idx files, small JPEG/PNG images) under `root` and returns the folder to pass to
`load_dataset(<name>, root)`. Images are `size`x`size` noise around a class-dependent mean colour
(`class_colour(label)`, `label` being the index `load_dataset` reports), so a model can learn them and a test
can check that labels follow the pixels. `replica_classes(name, n_classes)` gives the class names the loader
should report. Everything is deterministic given `seed`.

The replicas carry the quirks of the real releases that broke code tested on tidy replicas:
- display names that sort unlike the class ids (Tiny-ImageNet's words.txt names vs wnids, CUB's and Stanford
  Dogs' names vs their numeric/wnid order, ImageNet's synset names);
- odd file names (spaces, parentheses, '#', several dots) on the first image of each class;
- per-class counts: `n_per_class` / `n_test_per_class` may be a list (one count per class), so a replica can have
  a singleton class (count 1) or a class only in test (train count 0);
- `add_image_quirks(root, name)` re-saves a few images as 8-bit grey, CMYK JPEG and 16-bit grey PNG, as in the
  real files, and `break_images(root, name)` leaves a truncated and a zero-byte image behind.

Layout: `common` (pixels, writers, counts), `names` (what each loader reports), `arrays` (pickle / idx formats),
`folders` (image-file layouts), `quirks` (damaged and unusual files).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from .arrays import make_cifar10, make_cifar100, make_fashion_mnist
from .common import class_colour, class_grey
from .folders import make_cub, make_dogs, make_imagefolder, make_imagenet, make_mit67, make_tinyimagenet
from .names import CIFAR10_NAMES, CIFAR100_NAMES, replica_classes
from .quirks import add_image_quirks, break_images

__all__ = ["add_image_quirks", "break_images", "make_cifar100", "make_cifar10", "make_tinyimagenet", "make_cub", "make_dogs", "make_mit67",
           "make_imagenet", "make_imagefolder", "make_fashion_mnist", "REPLICAS", "replica_classes",
           "class_colour", "class_grey", "CIFAR100_NAMES", "CIFAR10_NAMES"]

REPLICAS: dict[str, Callable[..., Path]] = {
    "cifar100": make_cifar100, "cifar10": make_cifar10, "tinyimagenet": make_tinyimagenet, "cub": make_cub,
    "dogs": make_dogs, "mit67": make_mit67, "imagenet": make_imagenet, "imagefolder": make_imagefolder,
    "fashion_mnist": make_fashion_mnist,
}
