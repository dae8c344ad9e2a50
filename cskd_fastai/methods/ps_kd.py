"""PS-KD (Kim, Ji, Yoon, Hwang, ICCV 2021): targets refined by the model's own last-epoch predictions (`PSKD`)."""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from .base import MethodBase, register

__all__ = ["PSKDMethod"]


@register
class PSKDMethod(MethodBase):
    "α_T (0.8 in the paper) and the dtype of the per-sample prediction store (float16 halves its N × C memory)."
    name: Literal["ps_kd"] = "ps_kd"
    alpha_T: float = Field(0.8, ge=0, le=1, description="final weight of the last-epoch prediction in the target")
    store: Literal["float32", "float16"] = "float32"

    needs_ids: ClassVar[bool] = True

    def base_label(self) -> str: return f"pskd-a{self.alpha_T:g}" + ("-fp16" if self.store == "float16" else "")
    def facts(self) -> dict: return dict(alpha_T=self.alpha_T, store=self.store)

    def method_callbacks(self, n_epochs: int) -> list:
        import torch
        from ..callbacks.ps_kd import PSKD
        return [PSKD(self.alpha_T, store_dtype=getattr(torch, self.store))]
