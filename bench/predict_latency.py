"""Benchmark (not a test): the demo's prediction latency per image on CPU, ResNet-18 at 224 px; target <= 50 ms.

    python bench/predict_latency.py [--n 30] [--warmup 5] [--threads N]

Times `cskd_fastai.app.predict_logits` end to end, as the app calls it for an upload: decode a JPEG file, run the
learner's own test pipeline (Resize(224), to tensor, ImageNet normalisation), one forward pass of an untrained
`plain_learner(dls, "resnet18")` in eval mode, weights and input in channels_last as the app runs them. The weights don't matter for speed, so no training or download.
Prints the median (min, p90) in ms, the forward pass alone for reference, and the ratio to the 50 ms target,
with the machine's load average: on a shared machine other processes' load shows up directly in these numbers.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

TARGET_MS = 50.0


def write_images(root: Path, n_per_class: int = 4, size: tuple[int, int] = (320, 240), seed: int = 0) -> Path:
    "A 2-class train folder of `size` JPEGs (photo-like sizes, so Resize(224) does real work)."
    rng = np.random.default_rng(seed)
    for c in ("a", "b"):
        d = root / "train" / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(arr).save(d / f"{c}{i}.jpg", quality=90)
    return root


def build_learner(root: Path, size: int = 224):
    "An untrained ResNet-18 `plain_learner` whose test pipeline resizes to `size` and normalises like ImageNet."
    from fastai.vision.all import (CategoryBlock, DataBlock, ImageBlock, Normalize, RandomSplitter, Resize,
                                   get_image_files, imagenet_stats, parent_label)
    from cskd_fastai.learner import plain_learner
    db = DataBlock(blocks=(ImageBlock, CategoryBlock), get_items=get_image_files, get_y=parent_label,
                   splitter=RandomSplitter(0.25, seed=0), item_tfms=Resize(size),
                   batch_tfms=Normalize.from_stats(*imagenet_stats))
    dls = db.dataloaders(root / "train", bs=2, num_workers=0, device="cpu")
    return plain_learner(dls, "resnet18")


def _times_ms(fn, items, warmup: int) -> list[float]:
    for x in items[:warmup]: fn(x)  # first calls pay for allocator growth and kernel selection
    out = []
    for x in items:
        t = time.perf_counter(); fn(x); out.append(1e3 * (time.perf_counter() - t))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=30, help="timed images (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls first (default 5)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--size", type=int, default=224)
    args = p.parse_args(argv)
    if args.threads: torch.set_num_threads(args.threads)
    from cskd_fastai.app import ModelEntry, predict_logits

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_images(root)
        entry = ModelEntry.from_learner(build_learner(root, args.size), label="resnet18")
        # distinct files, so each call decodes its own image as an upload would
        rng = np.random.default_rng(1)
        files = []
        for i in range(args.n):
            f = root / f"q{i}.jpg"
            Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(f, quality=90)
            files.append(f)
        total = _times_ms(lambda f: predict_logits(entry, f), files, args.warmup)
        x = torch.randn(1, 3, args.size, args.size).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            fwd = _times_ms(lambda _: entry.learn.model(x), list(range(args.n)), args.warmup)

    med, p90 = statistics.median(total), float(np.percentile(total, 90))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"predict_logits, ResNet-18 at {args.size}px, CPU ({os.cpu_count()} cores, load average {load:.1f}), "
          f"{torch.get_num_threads()} torch threads, {args.n} images of 500x375 (JPEG files):")
    print(f"  median {med:.1f} ms  (min {min(total):.1f}, p90 {p90:.1f}; forward pass alone: median "
          f"{statistics.median(fwd):.1f}, min {min(fwd):.1f})")
    print(f"  ratio to the {TARGET_MS:.0f} ms target: {med / TARGET_MS:.2f}  "
          f"({'meets' if med <= TARGET_MS else 'misses'} it)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
