"""fastai's `fine_tune` as one fit: the same schedule, and every callback sees one continuous training.

fastai's `Learner.fine_tune(epochs, base_lr, freeze_epochs, lr_mult, pct_start, div)` is two fits: `freeze()` and
`fit_one_cycle(freeze_epochs, slice(base_lr), pct_start=0.99)`, then `unfreeze()` and `fit_one_cycle(epochs,
slice(base_lr/2/lr_mult, base_lr/2), pct_start, div)`. Two fits restart whatever a callback schedules over training:
PS-KD's α_t would reach its final value in the one frozen epoch and start again; a λ warm-up would run twice; the
history and the checkpoint epoch would restart at 0, so a run could not be resumed in its second phase.

`FineTuneSchedule` gives the same learning-rate and momentum curves, phase for phase (each phase's one-cycle over its
own share of the epochs, `combine_scheds`), and freezes the body for the first `freeze_epochs` epochs and unfreezes
it after, inside a single fit of `freeze_epochs + epochs` epochs. One optimizer throughout, as in fastai (its
`fit` keeps the optimizer between the two calls). `CSKDLearner.fine_tune` uses it, so `cskd_learner(...)
.fine_tune(n)` and a recipe's `train.schedule: fine_tune` are the same training.
"""
from __future__ import annotations

import warnings

import numpy as np
from fastai.callback.schedule import ParamScheduler, combine_scheds, combined_cos
from fastcore.basics import store_attr

__all__ = ["FineTuneSchedule"]


class FineTuneSchedule(ParamScheduler):
    "Frozen one-cycle for `freeze_epochs` epochs, then unfrozen one-cycle with discriminative lrs, in one fit."
    def __init__(self, freeze_epochs: int = 1, base_lr: float = 2e-3, lr_mult: float = 100, pct_start: float = 0.3,
                 div: float = 5.0, div_final: float = 1e5, moms=None, start_epoch: int = 0):
        if not (isinstance(freeze_epochs, int) and freeze_epochs >= 0):
            raise ValueError(f"freeze_epochs must be a whole number >= 0, got {freeze_epochs!r}")
        store_attr()
        super().__init__({})

    def _lr_max(self, lr) -> np.ndarray:
        "Per parameter group, as `fit_one_cycle` reads them: a slice spread over the groups by the optimizer."
        self.opt.set_hyper("lr", lr)
        return np.array([h["lr"] for h in self.opt.hypers])

    def before_fit(self):
        if self.n_epoch < max(self.freeze_epochs, 1):
            raise ValueError(f"fine-tuning for {self.n_epoch} epochs with freeze_epochs={self.freeze_epochs}: the epochs "
                             f"count the frozen ones too; train for at least freeze_epochs (and one) epochs")
        if self.opt is None: self.learn.create_opt()
        moms = self.moms if self.moms is not None else self.learn.moms
        frozen = self._lr_max(slice(self.base_lr))
        half = self.base_lr / 2
        unfrozen = self._lr_max(slice(half / self.lr_mult, half))
        phases = [(combined_cos(0.99, frozen / 25.0, frozen, frozen / self.div_final), combined_cos(0.99, *moms)),
                  (combined_cos(self.pct_start, unfrozen / self.div, unfrozen, unfrozen / self.div_final),
                   combined_cos(self.pct_start, *moms))]
        f = self.freeze_epochs / self.n_epoch
        if f == 0: self.scheds = dict(lr=phases[1][0], mom=phases[1][1])
        elif f == 1: self.scheds = dict(lr=phases[0][0], mom=phases[0][1])   # fastai's fine_tune(0): the head only
        else: self.scheds = {k: combine_scheds([f, 1 - f], [phases[0][i], phases[1][i]]) for i, k in enumerate(("lr", "mom"))}
        self._frozen = None
        super().before_fit()

    def before_epoch(self):
        """Freeze or unfreeze when the phase differs from the body's state: at the start, at the phase boundary, and
        at the first epoch of a resumed fit (`start_epoch`, as given to `fit`). The optimizer state is cleared where fastai's
        `freeze()` / `unfreeze()` clear it (epoch 0 and the first unfrozen epoch), not when a resumed fit merely
        restores the freeze of the epoch it resumes in (its optimizer state comes from the checkpoint)."""
        if self.epoch < self.start_epoch: return   # skipped by a resumed fit: leave the restored optimizer alone
        frozen = self.epoch < self.freeze_epochs
        if frozen == self._frozen: return
        if frozen and not getattr(self.learn, "pretrained_body", True):
            warnings.warn("freezing a randomly initialised body: only the head will train in the frozen epochs (the "
                          "learner was built with pretrained=False)", UserWarning, stacklevel=2)
        self.opt.freeze_to(-1 if frozen else 0)
        if self.epoch in (0, self.freeze_epochs): self.opt.clear_state()
        self._frozen = frozen
