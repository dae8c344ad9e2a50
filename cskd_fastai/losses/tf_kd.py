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

__all__ = ["designed_teacher", "tf_kd_loss", "TfKDLoss"]


def designed_teacher(labels: Tensor, n_classes: int, a: float = 0.9) -> Tensor:
    "p_d: `a` on the true class, (1 - a)/(K - 1) elsewhere."
    p = torch.full((labels.shape[0], n_classes), (1 - a) / max(n_classes - 1, 1), device=labels.device)
    return p.scatter(1, labels.long()[:, None], a)


def tf_kd_loss(logits: Tensor, labels: Tensor, a: float = 0.9, temp: float = 20.0, alpha: float = 0.1) -> Tensor:
    "(1 - alpha)·CE + alpha·KL_batchmean(softmax(p_d/T) ‖ softmax(logits)), in at least float32."
    z = logits.to(torch.promote_types(logits.dtype, torch.float32))
    teacher = F.softmax(designed_teacher(labels, z.shape[1], a).to(z.dtype) / temp, dim=1)
    kd = F.kl_div(F.log_softmax(z, dim=1), teacher, reduction="batchmean")
    return (1 - alpha) * F.cross_entropy(z, labels.long()) + alpha * kd


class TfKDLoss(nn.Module):
    "`tf_kd_loss` as a fastai loss function (composes with MixUp/CutMix, which mix two such losses)."
    def __init__(self, a: float = 0.9, temp: float = 20.0, alpha: float = 0.1):
        super().__init__()
        self.a, self.temp, self.alpha = a, temp, alpha
    def forward(self, logits: Tensor, labels: Tensor) -> Tensor: return tf_kd_loss(logits, labels, self.a, self.temp, self.alpha)
    def activation(self, x: Tensor) -> Tensor: return F.softmax(x, dim=-1)
    def decodes(self, x: Tensor) -> Tensor: return x.argmax(dim=-1)
