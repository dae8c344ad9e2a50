"""Train a recipe: one run directory per (method, seed), an honest protocol, resumable.

Protocol: a stratified, seeded validation split is carved from the training data; the test split is evaluated
once, after the last epoch; metrics are those of the final epoch unless the recipe selects on *validation*.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from fastai.callback.progress import ProgressCallback
from fastai.optimizer import SGD, Adam
from fastai.torch_core import set_seed

from . import distributed as D
from . import rundir as R
from .cache import ImageCache
from .callbacks.memory import ReleaseMemory
from .callbacks.protocol import (DivergenceGuard, EpochCheckpoint, EpochLineLogger, HistoryCSV, PaperSchedule,  # noqa: F401
                                 TrainingDiverged, set_rng_state)  # (TrainingDiverged: re-exported for the CLI)
from .loaders import check_classes, dataset_labels
from .datasets import ImageDataset
from .pipeline import build_dls, image_cache, load_data
from .evaluate import write_trust
from .finish import environment, finish_run
from .fingerprint import ResumeMismatch, fingerprint_changes, recipe_keys, run_fingerprint
from .learner import plain_learner
from .metrics import cskd_metrics
from .recipe import Recipe, recipe_of_run
from .speed import apply_speed_options

__all__ = ["build_learner", "train_run", "train_recipe", "plan_runs", "run_dir_for", "RunExistsError"]


def _log(msg: str) -> None: print(msg, flush=True)   # flushed: logs of long runs must show up as they happen
def _quiet(msg: str) -> None: pass                     # ranks other than 0 of a distributed run


class RunExistsError(FileExistsError):
    "A run directory already exists: nothing is ever overwritten silently."


# ---- learner ------------------------------------------------------------------------------------------
def _arch(recipe: Recipe):
    from .models import resolve_arch
    return resolve_arch(recipe.model.arch, recipe.model.head)


def build_learner(recipe: Recipe, dls, path: Path):
    "The learner a single-method recipe asks for: the method's loss and callbacks, the paper's optimizer settings."
    meth, tc = recipe.method, recipe.train
    if tc.optimizer == "sgd": opt_func = partial(SGD, mom=tc.momentum, decouple_wd=False)  # PyTorch SGD's L2 decay
    else: opt_func = Adam
    if meth.class_partners: check_classes(dls)
    cbs = meth.callbacks(tc.epochs)
    if meth.teacher:   # rebuilt from the teacher run's recipe and weights: nothing of that run is unpickled
        from .rebuild import teacher_from_run
        cbs.append(teacher_from_run(meth.teacher, weight=meth.teacher_weight, temp=meth.teacher_temp))
    learn = plain_learner(dls, _arch(recipe), opt_func=opt_func, loss_func=meth.loss_func(), metrics=cskd_metrics(),
                          wd=tc.wd, wd_bn_bias=True, path=path, model_dir=".", cbs=cbs,
                          pretrained=recipe.model.pretrained)
    if tc.mixed_precision != "none":
        if not torch.cuda.is_available():
            print(f"warning: train.mixed_precision={tc.mixed_precision} needs CUDA; training in float32 on CPU")
        else: learn = learn.to_bf16() if tc.mixed_precision == "bf16" else learn.to_fp16()
    return apply_speed_options(learn, tc)   # train.channels_last, train.compile


# ---- one run ------------------------------------------------------------------------------------------
def run_dir_for(recipe: Recipe, out: Path) -> Path:
    return Path(out) / recipe.name / recipe.method.run_label / f"seed{recipe.seed}"


def _check_resume(run_dir: Path, state: dict, now: dict) -> None:
    """Refuse, in one line, to resume a checkpoint under a recipe or split that changes the result (a checkpoint
    written before fingerprints existed is compared with the run's recipe.yaml: the recipe keys alone)."""
    saved = state.get("fingerprint") or dict(recipe=recipe_keys(recipe_of_run(R.read_yaml(run_dir / R.RECIPE))))
    changes = fingerprint_changes(saved, now)
    if changes:
        raise ResumeMismatch(f"cannot resume {run_dir}: its checkpoint was trained with another recipe or data "
                             f"({'; '.join(changes)}); resume with the recipe and data it started with, or train into a "
                             f"fresh --out")


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
            (run_dir / R.ENV).write_text(json.dumps(environment(), indent=2))
    D.barrier()   # every rank has decided `resuming` before anything else is written
    fingerprint = run_fingerprint(recipe, data)
    state = R.load_checkpoint(run_dir) if resuming else {}   # its SHA-256 is checked first: it is a pickle
    if resuming: _check_resume(run_dir, state, fingerprint)
    set_seed(recipe.seed)
    dls = build_dls(data, recipe.dataset, tc, recipe.seed, paired=meth.paired, indexed=meth.needs_ids,
                    device=D.local_device() if D.is_distributed() else None, cache=cache)
    n_train = len(dataset_labels(dls.train_ds))
    counts = np.bincount(dataset_labels(dls.train_ds), minlength=len(data.classes))
    if meth.class_partners and (counts == 1).any():
        log(f"warning: {int((counts == 1).sum())} class(es) have a single training image (e.g. "
            f"{data.classes[int(np.flatnonzero(counts == 1)[0])]!r}): their partner is the image itself")
    learn = build_learner(recipe, dls, run_dir)
    if D.rank(): set_seed(recipe.seed + 7919 * D.rank())  # own augmentation/partner draws per rank (weights: DDP syncs)
    if progress is None: progress = sys.stdout.isatty()
    if not progress:  # one plain line per epoch (logs, CI, pipes) instead of progress bars
        learn.remove_cb(ProgressCallback)
        learn.logger = EpochLineLogger(learn, tc.epochs, log)
    start_epoch, best = 0, None
    if resuming:
        learn.model.load_state_dict(state["model"]); learn.create_opt(); learn.opt.load_state_dict(state["opt"])
        start_epoch, best = state["epoch"] + 1, state["best"]
        set_rng_state(learn, state["rng"])  # rank 0's states (the checkpoint's); other ranks draw their own below
        for cb in learn.cbs:
            if type(cb).__name__ in state.get("cbs", {}): cb.load_state_dict(state["cbs"][type(cb).__name__])
        if D.rank(): set_seed(recipe.seed + 7919 * D.rank() + start_epoch)
        log(f"resuming {run_dir} at epoch {start_epoch + 1}/{tc.epochs}")
    learn._start_epoch = start_epoch
    guard = DivergenceGuard(tc.lr)
    ckpt_cb = EpochCheckpoint(run_dir, tc.select, best, state, fingerprint)
    cbs = [guard, HistoryCSV(run_dir / R.HISTORY, start_epoch), ckpt_cb] if main else [guard]
    # glibc keeps freed buffers: without the trim a long CPU run's RSS grew every epoch
    if tc.malloc_trim_every: cbs.append(ReleaseMemory(tc.malloc_trim_every))
    log(f"training {recipe.name} / {meth.run_label} / seed {recipe.seed}: {n_train} train, "
        f"{len(dls.valid_ds)} valid, {len(dls.loaders[2].dataset)} test images, {len(data.classes)} classes"
        + (f"; {D.world_size()} processes x {tc.bs} anchors per step" if D.is_distributed() else ""))
    if tc.schedule == "fine_tune" and tc.epochs == tc.freeze_epochs:
        log(f"fine_tune with epochs = freeze_epochs = {tc.epochs}: only the head trains (fastai's fine_tune(0)); "
            f"train.epochs counts the frozen epochs too, so raise it for unfrozen ones")
    t0 = time.time()
    if start_epoch < tc.epochs:
        with D.distrib_ctx(learn):
            cycle = {k: v for k, v in (("pct_start", tc.pct_start), ("div", tc.div)) if v is not None}
            if tc.schedule == "one_cycle":
                learn.fit_one_cycle(tc.epochs, tc.lr, cbs=cbs, start_epoch=start_epoch, **cycle)
            elif tc.schedule == "fine_tune":   # one fit (CSKDLearner.fine_tune): resumable in either phase
                learn.fine_tune(tc.epochs - tc.freeze_epochs, tc.lr, freeze_epochs=tc.freeze_epochs, lr_mult=tc.lr_mult,
                                cbs=cbs, start_epoch=start_epoch, **cycle)
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
    with D.local_only(): result = finish_run(recipe, run_dir, data, learn, dls, n_train, wall, resuming, world, log)
    D.barrier()
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
    data = load_data(recipe.dataset)
    todo = [(r, d) for r, d in zip(runs, dirs) if not (resume and R.is_done(d))]
    cache = image_cache(recipe.dataset, recipe.train, data, Path(out), log) if todo and recipe.train.cache != "none" else None
    D.barrier()   # every rank has checked the run directories before rank 0 creates any
    for r, d in zip(runs, dirs):
        if resume and R.is_done(d):
            log(f"skipping finished run {d}")
        else:
            if d.exists() and not (d / R.CHECKPOINT).exists() and any(d.iterdir()) and resume:
                log(f"restarting {d}: it has no checkpoint yet")
            train_run(r, d, data, resume=resume, log=log, progress=progress, cache=cache)
        if r.eval is not None and D.is_main() and not (d / R.TRUST).exists():   # also for a finished run it lacks
            write_trust(d, r.eval, log=log)
    return dirs


