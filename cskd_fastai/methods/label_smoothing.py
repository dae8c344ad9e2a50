"""Label smoothing (Szegedy et al., CVPR 2016): cross-entropy against (1 - ε)·one-hot + ε/C."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import MethodBase, register

__all__ = ["LabelSmoothing"]


@register
class LabelSmoothing(MethodBase):
    "fastai's `LabelSmoothingCrossEntropyFlat(eps=smoothing)`."
    name: Literal["label_smoothing"] = "label_smoothing"
    smoothing: float = Field(0.1, ge=0, lt=1, description="ε")

    def base_label(self) -> str: return f"ls{self.smoothing:g}"
    def facts(self) -> dict: return dict(smoothing=self.smoothing)

    def loss_func(self):
        from fastai.losses import LabelSmoothingCrossEntropyFlat
        return LabelSmoothingCrossEntropyFlat(eps=self.smoothing)
