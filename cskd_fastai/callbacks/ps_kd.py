"""Progressive self-knowledge distillation (Kim, Ji, Yoon, Hwang, "Self-Knowledge Distillation with Progressive
Refinement of Targets", ICCV 2021) as a fastai callback.

Each training sample's target is (1 - α_t)·one-hot + α_t·p_{t-1}(x), where p_{t-1}(x) is the model's own softmax
for that sample in the previous epoch (the one-hot label in the first epoch) and α_t = α_T·(t + 1)/T for epoch
t of T (α_T = 0.8), as in the authors' code. The loss is cross-entropy against these soft targets; validation is
plain CE. The store of last-epoch predictions holds N × C numbers: 50k × 100 floats (CIFAR-100) is 20 MB, ImageNet's
1.28M × 1000 is 5.1 GB in float32 or 2.6 GB with `store_dtype=torch.float16` (kept on the training device).

Under multi-process training every rank's store receives every rank's predictions (`SampleStoreMixin.write_store`
all-gathers them each step), so a sample another process saw last epoch still has its prediction.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from fastai.callback.core import Callback
from fastai.callback.mixup import CutMix, MixUp

from ..checks import check_fraction
from ..losses import SoftTargetCE
from .sample_store import SampleStoreMixin, check_store_dtype

__all__ = ["PSKD"]


class PSKD(SampleStoreMixin, Callback):
    "Progressive self-KD: CE against (1 - α_t)·one-hot + α_t·(this sample's prediction in the previous epoch)."
    order, run_valid = min(MixUp.order, CutMix.order) - 1, False   # soft targets exist before MixUp/CutMix mix them

    def __init__(self, alpha_T: float = 0.8, store_dtype: torch.dtype = torch.float32):
        self.alpha_T = check_fraction(alpha_T, "alpha_T", "the paper uses 0.8")
        self.store_dtype = check_store_dtype(store_dtype)
        self._restore = None

    def alpha_at(self, epoch: int, n_epoch: int) -> float: return self.alpha_T * (epoch + 1) / n_epoch

    def before_fit(self):
        self._restore = (self._index_loaders(), self.learn.loss_func)
        self.learn.loss_func = SoftTargetCE()
        self._ensure_store()

    def after_fit(self):
        if self._restore is not None: (self.learn.dls, self.learn.loss_func), self._restore = self._restore, None

    def before_train(self): self.alpha = self.alpha_at(self.epoch, self.n_epoch)

    def before_batch(self):
        *ys, idx = self.yb
        y, idx = ys[0].long(), idx.long().to(self.store.device)
        onehot = F.one_hot(y, self.store.shape[1]).float()
        prev = torch.where(self.seen[idx, None], self.store[idx].float(), onehot.to(self.store.device)).to(onehot.device)
        self.idx = idx
        self.learn.yb = ((1 - self.alpha) * onehot + self.alpha * prev,)

    def after_loss(self): self.write_store(self.idx, F.softmax(self.pred.detach().float(), -1))
