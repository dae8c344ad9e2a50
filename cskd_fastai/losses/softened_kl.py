"""The distillation term shared by CS-KD and teacher KD (Hinton, Vinyals, Dean, 2015)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["softened_kl", "softened_kl_per_sample"]


def softened_kl(student_logits: Tensor, target_logits: Tensor, temp: float = 4.0) -> Tensor:
    "Batch-mean T²·KL(softmax(target/T) ‖ softmax(student/T)) in at least float32; `target_logits` is detached."
    if student_logits.shape != target_logits.shape:
        raise ValueError(f"student and target logits must have the same shape, got "
                         f"{tuple(student_logits.shape)} and {tuple(target_logits.shape)}")
    dt = torch.promote_types(student_logits.dtype, torch.float32)  # fp16/bf16 -> fp32; fp64 stays fp64
    log_s = F.log_softmax(student_logits.to(dt) / temp, dim=-1)
    log_t = F.log_softmax(target_logits.detach().to(dt) / temp, dim=-1)
    # sum over classes, mean over rows ('batchmean'); T^2 keeps gradient magnitudes independent of T
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * temp ** 2


def softened_kl_per_sample(student_logits: Tensor, target_logits: Tensor, temp: float = 4.0) -> Tensor:
    "Per-sample T²·KL(softmax(target/T) ‖ softmax(student/T)) in at least float32; its mean is `softened_kl`."
    dt = torch.promote_types(student_logits.dtype, torch.float32)
    log_s = F.log_softmax(student_logits.to(dt) / temp, dim=-1)
    log_t = F.log_softmax(target_logits.detach().to(dt) / temp, dim=-1)
    return (log_t.exp() * (log_t - log_s)).sum(-1) * temp ** 2
