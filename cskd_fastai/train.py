"""Train a recipe: one run directory per (method, seed), an honest protocol, resumable.

Protocol: a stratified, seeded validation split is carved from the training data; the test split is evaluated
once, after the last epoch; metrics are those of the final epoch unless the recipe selects on *validation*.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import random
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.callback.mixup import CutMix, MixUp
from fastai.callback.progress import ProgressCallback
from fastai.data.core import Datasets, TfmdLists
from fastai.distributed import DistributedDL
from fastai.data.transforms import Categorize, IntToFloatTensor, Normalize, ToTensor
from fastai.learner import Recorder
from fastai.losses import CrossEntropyLossFlat, LabelSmoothingCrossEntropyFlat
from fastai.optimizer import SGD, Adam
from fastai.torch_core import set_seed
from fastai.vision.augment import FlipItem, RandomResizedCrop, Resize
from fastai.vision.core import imagenet_stats

from . import distributed as D
from . import rundir as R
from .data import PairedDL, dataset_labels
from .datasets import ImageDataset, load_dataset
from .learner import cskd_learner, plain_learner
from .metrics import classification_metrics, cskd_metrics
from .recipe import Recipe
from .cache import ImageCache, build_cache, cache_item_tfms, cache_side
from .speed import BatchFlip, apply_speed_options, device_aug_tfms, loader_kwargs
from .teacher import TeacherKD
from .transforms import PadRandomCrop, load_image

__all__ = ["stratified_split", "load_data", "subsample_per_class", "build_dls", "build_learner", "train_run", "train_recipe", "plan_runs", "run_dir_for", "RunExistsError"]


def _log(msg: str) -> None: print(msg, flush=True)   # flushed: logs of long runs must show up as they happen
def _quiet(msg: str) -> None: pass                     # ranks other than 0 of a distributed run


class RunExistsError(FileExistsError):
    "A run directory already exists: nothing is ever overwritten silently."


# ---- data ---------------------------------------------------------------------------------------------
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


def _item_tfms(size: int, augment: str) -> list:
    if augment == "resized_crop_flip": return [RandomResizedCrop(size), FlipItem(0.5), ToTensor()]
    tfms = [Resize(size)]
    if augment in ("crop", "crop_flip"): tfms.append(PadRandomCrop(size, padding=max(1, size // 8)))
    if augment in ("flip", "crop_flip"): tfms.append(FlipItem(0.5))
    return tfms + [ToTensor()]


def build_dls(recipe: Recipe, data: ImageDataset, seed: int, paired: bool, device=None,
              cache: Optional[ImageCache] = None):
    """DataLoaders with train (paired for CS-KD), valid (carved from train) and test (index 2) loaders; with a
    `cache` (built over train + test items, in that order) items are cache indices and nothing is decoded."""
    cfg, tc = recipe.dataset, recipe.train
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
    dl_type = PairedDL if paired else None
    if device is None: device = "cuda" if torch.cuda.is_available() else "cpu"
    # train.gpu_augment: flips/crops per batch on the device (training only; valid/test items are unchanged)
    item_tfms, aug = device_aug_tfms(cfg.image_size, tc.augment) if tc.gpu_augment else (_item_tfms(cfg.image_size, tc.augment), [])
    if cache is not None:   # crops from the decoded array; a random-resized crop is cut per item either way
        item_tfms = cache_item_tfms(cache, cfg.image_size, tc.augment, tc.gpu_augment)
        if tc.gpu_augment and tc.augment == "resized_crop_flip": aug = [BatchFlip(0.5)]
    dls = dsets.dataloaders(bs=tc.bs, dl_type=dl_type, after_item=item_tfms,
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


def load_data(recipe: Recipe, data_root: Optional[str] = None) -> ImageDataset:
    "The recipe's dataset (`data_root` overrides `dataset.root`), subsampled if the recipe says so."
    data = load_dataset(recipe.dataset.name, data_root if data_root is not None else recipe.dataset.root)
    if recipe.dataset.train_per_class: data = subsample_per_class(data, recipe.dataset.train_per_class)
    return data


# ---- learner ------------------------------------------------------------------------------------------
def _arch(recipe: Recipe):
    from .models import resolve_arch
    return resolve_arch(recipe.model.arch, recipe.model.head)


def build_learner(recipe: Recipe, dls, path: Path):
    "The learner a single-method recipe asks for (CS-KD or a baseline), with the paper's optimizer settings."
    meth, tc = recipe.method, recipe.train
    if tc.optimizer == "sgd": opt_func = partial(SGD, mom=tc.momentum, decouple_wd=False)  # PyTorch SGD's L2 decay
    else: opt_func = Adam
    loss_func = LabelSmoothingCrossEntropyFlat(eps=meth.smoothing) if meth.name == "label_smoothing" else CrossEntropyLossFlat()
    cbs = []
    if meth.mix == "mixup": cbs.append(MixUp(meth.mix_alpha))
    if meth.mix == "cutmix": cbs.append(CutMix(meth.mix_alpha))
    if meth.teacher: cbs.append(TeacherKD.from_run(meth.teacher, weight=meth.teacher_weight, temp=meth.teacher_temp))
    kw = dict(opt_func=opt_func, loss_func=loss_func, metrics=cskd_metrics(), wd=tc.wd, wd_bn_bias=True,
              path=path, model_dir=".", cbs=cbs, pretrained=recipe.model.pretrained)
    if meth.name == "cskd":
        learn = cskd_learner(dls, _arch(recipe), lam=meth.lam, temp=meth.temp, lam_warmup=meth.lam_warmup, **kw)
    else:
        learn = plain_learner(dls, _arch(recipe), **kw)
    if tc.mixed_precision != "none":
        if not torch.cuda.is_available():
            print(f"warning: train.mixed_precision={tc.mixed_precision} needs CUDA; training in float32 on CPU")
        else: learn = learn.to_bf16() if tc.mixed_precision == "bf16" else learn.to_fp16()
    return apply_speed_options(learn, tc)   # train.channels_last, train.compile


class PaperSchedule(Callback):
    "The paper's step schedule: lr ÷10 at 50% and 75% of the epochs (set per epoch, so resuming is exact)."
    order = 60
    def __init__(self, lr: float, milestones=(0.5, 0.75)): self.lr, self.milestones = lr, milestones
    def before_train(self):
        k = sum(self.epoch >= int(round(m * self.n_epoch)) for m in self.milestones)
        self.opt.set_hyper("lr", self.lr * 0.1 ** k)


class TrainingDiverged(RuntimeError):
    "The loss became non-finite or exploded: one line naming the epoch and the fix."


class DivergenceGuard(Callback):
    """Stop with `TrainingDiverged` when the training loss turns non-finite (checked on the device every `every`
    batches and before validation, so the metrics never see NaN logits), when the epoch's smoothed training loss
    exceeds `factor`·max(log C, 1) nats (lr 30 on the quickstart: 2.8e6 after one epoch; no run that learns gets
    near 100·log C), or when the validation loss is not finite. A large but finite validation loss alone is no
    sign: with BatchNorm and tiny batches it can spike to 1e3 for an epoch and recover. Ordered before HistoryCSV
    and EpochCheckpoint, so a diverged epoch is neither logged nor checkpointed: the last good checkpoint stays."""
    order = Recorder.order + 1

    def __init__(self, lr: float, every: int = 20, factor: float = 100.0): self.lr, self.every, self.factor = lr, every, factor
    def before_fit(self): self.limit = self.factor * max(math.log(max(int(getattr(self.dls, "c", 2) or 2), 2)), 1.0)
    def before_train(self): self.bad = None
    def after_loss(self):
        if not self.training: return
        nonfinite = ~torch.isfinite(self.learn.loss.detach()).all()   # stays on the device: no sync per batch
        self.bad = nonfinite if self.bad is None else self.bad | nonfinite
        if self.iter % self.every == 0: self._check_train()
    def before_validate(self): self._check_train()
    def after_epoch(self):
        if self.epoch < getattr(self.learn, "_start_epoch", 0): return   # skipped by --resume: nothing was logged
        names, log = list(self.recorder.metric_names), self.recorder.log
        tl = log[names.index("train_loss")] if "train_loss" in names else None
        vl = log[names.index("valid_loss")] if "valid_loss" in names else None
        if tl is not None and not (math.isfinite(tl) and tl <= self.limit):
            self._stop(f"the training loss reached {tl:.3g} (over {self.limit:.0f} nats)")
        if vl is not None and not math.isfinite(vl): self._stop("the validation loss is not finite")

    def _check_train(self):
        if self.bad is not None and bool(self.bad): self._stop("the training loss became NaN or infinite")
    def _stop(self, what: str):
        done = f"; the last good checkpoint (epoch {self.epoch}) is kept" if self.epoch else ""
        raise TrainingDiverged(f"training diverged in epoch {self.epoch + 1}: {what}; lower train.lr (now {self.lr:g}) "
                               f"and train again into a fresh --out{done}")


class HistoryCSV(Callback):
    """One row per finished epoch in history.csv (Recorder's columns). On resume the rows of epochs the checkpoint
    does not cover are dropped first (a kill between the row and the checkpoint leaves one), so no epoch repeats."""
    order = DivergenceGuard.order + 1
    def __init__(self, fname: Path, start_epoch: int = 0): self.fname, self.start_epoch = Path(fname), start_epoch
    def before_fit(self):
        header = ",".join(self.recorder.metric_names)
        if self.start_epoch == 0 or not self.fname.exists(): rows = []
        else:
            rows = [l for l in self.fname.read_text().splitlines()[1:]
                    if l.split(",", 1)[0].isdigit() and int(l.split(",", 1)[0]) < self.start_epoch]
        R.save_atomic(lambda t: Path(t).write_text("\n".join([header, *rows]) + "\n"), self.fname)
    def after_epoch(self):
        if self.epoch < self.start_epoch: return
        row = [("" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))) for v in self.recorder.log]
        try:
            with open(self.fname, "a") as f: f.write(",".join(row) + "\n")
        except OSError as e:
            msg = R.disk_full_message(self.fname, e)
            if msg: raise OSError(e.errno, msg) from None
            raise


def _base_dl(dl):
    "The loader inside fastai's `DistributedDL` (which has no RNG of its own)."
    return dl.dl if isinstance(dl, DistributedDL) else dl


def _rng_state(learn) -> dict:
    return dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                dls=[_base_dl(dl).rng.getstate() for dl in learn.dls.loaders])


def _set_rng_state(learn, st: dict) -> None:
    random.setstate(st["python"]); np.random.set_state(st["numpy"]); torch.set_rng_state(st["torch"])
    if st.get("cuda") is not None and torch.cuda.is_available(): torch.cuda.set_rng_state_all(st["cuda"])
    for dl, s in zip(learn.dls.loaders, st["dls"]): _base_dl(dl).rng.setstate(s)


class EpochCheckpoint(Callback):
    """After each epoch: model, optimizer, RNG states, best-on-valid bookkeeping, the smoothed training loss and
    the wall time so far, written atomically with its SHA-256 recorded (`rundir.save_hashed`). On resume it puts
    the smoothed loss back, so `train_loss` continues instead of restarting from the new epoch's first batches."""
    order = HistoryCSV.order + 1
    def __init__(self, run_dir: Path, select: str, best: Optional[dict] = None, state: Optional[dict] = None):
        self.run_dir, self.select, self.best = Path(run_dir), select, best or {"epoch": -1, "value": float("inf")}
        self.state = state or {}
    def before_fit(self):
        self.t0, self.wall0 = time.time(), float(self.state.get("wall", 0.0))
        sm = self.state.get("smooth")
        if sm: self.recorder.smooth_loss.count, self.recorder.smooth_loss.val = sm["count"], torch.tensor(sm["val"])
    @property
    def wall(self) -> float: return self.wall0 + time.time() - self.t0
    def after_epoch(self):
        if self.epoch < getattr(self.learn, "_start_epoch", 0): return
        if self.select == "best_valid":
            v = self.recorder.log[self.recorder.metric_names.index("top1_err")]
            if v is not None and v < self.best["value"]:
                self.best = {"epoch": self.epoch, "value": float(v)}
                torch.save(D.unwrap(self.learn.model).state_dict(), self.run_dir / "best.pth")
        sm = self.recorder.smooth_loss
        state = dict(model=D.unwrap(self.learn.model).state_dict(), opt=self.learn.opt.state_dict(), epoch=self.epoch,
                     rng=_rng_state(self.learn), best=self.best, wall=self.wall,
                     smooth=dict(count=int(sm.count), val=float(sm.val)))
        R.save_hashed(lambda t: torch.save(state, t), self.run_dir, R.CHECKPOINT)


class _EpochLineLogger:
    "Recorder's logger when stdout is not a terminal: `epoch 3/30 train_loss=... valid_loss=... top1_err=...`."
    def __init__(self, learn, n_epoch: int, log: Callable): self.learn, self.n_epoch, self.log = learn, n_epoch, log
    def __call__(self, row):
        row, names = list(row), list(self.learn.recorder.metric_names)
        if not row or row[0] == names[0]: return                      # the header
        if all(v is None for v in row[1:-1]): return                   # an epoch skipped by --resume
        parts = [f"{n}={v:.4f}" if isinstance(v, float) else f"{n}={v}" for n, v in zip(names[1:], row[1:]) if v is not None]
        self.log(f"epoch {int(row[0]) + 1}/{self.n_epoch} " + " ".join(parts))


# ---- one run ------------------------------------------------------------------------------------------
def _environment() -> dict:
    import fastai, torchvision
    from . import __version__
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                cwd=Path(__file__).parent).stdout.strip() or None
    except Exception: commit = None
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    return dict(cskd_fastai=__version__, torch=torch.__version__, torchvision=torchvision.__version__,
                fastai=fastai.__version__, python=platform.python_version(), platform=platform.platform(),
                device=dev, git_commit=commit, argv=sys.argv, torch_threads=torch.get_num_threads(),
                world_size=D.world_size())


def run_dir_for(recipe: Recipe, out: Path) -> Path:
    return Path(out) / recipe.name / recipe.method.run_label / f"seed{recipe.seed}"


def _final_eval(learn, data: ImageDataset) -> tuple[dict, dict]:
    from fastcore.basics import noop
    vocab = [str(v) for v in learn.dls.vocab]
    if vocab != [str(c) for c in data.classes]:   # build_dls keeps the loader's order; anything else is a bug
        raise RuntimeError(f"the learner's vocabulary is not the dataset's class order ({vocab[:3]} vs {data.classes[:3]})")
    out, logits = {}, {"classes": vocab}   # the order of the logits' columns and of the labels
    for name, idx in (("valid", 1), ("test", 2)):
        preds, targs = learn.get_preds(ds_idx=idx, act=noop)
        out[name] = classification_metrics(preds, targs)
        logits[name] = {"logits": preds.float().cpu(), "labels": targs.long().cpu()}
    return out, logits


def _plots(run_dir: Path, logits: dict, title: str) -> None:
    import matplotlib; matplotlib.use("Agg")
    import pandas as pd
    from matplotlib.figure import Figure
    from .calibration import reliability_diagram
    ax = reliability_diagram(logits["test"]["logits"], logits["test"]["labels"], title=f"{title} (test)")
    ax.figure.savefig(run_dir / "reliability.png", dpi=110, bbox_inches="tight")
    hist = pd.read_csv(run_dir / R.HISTORY)
    fig = Figure(figsize=(10, 3.6)); a1, a2 = fig.subplots(1, 2)
    for col in ("train_loss", "valid_loss", "train_ce", "train_kd"):
        if col in hist: a1.plot(hist["epoch"] + 1, hist[col], label=col)
    a1.set_xlabel("epoch"); a1.set_title("losses"); a1.legend()
    for col in ("top1_err", "ece"):
        if col in hist: a2.plot(hist["epoch"] + 1, hist[col], label=f"valid {col}")
    a2.set_xlabel("epoch"); a2.set_title("validation"); a2.legend()
    fig.savefig(run_dir / "curves.png", dpi=110, bbox_inches="tight")


def _remove_run_dir(run_dir: Path) -> None:
    "Remove a run directory this call created (and its then-empty parents): the fixed rerun is then not refused."
    shutil.rmtree(run_dir, ignore_errors=True)
    for parent in (run_dir.parent, run_dir.parent.parent):
        try: parent.rmdir()
        except OSError: break


def train_run(recipe: Recipe, run_dir: Path, data: ImageDataset, resume: bool = False,
              log: Callable[[str], None] = _log, progress: Optional[bool] = None,
              cache: Optional[ImageCache] = None) -> dict:
    """Train one (method, seed) run into `run_dir`; returns its metrics.json content.

    One writer per run directory: rank 0 creates it (refusing an existing one unless resuming) and holds its lock
    (`rundir.run_lock`) until the run is finished, so a second process on the same --out is refused with one line.
    A failure before the first checkpoint removes the directory it created; later failures keep the last good
    checkpoint for `--resume`.

    Under a multi-process launch (torchrun / accelerate launch / `--distributed`) every rank trains in fastai's
    `distrib_ctx`; only rank 0 writes `run_dir` and evaluates the final model, the other ranks wait for it."""
    run_dir = Path(run_dir)
    main = D.is_main()
    created = False
    if main:
        created = not run_dir.exists()
        if not resume:
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            try: run_dir.mkdir()   # atomic: of two processes starting this run, exactly one gets here
            except FileExistsError:
                raise RunExistsError(f"run directory {run_dir} already exists; use --resume to continue/skip it, or "
                                     f"--out DIR for a fresh place (nothing was overwritten)") from None
    with R.run_lock(run_dir) if main else contextlib.nullcontext():
        if main and resume and R.is_done(run_dir):   # finished by another process while we waited
            log(f"skipping finished run {run_dir}")
            return R.read_json(run_dir / R.METRICS)
        try:
            return _train_locked(recipe, run_dir, data, resume, log if main else _quiet, progress, cache)
        except BaseException:
            if main and created and not (run_dir / R.CHECKPOINT).exists(): _remove_run_dir(run_dir)
            raise


def _train_locked(recipe: Recipe, run_dir: Path, data: ImageDataset, resume: bool, log: Callable,
                  progress: Optional[bool], cache: Optional[ImageCache] = None) -> dict:
    meth, tc = recipe.method, recipe.train
    main = D.is_main()
    ckpt = run_dir / R.CHECKPOINT
    resuming = resume and ckpt.exists()
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resuming:
            (run_dir / R.RECIPE).write_text(recipe.to_yaml())
            (run_dir / R.ENV).write_text(json.dumps(_environment(), indent=2))
    D.barrier()   # every rank has decided `resuming` before anything else is written
    set_seed(recipe.seed)
    dls = build_dls(recipe, data, recipe.seed, paired=meth.name == "cskd",
                    device=D.local_device() if D.is_distributed() else None, cache=cache)
    n_train = len(dataset_labels(dls.train_ds))
    counts = np.bincount(dataset_labels(dls.train_ds), minlength=len(data.classes))
    if meth.name == "cskd" and (counts == 1).any():
        log(f"warning: {int((counts == 1).sum())} class(es) have a single training image (e.g. "
            f"{data.classes[int(np.flatnonzero(counts == 1)[0])]!r}): their partner is the image itself")
    learn = build_learner(recipe, dls, run_dir)
    if D.rank(): set_seed(recipe.seed + 7919 * D.rank())  # own augmentation/partner draws per rank (weights: DDP syncs)
    if progress is None: progress = sys.stdout.isatty()
    if not progress:  # one plain line per epoch (logs, CI, pipes) instead of progress bars
        learn.remove_cb(ProgressCallback)
        learn.logger = _EpochLineLogger(learn, tc.epochs, log)
    start_epoch, best, state = 0, None, {}
    if resuming:
        state = R.load_checkpoint(run_dir)   # its SHA-256 is checked first: it is a pickle
        learn.model.load_state_dict(state["model"]); learn.create_opt(); learn.opt.load_state_dict(state["opt"])
        start_epoch, best = state["epoch"] + 1, state["best"]
        _set_rng_state(learn, state["rng"])  # rank 0's states (the checkpoint's); other ranks draw their own below
        if D.rank(): set_seed(recipe.seed + 7919 * D.rank() + start_epoch)
        log(f"resuming {run_dir} at epoch {start_epoch + 1}/{tc.epochs}")
    learn._start_epoch = start_epoch
    guard = DivergenceGuard(tc.lr)
    ckpt_cb = EpochCheckpoint(run_dir, tc.select, best, state)
    cbs = [guard, HistoryCSV(run_dir / R.HISTORY, start_epoch), ckpt_cb] if main else [guard]
    log(f"training {recipe.name} / {meth.run_label} / seed {recipe.seed}: {n_train} train, "
        f"{len(dls.valid_ds)} valid, {len(dls.loaders[2].dataset)} test images, {len(data.classes)} classes"
        + (f"; {D.world_size()} processes x {tc.bs} anchors per step" if D.is_distributed() else ""))
    t0 = time.time()
    if start_epoch < tc.epochs:
        with D.distrib_ctx(learn):
            if tc.schedule == "one_cycle":
                learn.fit_one_cycle(tc.epochs, tc.lr, cbs=cbs, start_epoch=start_epoch)
            elif tc.schedule == "paper":
                learn.fit(tc.epochs, tc.lr, cbs=cbs + [PaperSchedule(tc.lr, tc.milestones)], start_epoch=start_epoch)
            else:
                learn.fit(tc.epochs, tc.lr, cbs=cbs, start_epoch=start_epoch)
    # the wall time of the whole run, across resumes (the checkpoint carries the time before this process)
    wall = float(state.get("wall", 0.0)) + time.time() - t0
    if not main:   # rank 0 evaluates the final model on the whole valid/test sets and writes the run directory
        D.barrier()
        return R.read_json(run_dir / R.METRICS)
    world = D.world_size()
    with D.local_only(): result = _finish_run(recipe, run_dir, data, learn, dls, n_train, wall, resuming, world, log)
    D.barrier()
    return result


def _finish_run(recipe: Recipe, run_dir: Path, data: ImageDataset, learn, dls, n_train: int, wall: float,
                resuming: bool, world_size: int, log: Callable) -> dict:
    """Final evaluation, logits, export (hash recorded), examples, plots, metrics.json and DONE of a trained run
    (rank 0 only). A failure here (a full disk, say) keeps the checkpoint: `--resume` redoes only this part."""
    meth, tc = recipe.method, recipe.train
    selected = tc.epochs - 1
    if tc.select == "best_valid" and (run_dir / "best.pth").exists():
        learn.model.load_state_dict(torch.load(run_dir / "best.pth", map_location="cpu"))
        selected = R.load_checkpoint(run_dir)["best"]["epoch"]
    metrics, logits = _final_eval(learn, data)
    facts = dict(label=meth.run_label, recipe=recipe.name, dataset=recipe.dataset.name, model=recipe.model.arch,
                 method=meth.name, lam=meth.lam if meth.name == "cskd" else None,
                 temp=meth.temp if meth.name == "cskd" else None, lam_warmup=meth.lam_warmup if meth.name == "cskd" else None,
                 mix=meth.mix, seed=recipe.seed, epochs=tc.epochs, selected_epoch=selected + 1, select=tc.select,
                 schedule=tc.schedule, image_size=recipe.dataset.image_size, bs=tc.bs, lr=tc.lr,
                 n_train=n_train, n_valid=len(dls.valid_ds), n_test=len(dls.loaders[2].dataset),
                 wall_time_s=round(wall, 1), resumed=resuming, world_size=world_size)
    result = dict(valid=metrics["valid"], test=metrics["test"], facts=facts)
    R.save_atomic(lambda t: torch.save(logits, t), run_dir / R.LOGITS)
    if recipe.train.cache != "none":   # the export predicts on image files: give it the plain (decoding) pipeline
        learn.dls = build_dls(recipe, data, recipe.seed, paired=False, device=dls.device)
    R.save_hashed(lambda t: learn.export(Path(t).resolve()), run_dir, R.EXPORT)
    R.write_examples(run_dir, data.test.items, data.test.labels, data.classes)
    try: _plots(run_dir, logits, meth.run_label)
    except OSError as e:
        msg = R.disk_full_message(run_dir / "reliability.png", e)
        raise OSError(e.errno, msg) if msg else e
    R.save_atomic(lambda t: Path(t).write_text(json.dumps(result, indent=2)), run_dir / R.METRICS)
    (run_dir / R.DONE).write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))
    t = result["test"]
    log(f"done {run_dir}: test top1_err={t['top1_err']:.4f} top5_err={t['top5_err']:.4f} "
        f"ece={t['ece']:.4f} nll={t['nll']:.4f} ({wall:.0f}s)")
    return result


# ---- a whole recipe -----------------------------------------------------------------------------------
def plan_runs(recipe: Recipe, out: Path, resume: bool = False, only: Optional[list[str]] = None):
    "The (run recipe, run dir) pairs `train_recipe` would train; refuses existing run dirs unless resuming."
    runs = [r for r in recipe.runs() if not only or r.method.run_label in only or r.method.name in only]
    if not runs:
        raise ValueError(f"--only {only} matches no method of the recipe (labels: {[m.run_label for m in recipe.methods]})")
    dirs = [run_dir_for(r, out) for r in runs]
    if not resume:
        existing = [d for d in dirs if d.exists()]
        if existing:
            raise RunExistsError(f"run directory {existing[0]} already exists; use --resume to continue/skip it, "
                                 f"or --out DIR for a fresh place (nothing was overwritten)")
    return runs, dirs


def train_recipe(recipe: Recipe, out: Path, data_root: Optional[str] = None, resume: bool = False,
                 only: Optional[list[str]] = None, log: Callable[[str], None] = _log,
                 progress: Optional[bool] = None) -> list[Path]:
    """Train every (method, seed) run of `recipe` under `out`; refuses to touch an existing run unless resuming.
    The data root actually used (`data_root`, else the recipe's) is written, absolute, into each run's recipe.yaml,
    so `eval`, `analyze` and `check` of that run find the data without being told again."""
    if D.init_distributed() and not D.is_main(): log = _quiet
    root = data_root if data_root is not None else recipe.dataset.root
    if root is not None:
        recipe = recipe.model_copy(update=dict(dataset=recipe.dataset.model_copy(
            update=dict(root=str(Path(root).expanduser().resolve())))))
    runs, dirs = plan_runs(recipe, out, resume=resume, only=only)
    data = load_data(recipe)
    todo = [(r, d) for r, d in zip(runs, dirs) if not (resume and R.is_done(d))]
    cache = _image_cache(recipe, data, Path(out), log) if todo and recipe.train.cache != "none" else None
    D.barrier()   # every rank has checked the run directories before rank 0 creates any
    for r, d in zip(runs, dirs):
        if resume and R.is_done(d):
            log(f"skipping finished run {d}"); continue
        if d.exists() and not (d / R.CHECKPOINT).exists() and any(d.iterdir()) and resume:
            log(f"restarting {d}: it has no checkpoint yet")
        train_run(r, d, data, resume=resume, log=log, progress=progress, cache=cache)
    return dirs


def _image_cache(recipe: Recipe, data: ImageDataset, out: Path, log: Callable) -> ImageCache:
    "The recipe's decoded-image cache (`train.cache`), built once for all its runs; disk caches under <out>/.cache."
    tc, size = recipe.train, recipe.dataset.image_size
    side, mode = cache_side(size, tc.augment), ("rrc" if tc.augment == "resized_crop_flip" else "resize")
    items = list(data.train.items) + list(data.test.items)
    t0 = time.time()
    # under a multi-process launch every rank builds (memory) or reuses (disk) it; a disk build is tmp + rename
    cache = build_cache(items, side, mode, tc.cache, cache_dir=out / ".cache", name=recipe.dataset.name,
                        threads=max(1, min(4, os.cpu_count() or 1)), log=log)
    log(f"image cache ({tc.cache}): {len(items)} images at {side}px, {cache.images.nbytes / 2**20:.0f} MB, "
        f"ready in {time.time() - t0:.1f}s")
    return cache
