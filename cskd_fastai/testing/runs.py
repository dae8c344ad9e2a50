"""Tiny but real run directories (the layout of `cskd_fastai.rundir`), trained in a few seconds on CPU.

    >>> run = make_tiny_run(tmp_path, method="cskd", seed=0)   # tmp_path/cskd-lam1-T4/seed0, data in tmp_path/data

For tests of everything that reads runs (the demo app, compare, analyses): a 3-class colour-coded ImageFolder
at 16 px, a CNN of a few hundred parameters trained for `epochs` epochs with `cskd_learner` or `plain_learner`,
and the files `cskd-fastai train` writes: recipe.yaml, metrics.json, logits.pt (valid and test), export.pkl, DONE.
`serve(argv, url)` runs a server command (such as `apps/demo.py RUN ...`) in a subprocess for as long as a test needs.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import yaml
from PIL import Image
from torch import nn

from ..distributed import free_port  # noqa: F401  (one implementation; re-exported for the server tests)
from ..rundir.examples import write_examples
from ..rundir import ENV, EXPORT, HISTORY, RECIPE, mark_done, save_hashed, save_logits, save_metrics
from .replicas import class_colour

__all__ = ["make_tiny_run", "write_tiny_imagefolder", "tiny_cnn", "TINY_CLASSES", "free_port", "serve"]

TINY_CLASSES = ("cat", "dog", "emu")
_SIZE = 16


def write_tiny_imagefolder(root, n_train: int = 60, n_test: int = 8, size: int = _SIZE, jitter: float = 110.0,
                           seed: int = 0) -> Path:
    """`root/{train,test}/<class>/<i>.png`: pixel noise around one colour per class, each image's colour shifted by
    N(0, `jitter`) so that classes overlap (a model then errs now and then, and has a finite best temperature).
    Returns `root`; an existing folder is kept, so the runs made under one root share their data."""
    root = Path(root)
    if (root / "test" / TINY_CLASSES[-1]).is_dir(): return root
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for label, c in enumerate(TINY_CLASSES):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                shift = rng.normal(0.0, jitter, 3)
                img = class_colour(label) + shift + rng.normal(0.0, 25.0, (size, size, 3))
                Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8)).save(d / f"{c}_{i}.png")
    return root


def tiny_cnn(n_classes: int) -> nn.Module:
    "Conv → BN → ReLU → global pool → Linear: enough to separate mean colours, plain torch modules only."
    # momentum=None: BN's running stats are the plain average over the ~10 steps of a 1-epoch run, not still
    # mostly their initial (0, 1), so the exported model predicts in eval mode about as well as it trained
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8, momentum=None), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, n_classes))


def _dls(data: Path, seed: int):
    from fastai.vision.all import (CategoryBlock, DataBlock, ImageBlock, RandomSplitter, Resize, get_image_files,
                                   parent_label)
    db = DataBlock(blocks=(ImageBlock, CategoryBlock), get_items=get_image_files, get_y=parent_label,
                   splitter=RandomSplitter(valid_pct=0.25, seed=seed), item_tfms=Resize(_SIZE))
    return db.dataloaders(data / "train", bs=8, num_workers=0, device="cpu")


def _logits(learn, items: list) -> tuple[torch.Tensor, torch.Tensor]:
    from fastai.torch_core import noop
    dl = learn.dls.test_dl(items, with_labels=True, num_workers=0)
    with learn.no_bar(): logits, labels = learn.get_preds(dl=dl, act=noop)  # raw logits: calibration divides by T
    return logits.float(), labels.long()


def make_tiny_run(root, method: str = "cskd", seed: int = 0, epochs: int = 1, lam: float = 1.0,
                  temp: float = 4.0) -> Path:
    """Train a tiny `method` ('cskd' or 'ce') run on data under `root/data`, written to `root/<label>/seed<seed>`
    like `cskd-fastai train` does (label 'ce' or 'cskd-lam<λ>-T<T>'). Returns the run directory.

    The data folder is shared by the runs made under one `root`, so a CE and a CS-KD run there share a recipe."""
    from fastai.torch_core import set_seed
    from fastai.vision.all import get_image_files
    from ..learner import cskd_learner, plain_learner
    from ..metrics.functional import classification_metrics

    if method not in ("cskd", "ce"): raise ValueError(f"method must be 'cskd' or 'ce', got {method!r}")
    cskd = method == "cskd"
    label = f"cskd-lam{lam:g}-T{temp:g}" if cskd else "ce"
    root = Path(root)
    data = write_tiny_imagefolder(root / "data")
    run = root / label / f"seed{seed}"
    run.mkdir(parents=True, exist_ok=False)  # never overwrite a run, as `train` doesn't
    set_seed(seed, reproducible=True)
    dls = _dls(data, seed)
    model = tiny_cnn(len(dls.vocab))
    learn = cskd_learner(dls, model, lam=lam, temp=temp) if cskd else plain_learner(dls, model)
    from fastai.callback.progress import CSVLogger
    with learn.no_bar(), learn.no_logging(): learn.fit(epochs, lr=0.1, cbs=CSVLogger(fname=(run / HISTORY).resolve()))

    test_items = sorted(get_image_files(data / "test"))
    splits = {"valid": _logits(learn, list(dls.valid_ds.items)), "test": _logits(learn, test_items)}
    classes = [str(c) for c in dls.vocab]
    save_logits(run, splits, classes)
    facts = {"label": label, "recipe": "tiny", "dataset": "imagefolder", "model": "tiny_cnn", "method": method,
             "lam": lam if cskd else None, "temp": temp if cskd else None, "seed": seed, "epochs": epochs,
             "image_size": _SIZE, "n_train": len(dls.train_ds), "n_valid": len(dls.valid_ds), "n_test": len(test_items)}
    metrics = {s: classification_metrics(z, y) for s, (z, y) in splits.items()} | {"facts": facts}
    save_metrics(run, metrics)
    # the shape of a resolved single-run recipe (cskd_fastai.recipe.Recipe.to_yaml)
    recipe = {"name": "tiny", "description": "make_tiny_run fixture",
              "dataset": {"name": "imagefolder", "root": str(data), "image_size": _SIZE, "valid_pct": 0.25},
              "model": {"arch": "tiny_cnn", "head": "paper", "pretrained": False},
              "train": {"epochs": epochs, "bs": 4, "lr": 0.1, "optimizer": "adam", "schedule": "constant"},
              "methods": [{"name": method, "label": label, "lam": lam, "temp": temp}], "seeds": [seed]}
    (run / RECIPE).write_text(yaml.safe_dump(recipe, sort_keys=False))
    save_hashed(lambda t: learn.export(Path(t).resolve()), run, EXPORT)   # hashes.json, as `train` records it
    test_labels = splits["test"][1].tolist()
    write_examples(run, test_items, test_labels, classes)
    (run / ENV).write_text(json.dumps({"made_by": "cskd_fastai.testing.runs.make_tiny_run", "torch": torch.__version__}))
    mark_done(run)
    return run


# ---------------------------------------------------------------------------------------------------------------
# a real server in a subprocess (the demo app's tests)


@contextmanager
def serve(argv: Sequence[str], url: str, timeout: float = 120.0) -> Iterator[str]:
    """Run `argv` (a server command line) until `url` answers HTTP 200; yield `url`; stop the process on exit.

    Output goes to a temp file rather than a pipe (a chatty server can't block on a full pipe) and is quoted in
    the error when the server exits or doesn't answer in `timeout` seconds."""
    log = tempfile.NamedTemporaryFile("w+", prefix="server-", suffix=".log", delete=False)
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, env=env)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a local server: never via a proxy
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{Path(log.name).read_text()[-3000:]}")
            try:
                with opener.open(url, timeout=2) as r:
                    if r.status == 200: break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not up after {timeout:.0f}s:\n{Path(log.name).read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try: proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill(); proc.wait()
        log.close()
        os.unlink(log.name)
