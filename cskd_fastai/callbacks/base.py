"""The base of every KD callback (CS-KD, its stored-partner form, teacher KD): it owns the lifecycle once, as
fastai's `MixHandler` does for MixUp/CutMix, and a subclass says only what differs.

What the base owns:
* the loss: `add_kd(kd, weight)` adds weight·kd to what is backpropagated (`learn.loss_grad`) and, detached, to what
  Recorder logs (`learn.loss`; fastai 2.8 backpropagates `loss_grad` and logs `loss`, so both are set);
* the per-epoch statistics: a subclass names them (`stat_names`) and adds one row of sums per batch (`accumulate`);
  the base logs their means as fastai metrics, sums them over every process under DDP after each training phase
  (so a multi-process run logs what one process would), and takes the metrics out again when the fit ends;
* fit-level set-up and clean-up (`prepare_fit` / `restore_fit`), also when a fit is cancelled: the learner is left
  as it was found (plain loaders, no training-only metrics), so exports stay plain.
Validation is plain: the callbacks run in training only.
"""
from __future__ import annotations

from typing import Optional

import torch
from fastai.callback.core import Callback
from fastai.callback.mixup import CutMix, MixUp

from ..progress import quiet_fill_check
from .stats import add_stat_metrics, all_reduce_sum, remove_stat_metrics

__all__ = ["KDCallback"]


class KDCallback(Callback):
    "Adds a weighted KD term to the training loss and logs per-epoch statistics of it; subclasses compute the term."
    order, run_valid = min(MixUp.order, CutMix.order) - 1, False   # before MixUp/CutMix mix the batch
    stat_names: tuple = ()   # per-epoch statistics logged as recorder/CSV columns, in this order
    n_sums: int = 0          # length of the row of per-batch sums that `accumulate` adds up
    log_stats: bool = True
    _sums: Optional[torch.Tensor] = None

    # ---- hooks a subclass fills in ------------------------------------------------------------------
    def prepare_fit(self) -> None: "Set the learner up for this fit (loaders, stores); undone by `restore_fit`."
    def restore_fit(self) -> None: "Undo `prepare_fit`."
    def summarize(self, sums: list) -> dict: "The epoch's statistics from the summed rows."; return {}

    # ---- lifecycle ------------------------------------------------------------------------------------
    def before_fit(self):   # fastai's get_preds runs before_fit/after_fit too: keep it light and undoable
        quiet_fill_check()   # in a plain fastai Learner too: quiet bars in non-terminal output (idempotent)
        self.prepare_fit()
        if self.log_stats and self.stat_names: add_stat_metrics(self.learn, self._stat, self.stat_names, owner=self)

    def after_fit(self):   # after a cancelled fit too (fastai runs after_fit after after_cancel_fit)
        remove_stat_metrics(self.learn, owner=self)
        self.restore_fit()

    def before_train(self): self._sums = None

    def after_train(self):
        if not (self.log_stats and self.n_sums): return
        if self._sums is None: self._sums = torch.zeros(self.n_sums, device=self.dls.device)   # no batch on this rank
        self._sums = all_reduce_sum(self._sums)   # every rank's anchors: what one process would log

    # ---- the loss -------------------------------------------------------------------------------------
    def add_kd(self, kd: torch.Tensor, weight: float) -> torch.Tensor:
        "Add weight·kd to the training loss; returns the loss before it (detached), e.g. the batch's CE."
        base = self.learn.loss.detach()
        self.learn.loss_grad = self.learn.loss_grad + weight * kd   # what is backpropagated
        self.learn.loss = base + weight * kd.detach()                # what Recorder logs
        return base

    # ---- statistics -----------------------------------------------------------------------------------
    @torch.no_grad()
    def accumulate(self, row: torch.Tensor) -> None:
        "Add this batch's row of sums (kept on the device: one sync per epoch)."
        self._sums = row if self._sums is None else self._sums + row

    def epoch_stats(self) -> dict:
        "This epoch's statistics (`stat_names`): means over the training samples so far."
        return {} if self._sums is None else self.summarize(self._sums.tolist())

    def _stat(self, key: str): return self.epoch_stats().get(key)
