"""The class-wise KD term of CS-KD.

Yun, Park, Lee, Shin. "Regularizing Class-wise Predictions via Self-knowledge Distillation", CVPR 2020:
L_cls = T^2 * KL( softmax(partner / T) || softmax(anchor / T) ), averaged over anchors, with the partner
(another sample of the anchor's class, same network) acting as a fixed target: no gradient reaches it.
"""
from __future__ import annotations

from torch import Tensor

from .decoupled import tckd_nckd
from .entropy import informativeness
from .softened_kl import softened_kl, softened_kl_per_sample

__all__ = ["class_wise_kd", "plain_term", "gated_term", "decoupled_term", "KD_TERMS"]


def class_wise_kd(anchor_logits: Tensor, partner_logits: Tensor, temp: float = 4.0) -> Tensor:
    "Batch-mean T²·KL(softmax(partner/T) ‖ softmax(anchor/T)), float32, partner detached."
    return softened_kl(anchor_logits, partner_logits, temp)



# ---- the class-wise KD terms, one signature: (anchor, partner, labels, temp) -> per-anchor values -------------
# (fasterai's `distill/` style: the callback holds one of these and means it over anchors; `cskd_fastai.variants`)
def plain_term(anchor_logits: Tensor, partner_logits: Tensor, labels: Tensor, temp: float) -> Tensor:
    "Per anchor T²·KL(softmax(partner/T) ‖ softmax(anchor/T)): the published term (its mean is `class_wise_kd`)."
    return softened_kl_per_sample(anchor_logits, partner_logits, temp)


def gated_term(anchor_logits: Tensor, partner_logits: Tensor, labels: Tensor, temp: float) -> Tensor:
    "The plain term times the partner's informativeness 1 - H(softmax(partner/T))/log C (this project's variant)."
    return informativeness(partner_logits, temp) * softened_kl_per_sample(anchor_logits, partner_logits, temp)


def decoupled_term(anchor_logits: Tensor, partner_logits: Tensor, labels: Tensor, temp: float,
                   tckd_weight: float = 0.0, nckd_weight: float = 1.0) -> Tensor:
    "Per anchor T²·(tckd_weight·TCKD + nckd_weight·NCKD) of the same KL (DKD, Zhao et al., CVPR 2022)."
    tckd, nckd, _ = tckd_nckd(anchor_logits, partner_logits, labels, temp)
    return (tckd_weight * tckd + nckd_weight * nckd) * temp ** 2


KD_TERMS = {"plain": plain_term, "gated": gated_term, "decoupled": decoupled_term}
