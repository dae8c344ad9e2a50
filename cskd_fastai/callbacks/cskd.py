"""The CS-KD fastai callback: split paired batches, distil each anchor from its same-class partner.

Yun, Park, Lee, Shin, "Regularizing Class-wise Predictions via Self-knowledge Distillation", CVPR 2020.
"""
from __future__ import annotations

from typing import Callable, Union

import torch
import torch.nn.functional as F
from fastai.torch_core import find_bs

from ..checks import check_fraction, check_temp, check_weight
from ..loaders import PairedDL, paired_dls
from ..losses import KD_TERMS, softened_entropy
from ..variants import variant as _variant
from .base import KDCallback

__all__ = ["CSKD", "LamSchedule", "warmup_schedule", "PAIRED_VARIANTS"]

LamSchedule = Union[float, Callable[[float], float]]


def _check_lam(lam) -> None:
    if callable(lam): return
    try: check_weight(lam, "lam")
    except ValueError: raise ValueError(f"lam must be a finite number >= 0 or a schedule callable of training "
                                        f"progress, got {lam!r}") from None


def _check_warmup(warmup) -> None: check_fraction(warmup, "lam_warmup", "a fraction of training")


def warmup_schedule(lam: float, warmup: float) -> Callable[[float], float]:
    "λ rising linearly from 0 to `lam` over the first `warmup` fraction of training, then constant."
    _check_lam(lam); _check_warmup(warmup)
    def _sched(pct: float) -> float: return lam * min(1.0, pct / warmup) if warmup > 0 else lam
    return _sched


# The variants of `cskd_fastai.variants` whose partners are images of the paired batch (a separate pass or in-batch);
# 'stored' takes its partners from a store (`StoredCSKD`).
PAIRED_VARIANTS = ("published", "decoupled", "gated", "in_batch")


class CSKD(KDCallback):
    """Class-wise self-knowledge distillation: CE on anchors + λ·T²·KL(partner ‖ anchor), partners under no_grad.

    `variant` (the published loss by default; the others are this project's, measured in docs/results.md), one of
    `cskd_fastai.variants.VARIANTS` with paired partners: its partner source and KD term (`losses.KD_TERMS`)
    * 'decoupled': λ·T²·(tckd_weight·TCKD + nckd_weight·NCKD) of KL(partner ‖ anchor) (`losses.decoupled`): with
      tckd_weight 0 the class-similarity part stays and the confidence penalty of unfit partners goes.
    * 'gated': each anchor's KD term times the partner's informativeness 1 - H(p_partner^T)/log C (weighting a
      distillation term per sample by its target's confidence is a common device in KD; the gate on CS-KD's
      class-wise target is ours).
    * 'in_batch': no separate partner pass: one forward over the 2B paired images, CE on all of them, and the
      KD term between the two members of each pair in both directions, the target side detached (asked in
      alinlab/cs-kd#3). Distilling between samples of one batch has prior art in BAKE (Ge et al.,
      "Self-distillation with Batch Knowledge Ensembling Improves ImageNet Classification", 2021), which
      ensembles the predictions of similar samples in the batch; here the partner is a same-class image.
    `partner_mode='eval'` (a diagnostic, not the paper's) runs the partner pass in eval mode: no dropout, BatchNorm's
    running statistics."""
    # KDCallback.order: split the batch before MixUp/CutMix mix it
    stat_names = ("train_ce", "train_kd", "cskd_lam", "partner_conf", "partner_entropy", "anchor_conf")
    n_sums = 6   # sums of CE, KD, partner confidence, partner entropy at T, anchor confidence; then the count

    def __init__(self, lam: LamSchedule = 1.0, temp: float = 4.0, lam_warmup: float = 0.0, log_stats: bool = True,
                 variant: str = "published", tckd_weight: float = 0.0, nckd_weight: float = 1.0,
                 partner_mode: str = "train"):
        _check_lam(lam); check_temp(temp); _check_warmup(lam_warmup)   # check_temp: one rule for every method
        if callable(lam) and lam_warmup > 0:
            raise ValueError("pass either a λ schedule (e.g. warmup_schedule(lam, w)) or lam_warmup, not both: they "
                             "would multiply")
        v = _variant(variant)
        if v.partners not in ("pass", "in_batch"):
            raise ValueError(f"variant {variant!r} takes its partners from a store: use StoredCSKD (or "
                             f"cskd_learner(..., variant={variant!r})); CSKD's variants are {PAIRED_VARIANTS}")
        check_weight(tckd_weight, "tckd_weight"); check_weight(nckd_weight, "nckd_weight")
        if partner_mode not in ("train", "eval") or (partner_mode == "eval" and v.partners == "in_batch"):
            raise ValueError(f"partner_mode must be 'train' (as published) or 'eval', and 'eval' needs a partner pass "
                             f"(not variant in_batch); got {partner_mode!r} with variant {variant!r}")
        self.partner_mode = partner_mode
        self.lam, self.temp, self.lam_warmup, self.log_stats = lam, float(temp), float(lam_warmup), log_stats
        self.variant, self.tckd_weight, self.nckd_weight = variant, float(tckd_weight), float(nckd_weight)
        self.in_batch, self.term = v.partners == "in_batch", v.term
        self._restore_dls, self._lam = None, None

    # ---- λ schedule -------------------------------------------------------------------------------
    def lam_at(self, pct_train: float) -> float:
        "λ at training progress `pct_train` ∈ [0, 1]: the schedule (or constant) times the linear warm-up."
        lam = float(self.lam(pct_train)) if callable(self.lam) else float(self.lam)
        if self.lam_warmup > 0: lam *= min(1.0, pct_train / self.lam_warmup)
        return lam

    # ---- fit-level events -------------------------------------------------------------------------
    def prepare_fit(self):
        if not isinstance(self.dls.train, PairedDL):  # a plain learner: pair its training loader for this fit
            self._restore_dls, self.learn.dls = self.dls, paired_dls(self.dls)
        self._first_batch = True

    def restore_fit(self):   # leave the learner as we found it: no paired loaders in `learn`, exports stay plain
        if self._restore_dls is not None: self.learn.dls, self._restore_dls = self._restore_dls, None

    # ---- batch-level events (training only) -------------------------------------------------------
    def before_batch(self):
        n = find_bs(self.yb)
        if n % 2:
            raise ValueError(f"CSKD expects paired batches (B anchors + B partners) but got {n} items; "
                             "build the train loader with dl_type=PairedDL or use cskd_learner / paired_dls")
        b = n // 2
        if self._first_batch:  # one cheap sanity check per fit: partners really share their anchor's class
            y = self.yb[0]
            if y.dim() == 1 and not torch.equal(y[:b], y[b:]):
                raise ValueError("CSKD: partner labels differ from anchor labels; the train loader is not a PairedDL")
            self._first_batch = False
        if self.in_batch: return   # one forward over anchors and partners together
        self.partner_xb = tuple(x[b:] for x in self.xb)
        self.learn.xb = tuple(x[:b] for x in self.xb)
        self.learn.yb = tuple(y[:b] for y in self.yb)

    def after_pred(self):
        if self.in_batch: return
        # Separate forward, same network in train mode: partners get their own BatchNorm statistics and no graph.
        # partner_mode 'eval' (a diagnostic, not the paper's): dropout off and BatchNorm's running statistics, i.e. the
        # target the model would predict for the partner (docs/results.md §7: fastai's head dropout makes the train-mode
        # target of a fine-tuned model far less accurate than its own prediction)
        model = self.learn.model
        if self.partner_mode == "train":
            with torch.no_grad(): self.partner_pred = model(*self.partner_xb)
            return
        modes = [(m, m.training) for m in model.modules()]   # restored as found (e.g. a BatchNorm kept in eval)
        model.eval()
        try:
            with torch.no_grad(): self.partner_pred = model(*self.partner_xb)
        finally:
            for m, mode in modes: m.training = mode

    def _term(self, anchor, partner, labels):
        "This variant's KD term (`losses.KD_TERMS`), mean over anchors."
        kw = dict(tckd_weight=self.tckd_weight, nckd_weight=self.nckd_weight) if self.term == "decoupled" else {}
        return KD_TERMS[self.term](anchor, partner, labels, self.temp, **kw).mean()

    def _kd(self):
        "The KD term of this variant (in-batch: both ways, and the partner logits the statistics describe)."
        y = self.yb[0] if self.term == "decoupled" else None   # only DKD's split reads the labels
        if self.in_batch:
            b = self.pred.shape[0] // 2
            a, p = self.pred[:b], self.pred[b:]
            self.partner_pred = p.detach()
            ya, yp = (y[:b], y[b:]) if y is not None else (None, None)
            return 0.5 * (self._term(a, p, ya) + self._term(p, a, yp))   # targets detached by the term
        return self._term(self.pred, self.partner_pred, y)

    def after_loss(self):
        lam = self.lam_at(self.pct_train)
        kd = self._kd()
        ce = self.add_kd(kd, lam)
        if self.log_stats: self._accumulate(ce, kd.detach(), lam)

    def after_batch(self): self.partner_xb = self.partner_pred = None  # free memory before the next batch

    # ---- statistics -------------------------------------------------------------------------------
    @torch.no_grad()
    def _accumulate(self, ce, kd, lam):
        b = self.partner_pred.shape[0]
        pp = F.softmax(self.partner_pred.float(), -1)
        pa = F.softmax(self.pred.detach()[:b].float(), -1)
        ent = softened_entropy(self.partner_pred, self.temp)
        self.accumulate(torch.stack([ce.float() * b, kd.float() * b, pp.max(-1)[0].sum(), ent.sum(),
                                     pa.max(-1)[0].sum(), torch.tensor(float(b), device=ce.device)]))
        self._lam = lam

    def summarize(self, s: list) -> dict:
        "Means over this epoch's training anchors: CE, KD, λ, partner confidence and entropy (at T), anchor confidence."
        n = max(s[5], 1.0)
        return dict(train_ce=s[0] / n, train_kd=s[1] / n, cskd_lam=self._lam, partner_conf=s[2] / n,
                    partner_entropy=s[3] / n, anchor_conf=s[4] / n)
