"""Teacher-free KD, the regularisation form Tf-KD_reg (Yuan, Tay, Li, Wang, Feng, "Revisiting Knowledge Distillation
via Label Smoothing Regularization", CVPR 2020): distil from a hand-designed teacher that puts probability `a` on
the true class and (1 - a)/(K - 1) on each other class.

    loss = (1 - alpha) · CE(z, y) + alpha · KL(softmax(p_d / T) ‖ softmax(z))

As in the authors' code (`loss_kd_regularization`): the teacher is the designed *distribution* p_d softened by a
softmax at temperature T (T = 20 for ResNet-18), the student is not softened, and the KL is a batch mean (their
`KLDivLoss()` averages over batch and classes and multiplies by 100, which is the batch mean for 100 classes).
Defaults: a = 0.9 (the paper's; the code ships 0.99), T = 20, alpha = 0.1 (their ResNet-18 setting).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_fraction, check_open_unit, check_temp
from .precision import at_least_float32

__all__ = ["designed_teacher", "tf_kd_loss", "TfKDLoss"]


def designed_teacher(labels: Tensor, n_classes: int, a: float = 0.9, dtype: torch.dtype = torch.float32) -> Tensor:
    "p_d: `a` on the true class, (1 - a)/(K - 1) elsewhere."
    p = torch.full((labels.shape[0], n_classes), (1 - a) / max(n_classes - 1, 1), device=labels.device, dtype=dtype)
    return p.scatter(1, labels.long()[:, None], a)


def tf_kd_loss(logits: Tensor, labels: Tensor, a: float = 0.9, temp: float = 20.0, alpha: float = 0.1,
               reduction: str = "mean") -> Tensor:
    """(1 - alpha)·CE + alpha·KL(softmax(p_d/T) ‖ softmax(logits)) per sample, in at least float32, then the batch
    mean (`reduction='mean'`), sum or none (MixUp/CutMix ask for per-sample losses)."""
    z = at_least_float32(logits)
    teacher = F.softmax(designed_teacher(labels, z.shape[1], a, z.dtype) / temp, dim=1)
    kd = (teacher * (teacher.log() - F.log_softmax(z, dim=1))).sum(1)
    per = (1 - alpha) * F.cross_entropy(z, labels.long(), reduction="none") + alpha * kd
    return per.mean() if reduction == "mean" else per.sum() if reduction == "sum" else per


class TfKDLoss(nn.Module):
    "`tf_kd_loss` as a fastai loss function (composes with MixUp/CutMix, which mix two such losses)."
    y_int = True   # MixUp/CutMix: mix the losses of the two labels, never the integer labels themselves
    def __init__(self, a: float = 0.9, temp: float = 20.0, alpha: float = 0.1):
        super().__init__()
        self.a = check_open_unit(a, "a", "the designed teacher's probability of the true class")
        self.temp, self.alpha = check_temp(temp, hint="the paper uses 20"), check_fraction(alpha, "alpha", "the KD weight")
    def forward(self, logits: Tensor, labels: Tensor, reduction: str = "mean") -> Tensor:
        return tf_kd_loss(logits, labels, self.a, self.temp, self.alpha, reduction)
    def activation(self, x: Tensor) -> Tensor: return F.softmax(x, dim=-1)
    def decodes(self, x: Tensor) -> Tensor: return x.argmax(dim=-1)
