"""Decoupled distillation terms (Zhao, Cui, Song, Qiu, Liang, "Decoupled Knowledge Distillation", CVPR 2022),
applied here to CS-KD's class-wise target (the partner's prediction) instead of a teacher's.

KL(p_t ‖ p_s) at temperature T splits exactly into a target-class part and a non-target part:

    KL(p_t ‖ p_s) = TCKD + (1 - p_t[y]) · NCKD
    TCKD = KL([p_t[y], 1 - p_t[y]] ‖ [p_s[y], 1 - p_s[y]])          (binary: the true class vs the rest)
    NCKD = KL(p_t[¬y] / (1 - p_t[y]) ‖ p_s[¬y] / (1 - p_s[y]))    (the distribution over the wrong classes)

NCKD carries the class similarities ("dark knowledge") CS-KD is after; TCKD is what pulls the anchor's confidence
in its true class towards the partner's, a confidence penalty while partners are still unfit.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .precision import at_least_float32

__all__ = ["tckd_nckd", "decoupled_kd"]


def tckd_nckd(student_logits: Tensor, target_logits: Tensor, labels: Tensor, temp: float) -> tuple[Tensor, Tensor, Tensor]:
    "Per-sample `(TCKD, NCKD, 1 - p_t[y])` at temperature `temp` (no T² factor); the target side is detached."
    zs, zt = at_least_float32(student_logits) / temp, at_least_float32(target_logits.detach()) / temp
    y = labels.long()[:, None]
    ls, lt = F.log_softmax(zs, -1), F.log_softmax(zt, -1)
    ps_y, pt_y = ls.gather(1, y).exp().squeeze(1), lt.gather(1, y).exp().squeeze(1)
    eps = torch.finfo(zs.dtype).tiny
    bs = torch.stack([ps_y, 1 - ps_y], 1).clamp_min(eps).log()
    bt = torch.stack([pt_y, 1 - pt_y], 1).clamp_min(eps)
    tckd = (bt * (bt.log() - bs)).sum(1)
    mask = F.one_hot(labels.long(), zs.shape[1]).bool()
    # the wrong classes' distribution: log-softmax with the true class removed (-inf), as DKD's -1000 mask
    ls_n = F.log_softmax(zs.masked_fill(mask, float("-inf")), -1)
    lt_n = F.log_softmax(zt.masked_fill(mask, float("-inf")), -1)
    pt_n = lt_n.exp()
    nckd = torch.where(mask, torch.zeros_like(pt_n), pt_n * (lt_n - ls_n)).sum(1)
    return tckd, nckd, 1 - pt_y


def decoupled_kd(student_logits: Tensor, target_logits: Tensor, labels: Tensor, temp: float = 4.0,
                 tckd_weight: float = 0.0, nckd_weight: float = 1.0) -> Tensor:
    "Batch-mean T²·(tckd_weight·TCKD + nckd_weight·NCKD); weights (1, 1 - p_t[y] per sample) give back plain KD."
    tckd, nckd, _ = tckd_nckd(student_logits, target_logits, labels, temp)
    return (tckd_weight * tckd + nckd_weight * nckd).mean() * temp ** 2
