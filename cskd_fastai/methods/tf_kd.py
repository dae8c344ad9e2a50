"""Tf-KD_reg (Yuan, Tay, Li, Wang, Feng, CVPR 2020): KD towards a hand-designed teacher (`losses.tf_kd`)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ..checks import check_temp
from .base import MethodBase, register

__all__ = ["TfKDMethod"]


@register
class TfKDMethod(MethodBase):
    "a (probability of the true class in the designed teacher), its softening temperature and the KD weight α."
    name: Literal["tf_kd"] = "tf_kd"
    a: float = Field(0.9, gt=0, lt=1, description="designed teacher's probability of the true class")
    temp: float = Field(20.0, description="temperature of the designed teacher's softmax")
    alpha: float = Field(0.1, ge=0, le=1, description="weight of the KD term (1 - alpha on CE)")

    _temp_ok = field_validator("temp")(classmethod(lambda cls, v: check_temp(v, hint="the paper uses 20")))

    def base_label(self) -> str: return f"tfkd-a{self.a:g}-T{self.temp:g}-w{self.alpha:g}"
    def facts(self) -> dict: return dict(a=self.a, temp=self.temp, alpha=self.alpha)

    def loss_func(self):
        from ..losses import TfKDLoss
        return TfKDLoss(self.a, self.temp, self.alpha)
