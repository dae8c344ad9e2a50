"""The class-wise KD term of CS-KD.

Yun, Park, Lee, Shin. "Regularizing Class-wise Predictions via Self-knowledge Distillation", CVPR 2020:
L_cls = T^2 * KL( softmax(partner / T) || softmax(anchor / T) ), averaged over anchors, with the partner
(another sample of the anchor's class, same network) acting as a fixed target: no gradient reaches it.
"""
from __future__ import annotations

from torch import Tensor

from .softened_kl import softened_kl

__all__ = ["class_wise_kd"]


def class_wise_kd(anchor_logits: Tensor, partner_logits: Tensor, temp: float = 4.0) -> Tensor:
    "Batch-mean T²·KL(softmax(partner/T) ‖ softmax(anchor/T)), float32, partner detached."
    return softened_kl(anchor_logits, partner_logits, temp)

