"""CS-KD with stored partner predictions: the class-wise target without the partners' forward pass.

This project's variant, motivated by docs/results.md §5/§6: the published CS-KD (Yun, Park, Lee, Shin, CVPR 2020)
runs a second, no-grad forward pass over B partner images every step (~1.4x CE's time here), and on short schedules
CE given that compute (more epochs) beats it. Here partner i is still a uniform draw among the other training samples
of anchor i's class (`ClassIndex.partners`: the anchor itself only when it is alone in its class), but its logits are
the ones the same network produced for it, in train mode and without gradient, the last time it was an anchor: a
per-sample store, as PS-KD (Kim, Ji, Yoon, Hwang, ICCV 2021) keeps last-epoch predictions. An epoch costs what
CE's costs; the store holds N x C numbers (50k x 100 floats = 20 MB for CIFAR-100; 1.28M x 1000 = 5.1 GB for
ImageNet, half with `store_dtype=torch.float16`). Partner predictions are up to one epoch old, and in the first
epoch a partner not yet seen contributes no term (its anchor's KD term is 0).

Prior art, and what is borrowed: distilling from the model's own past predictions kept per sample is PS-KD's; close
to it are Online Label Smoothing (Zhang et al., "Delving Deep into Label Smoothing", IEEE TIP 2021: each class's average
prediction of the last epoch as its soft label), Learning with Retrospection (Deng & Zhang, AAAI 2021: the last
epoch's predictions as targets) and DLB (Shen et al., CVPR 2022: the previous iteration's logits
of the same samples). What is this project's: CS-KD's class-wise pairing (a uniformly drawn *other* sample of the
class, not the sample itself or the class mean) read from such a store, with the gate below.

`gated=True` (default) scales each anchor's term by the partner's informativeness 1 - H(softmax(partner/T))/log C,
as `CSKD(variant='gated')` does: near-uniform partner targets then stop acting as a confidence penalty.
Under multi-process training every rank's store receives every rank's predictions each step (as `PSKD`'s).
"""
from __future__ import annotations

import torch

from ..checks import check_flag, check_temp, check_weight
from ..loaders import ClassIndex, dataset_labels
from ..losses import KD_TERMS, softened_entropy
from .base import KDCallback
from .sample_store import SampleStoreMixin, check_store_dtype

__all__ = ["StoredCSKD"]

class StoredCSKD(SampleStoreMixin, KDCallback):
    "CS-KD whose same-class partners' logits come from a per-sample store of the last prediction, not a forward pass."
    stat_names = ("train_ce", "train_kd", "partner_seen", "partner_entropy")
    n_sums = 5   # sums of CE, KD, partners with a stored prediction, their entropy at T; then the count

    def __init__(self, lam: float = 1.0, temp: float = 4.0, gated: bool = True,
                 store_dtype: torch.dtype = torch.float32, log_stats: bool = True):
        self.lam, self.temp = check_weight(lam, "lam"), check_temp(temp)
        self.gated, self.store_dtype, self.log_stats = check_flag(gated, "gated"), check_store_dtype(store_dtype), log_stats
        self._restore = None

    # ---- fit-level events -------------------------------------------------------------------------
    def prepare_fit(self):
        self._restore = self._index_loaders()
        self.cidx = ClassIndex(dataset_labels(self.learn.dls.train_ds))
        self._ensure_store()

    def restore_fit(self):
        if self._restore is not None: self.learn.dls, self._restore = self._restore, None

    # ---- batch-level events (training only) -------------------------------------------------------
    def before_batch(self):
        *ys, idx = self.yb
        self.idx = idx.long().to(self.store.device)
        self.partners = self.cidx.partners_like(self.idx)    # drawn on the store's device: no sync per step
        self.partner_logits, self.partner_seen = self.store[self.partners].float(), self.seen[self.partners]
        self.learn.yb = tuple(ys)

    def after_loss(self):
        p = self.partner_logits.to(self.pred.device)
        seen = self.partner_seen.to(self.pred.device).float()       # an unseen partner has no prediction yet
        kd = (seen * KD_TERMS["gated" if self.gated else "plain"](self.pred, p, self.learn.yb[0], self.temp)).mean()
        ce = self.add_kd(kd, self.lam)
        self.write_store(self.idx, self.pred)   # this batch's predictions become the store's entries for its samples
        if self.log_stats: self._accumulate(ce, kd.detach(), p)

    def after_batch(self): self.partner_logits = self.partner_seen = None

    # ---- statistics -------------------------------------------------------------------------------
    @torch.no_grad()
    def _accumulate(self, ce, kd, p):
        b = p.shape[0]
        seen = self.partner_seen.to(p.device)
        ent = (softened_entropy(p, self.temp) * seen).sum()
        self.accumulate(torch.stack([ce.float() * b, kd.float() * b, seen.float().sum(), ent,
                                     torch.tensor(float(b), device=p.device)]))

    def summarize(self, s: list) -> dict:
        "Means over this epoch's anchors: CE, KD, fraction of partners with a stored prediction, their entropy at T."
        n = max(s[4], 1.0)
        return dict(train_ce=s[0] / n, train_kd=s[1] / n, partner_seen=s[2] / n, partner_entropy=s[3] / max(s[2], 1.0))
