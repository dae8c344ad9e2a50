"""Standard knowledge distillation from a fixed teacher (Hinton, Vinyals, Dean, 2015), used beside CS-KD."""
from __future__ import annotations

from torch import Tensor

from .softened_kl import softened_kl

__all__ = ["teacher_kd"]


def teacher_kd(student_logits: Tensor, teacher_logits: Tensor, temp: float = 4.0) -> Tensor:
    "Batch-mean T²·KL(softmax(teacher/T) ‖ softmax(student/T)), float32, teacher detached."
    return softened_kl(student_logits, teacher_logits, temp)
