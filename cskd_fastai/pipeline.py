"""The data pipeline of a run, from the recipe's dataset and train configs (never the whole recipe): the dataset
(subsampled if asked), the seeded stratified validation split carved from train, the item transforms of each
augmentation, the decoded-image cache, and the fastai DataLoaders (paired for CS-KD, indexed for methods with
per-sample state; test loader at index 2). Below the training stack: nothing here imports a method or a callback."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from fastai.data.core import Datasets, TfmdLists
from fastai.data.transforms import Categorize, IntToFloatTensor, Normalize, ToTensor
from fastai.vision.augment import FlipItem, RandomResizedCrop, Resize
from fastai.vision.core import imagenet_stats

from .batch_transforms import BatchFlip, device_aug_tfms
from .cache import ImageCache, build_cache, cache_item_tfms, cache_side
from .datasets import ImageDataset, load_dataset
from .loaders import IndexedDL, PairedDL
from .transforms import PadRandomCrop, load_image

__all__ = ["stratified_split", "item_tfms", "loader_kwargs", "build_dls", "subsample_per_class", "load_data", "image_cache"]


def stratified_split(labels, valid_pct: float, seed: int) -> tuple[list[int], list[int]]:
    "Per-class seeded split of indices into (train, valid); every class keeps at least one training item."
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, valid = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_valid = min(int(round(valid_pct * len(idx))), len(idx) - 1)
        valid += idx[:n_valid].tolist(); train += idx[n_valid:].tolist()
    return sorted(train), sorted(valid)


def item_tfms(size: int, augment: str) -> list:
    "Item transforms of `augment` at `size` (PIL, per item); valid/test take the deterministic ones."
    if augment == "resized_crop_flip": return [RandomResizedCrop(size), FlipItem(0.5), ToTensor()]
    tfms = [Resize(size)]
    if augment in ("crop", "crop_flip"): tfms.append(PadRandomCrop(size, padding=max(1, size // 8)))
    if augment in ("flip", "crop_flip"): tfms.append(FlipItem(0.5))
    return tfms + [ToTensor()]


def loader_kwargs(workers: int, device=None) -> dict:
    "Worker settings for fastai loaders: pinned host memory when batches go to CUDA through worker processes."
    cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    return dict(num_workers=workers, pin_memory=bool(cuda and workers > 0))


def build_dls(data: ImageDataset, cfg, tc, seed: int, paired: bool, device=None,
              cache: Optional[ImageCache] = None, indexed: bool = False):
    """DataLoaders of `data` for a recipe's dataset config `cfg` and train config `tc`: train (paired for CS-KD),
    valid (carved from train) and test (index 2) loaders; with a `cache` (built over train + test items, in that
    order) items are cache indices and nothing is decoded."""
    tr_idx, va_idx = stratified_split(data.train.labels, cfg.valid_pct, seed)
    if not va_idx: raise ValueError(f"dataset.valid_pct={cfg.valid_pct} leaves no validation images; raise it")
    items = list(data.train.items) + list(data.test.items)
    ys = [data.classes[l] for l in list(data.train.labels) + list(data.test.labels)]
    n_tr = len(data.train.items)
    splits = [tr_idx, va_idx, list(range(n_tr, len(items)))]
    if cache is not None and len(cache) != len(items):
        raise ValueError(f"the image cache holds {len(cache)} images, the dataset {len(items)}; rebuild it")
    x_tl = (TfmdLists(list(range(len(items))), [], splits=splits) if cache is not None
            else TfmdLists(items, [load_image], splits=splits))
    dsets = Datasets(tls=[x_tl,
                          # sort=False: the vocabulary is the loader's class order (label i is data.classes[i]) end to
                          # end; fastai's default sorts the names, which differs whenever names sort unlike ids
                          TfmdLists(ys, [Categorize(vocab=list(data.classes), sort=False)], splits=splits)])
    dl_type = PairedDL if paired else IndexedDL if indexed else None
    if device is None: device = "cuda" if torch.cuda.is_available() else "cpu"
    # train.gpu_augment: flips/crops per batch on the device (training only; valid/test items are unchanged)
    after_item, aug = device_aug_tfms(cfg.image_size, tc.augment) if tc.gpu_augment else (item_tfms(cfg.image_size, tc.augment), [])
    if cache is not None:   # crops from the decoded array; a random-resized crop is cut per item either way
        after_item = cache_item_tfms(cache, cfg.image_size, tc.augment, tc.gpu_augment)
        if tc.gpu_augment and tc.augment == "resized_crop_flip": aug = [BatchFlip(0.5)]
    dls = dsets.dataloaders(bs=tc.bs, dl_type=dl_type, after_item=after_item,
                            after_batch=[IntToFloatTensor(), *aug, Normalize.from_stats(*imagenet_stats)],
                            drop_last=tc.drop_last, device=device, **loader_kwargs(tc.workers, device))
    return dls


def subsample_per_class(data: ImageDataset, n: int, seed: int = 0) -> ImageDataset:
    "Keep at most `n` training images per class (seeded); the test split is untouched."
    from dataclasses import replace
    keep = []
    labels = np.asarray(data.train.labels)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keep += sorted(np.random.default_rng(seed + int(c)).permutation(idx)[:n].tolist())
    keep.sort()
    train = replace(data.train, items=[data.train.items[i] for i in keep], labels=[int(labels[i]) for i in keep])
    return replace(data, train=train)


def holdout_names(classes, spec) -> list[str]:
    """The class names `dataset.holdout_classes` leaves out: the names given, or a count drawn with seed 0 (the same
    classes for every method and seed of a recipe); one line when a name is unknown or too few classes remain."""
    if spec is None: return []
    names = [str(c) for c in classes]
    if isinstance(spec, int):
        if not 0 < spec <= len(names) - 2:
            raise ValueError(f"dataset.holdout_classes: {spec} of {len(names)} classes would leave fewer than 2 to "
                             f"train on; hold out between 1 and {len(names) - 2}")
        return sorted(names[i] for i in np.random.default_rng(0).choice(len(names), spec, replace=False))
    unknown = [c for c in spec if c not in names]
    if unknown: raise ValueError(f"dataset.holdout_classes names {unknown[0]!r}, which is not a class of this dataset "
                                 f"(e.g. {names[0]!r})")
    return [c for c in names if c in spec]


def _classes_only(data: ImageDataset, keep: list[str]) -> ImageDataset:
    "The dataset restricted to the classes `keep` (in the dataset's order), labels renumbered."
    from dataclasses import replace
    new = {c: i for i, c in enumerate(keep)}
    old = [new.get(str(c)) for c in data.classes]
    def part(split):
        idx = [i for i, l in enumerate(split.labels) if old[l] is not None]
        return replace(split, items=[split.items[i] for i in idx], labels=[old[split.labels[i]] for i in idx])
    return replace(data, classes=[c for c in data.classes if str(c) in new], train=part(data.train), test=part(data.test))


def load_data(cfg, data_root: Optional[str] = None, held_out: bool = False) -> ImageDataset:
    """The dataset of a recipe's dataset config `cfg` (`data_root` overrides `cfg.root`), subsampled if it says so,
    without its `holdout_classes`; with `held_out`, only those classes (the near-OOD set of `eval --ood holdout`)."""
    data = load_dataset(cfg.name, data_root if data_root is not None else cfg.root)
    if cfg.train_per_class: data = subsample_per_class(data, cfg.train_per_class)
    out = holdout_names(data.classes, getattr(cfg, "holdout_classes", None))
    if held_out:
        if not out: raise ValueError("--ood holdout: the run's recipe holds no classes out (dataset.holdout_classes)")
        return _classes_only(data, out)
    return _classes_only(data, [str(c) for c in data.classes if str(c) not in out]) if out else data


def image_cache(cfg, tc, data: ImageDataset, out: Path, log: Callable) -> ImageCache:
    "The decoded-image cache of `tc.cache`, built once for all of a recipe's runs; disk caches under <out>/.cache."
    size = cfg.image_size
    side, mode = cache_side(size, tc.augment), ("rrc" if tc.augment == "resized_crop_flip" else "resize")
    items = list(data.train.items) + list(data.test.items)
    t0 = time.time()
    # under a multi-process launch every rank builds (memory) or reuses (disk) it; a disk build is tmp + rename
    cache = build_cache(items, side, mode, tc.cache, cache_dir=out / ".cache", name=cfg.name,
                        threads=max(1, min(4, os.cpu_count() or 1)), log=log)
    log(f"image cache ({tc.cache}): {len(items)} images at {side}px, {cache.images.nbytes / 2**20:.0f} MB, "
        f"ready in {time.time() - t0:.1f}s")
    return cache
