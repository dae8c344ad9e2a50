"""Entropy of a softened prediction, and the informativeness 1 - H/log C that gates a KD term by its target."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .precision import at_least_float32

__all__ = ["softened_entropy", "informativeness"]


def softened_entropy(logits: Tensor, temp: float = 1.0) -> Tensor:
    "Per-sample entropy H(softmax(logits/T)) in nats, in at least float32, `logits` detached."
    lp = F.log_softmax(at_least_float32(logits.detach()) / temp, -1)
    return -(lp.exp() * lp).sum(-1)


def informativeness(target_logits: Tensor, temp: float) -> Tensor:
    "Per-sample 1 - H(softmax(target/T)) / log C in [0, 1]: 0 for a uniform target, 1 for a one-hot one."
    h = softened_entropy(target_logits, temp)
    return (1 - h / torch.log(torch.tensor(float(target_logits.shape[-1]), dtype=h.dtype, device=h.device))).clamp(0, 1)
