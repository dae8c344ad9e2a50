"""Callbacks of the training loop that `cskd-fastai train` adds to every run: the paper's step schedule, the
divergence guard, history.csv, the per-epoch checkpoint (with RNG states, smoothed loss, wall time and methods'
per-sample state), and the plain one-line-per-epoch logger used off a terminal."""
from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.distributed import DistributedDL
from fastai.learner import Recorder

from .. import distributed as D
from .. import rundir as R

__all__ = ["PaperSchedule", "TrainingDiverged", "DivergenceGuard", "HistoryCSV", "EpochCheckpoint", "EpochLineLogger",
           "set_rng_state"]


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


def set_rng_state(learn, st: dict) -> None:
    random.setstate(st["python"]); np.random.set_state(st["numpy"]); torch.set_rng_state(st["torch"])
    if st.get("cuda") is not None and torch.cuda.is_available(): torch.cuda.set_rng_state_all(st["cuda"])
    for dl, s in zip(learn.dls.loaders, st["dls"]): _base_dl(dl).rng.setstate(s)


class EpochCheckpoint(Callback):
    """After each epoch: model, optimizer, RNG states, best-on-valid bookkeeping, the smoothed training loss and
    the wall time so far, written atomically with its SHA-256 recorded (`rundir.save_hashed`). On resume it puts
    the smoothed loss back, so `train_loss` continues instead of restarting from the new epoch's first batches.
    The run's `fingerprint` (`cskd_fastai.fingerprint`) rides along, so `--resume` can refuse another recipe. With
    `select: best_valid` the best epoch's weights go to best.pth, also atomically and hashed."""
    order = HistoryCSV.order + 1
    def __init__(self, run_dir: Path, select: str, best: Optional[dict] = None, state: Optional[dict] = None,
                 fingerprint: Optional[dict] = None):
        self.run_dir, self.select, self.best = Path(run_dir), select, best or {"epoch": -1, "value": float("inf")}
        self.state, self.fingerprint = state or {}, fingerprint
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
                weights = D.unwrap(self.learn.model).state_dict()
                R.save_hashed(lambda t: torch.save(weights, t), self.run_dir, R.BEST)
        sm = self.recorder.smooth_loss
        state = dict(model=D.unwrap(self.learn.model).state_dict(), opt=self.learn.opt.state_dict(), epoch=self.epoch,
                     rng=_rng_state(self.learn), best=self.best, wall=self.wall,
                     smooth=dict(count=int(sm.count), val=float(sm.val)), fingerprint=self.fingerprint,
                     # per-sample state of a method (PS-KD's last-epoch predictions): resumed like the weights
                     cbs={type(cb).__name__: cb.state_dict() for cb in self.learn.cbs if hasattr(cb, "state_dict")})
        R.save_hashed(lambda t: torch.save(state, t), self.run_dir, R.CHECKPOINT)


class EpochLineLogger:
    "Recorder's logger when stdout is not a terminal: `epoch 3/30 train_loss=... valid_loss=... top1_err=...`."
    def __init__(self, learn, n_epoch: int, log: Callable): self.learn, self.n_epoch, self.log = learn, n_epoch, log
    def __call__(self, row):
        row, names = list(row), list(self.learn.recorder.metric_names)
        if not row or row[0] == names[0]: return                      # the header
        if all(v is None for v in row[1:-1]): return                   # an epoch skipped by --resume
        parts = [f"{n}={v:.4f}" if isinstance(v, float) else f"{n}={v}" for n, v in zip(names[1:], row[1:]) if v is not None]
        self.log(f"epoch {int(row[0]) + 1}/{self.n_epoch} " + " ".join(parts))
