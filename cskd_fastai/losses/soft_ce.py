"""Cross-entropy against soft targets: the loss of Progressive Self-Knowledge Distillation (Kim, Ji, Yoon, Hwang,
"Self-Knowledge Distillation with Progressive Refinement of Targets", ICCV 2021), whose target is
(1 - α_t)·one-hot + α_t·(the model's own prediction for the sample in the previous epoch)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .precision import at_least_float32

__all__ = ["soft_cross_entropy", "SoftTargetCE"]


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    "Batch mean of -Σ_k t_k log softmax(z)_k; integer targets are one-hot (plain CE)."
    z = at_least_float32(logits)
    if not targets.is_floating_point(): return F.cross_entropy(z, targets.long())
    return -(targets.to(z.dtype) * F.log_softmax(z, dim=1)).sum(1).mean()


class SoftTargetCE(nn.Module):
    "`soft_cross_entropy` as a fastai loss function (decodes and activation as `CrossEntropyLossFlat`)."
    def forward(self, logits: Tensor, targets: Tensor) -> Tensor: return soft_cross_entropy(logits, targets)
    def activation(self, x: Tensor) -> Tensor: return F.softmax(x, dim=-1)
    def decodes(self, x: Tensor) -> Tensor: return x.argmax(dim=-1)
