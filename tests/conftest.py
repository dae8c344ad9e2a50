"Shared fixtures: tiny synthetic image folders and paired fastai DataLoaders (CPU, seconds)."
from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# One torch thread: the suite's tensors are tiny, and on a 2-core machine with anything else running, two OpenMP
# threads per process spin against each other (measured: a 3-epoch fine-tune of 21 images took 100 s at 2 threads
# beside two single-thread trainings, 1.2 s at 1 thread)
os.environ.setdefault("OMP_NUM_THREADS", "1")

CLASSES = ("cat", "dog", "emu")


def write_folder(root: Path, counts: dict, size: int = 16, seed: int = 0) -> Path:
    "Write `root/<split>/<class>/<i>.png`, each class a noisy colour of its own (learnable, fast)."
    rng = np.random.default_rng(seed)
    for split, per_class in counts.items():
        for c, n in per_class.items():
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            h = zlib.crc32(c.encode())  # stable across processes, unlike hash()
            base = np.array([h % 200, (h >> 8) % 200, (h >> 16) % 200], dtype=np.float32)
            for i in range(n):
                img = np.clip(base + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{c}_{i}.png")
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    "train/test ImageFolder with 3 classes of unequal sizes (one has a single test image)."
    root = tmp_path_factory.mktemp("imgs")
    return write_folder(root, {"train": {"cat": 9, "dog": 7, "emu": 5}, "test": {"cat": 3, "dog": 3, "emu": 2}})


def make_dls(path: Path, bs: int = 4, paired: bool = True, **kwargs):
    from fastai.vision.all import (CategoryBlock, DataBlock, GrandparentSplitter, ImageBlock, Resize,
                                   get_image_files, parent_label)
    from cskd_fastai import PairedDL
    kw = dict(dl_type=PairedDL) if paired else {}
    db = DataBlock(blocks=(ImageBlock, CategoryBlock), get_items=get_image_files, get_y=parent_label,
                   splitter=GrandparentSplitter(valid_name="test"), item_tfms=Resize(16), **kw)
    return db.dataloaders(path, bs=bs, num_workers=0, device="cpu", **kwargs)


@pytest.fixture
def dls(image_folder):
    return make_dls(image_folder)
