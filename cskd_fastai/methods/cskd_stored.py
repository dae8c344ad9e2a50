"""CS-KD with stored partner predictions (`callbacks.cskd_stored.StoredCSKD`): the class-wise target at CE's cost."""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from .base import register
from .cskd import ClassWiseKDFields

__all__ = ["StoredCSKDMethod"]


@register
class StoredCSKDMethod(ClassWiseKDFields):
    "λ, T, the informativeness gate and the store's dtype; partners' logits come from the store, not a second pass."
    name: Literal["cskd_stored"] = "cskd_stored"
    gated: bool = Field(True, description="scale each anchor's term by 1 - H(partner at T)/log C")
    store: Literal["float32", "float16"] = "float32"

    needs_ids: ClassVar[bool] = True        # the store is indexed by dataset position
    mixable: ClassVar[bool] = False         # a mixed image's prediction is no prediction of the stored sample

    def base_label(self) -> str:
        return (f"cskd-lam{self.lam:g}-T{self.temp:g}-stored" + ("-gated" if self.gated else "")
                + ("-fp16" if self.store == "float16" else ""))

    def facts(self) -> dict: return dict(lam=self.lam, temp=self.temp, gated=self.gated, store=self.store)

    def method_callbacks(self, n_epochs: int) -> list:
        import torch
        from ..callbacks.cskd_stored import StoredCSKD
        return [StoredCSKD(self.lam, self.temp, gated=self.gated, store_dtype=getattr(torch, self.store))]
