"""The distillation term shared by CS-KD and teacher KD (Hinton, Vinyals, Dean, 2015)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .precision import at_least_float32

__all__ = ["softened_kl", "softened_kl_per_sample"]


def softened_kl(student_logits: Tensor, target_logits: Tensor, temp: float = 4.0) -> Tensor:
    "Batch-mean T²·KL(softmax(target/T) ‖ softmax(student/T)) in at least float32; `target_logits` is detached."
    return softened_kl_per_sample(student_logits, target_logits, temp).mean()   # mean over rows ('batchmean')


def softened_kl_per_sample(student_logits: Tensor, target_logits: Tensor, temp: float = 4.0) -> Tensor:
    "Per-sample T²·KL(softmax(target/T) ‖ softmax(student/T)) in at least float32; its mean is `softened_kl`."
    if student_logits.shape != target_logits.shape:
        raise ValueError(f"student and target logits must have the same shape, got "
                         f"{tuple(student_logits.shape)} and {tuple(target_logits.shape)}")
    log_s = F.log_softmax(at_least_float32(student_logits) / temp, dim=-1)
    log_t = F.log_softmax(at_least_float32(target_logits.detach()) / temp, dim=-1)
    # sum over classes; T² keeps gradient magnitudes independent of T
    return (log_t.exp() * (log_t - log_s)).sum(-1) * temp ** 2
