"""CS-KD with stored partner predictions (`callbacks.stored_cskd.StoredCSKD`): the class-wise target at CE's cost."""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from .base import MethodBase, check_temp, check_weight

__all__ = ["StoredCSKDMethod"]


class StoredCSKDMethod(MethodBase):
    "λ, T, the informativeness gate and the store's dtype; partners' logits come from the store, not a second pass."
    name: Literal["cskd_stored"] = "cskd_stored"
    lam: float = Field(1.0, description="weight λ of the class-wise KD term (>= 0)")
    temp: float = Field(4.0, description="temperature T (> 0)")
    gated: bool = Field(True, description="scale each anchor's term by 1 - H(partner at T)/log C")
    store: Literal["float32", "float16"] = "float32"

    needs_ids: ClassVar[bool] = True        # the store is indexed by dataset position
    class_partners: ClassVar[bool] = True   # every anchor gets a same-class partner (check classes, warn on singletons)
    mixable: ClassVar[bool] = False         # a mixed image's prediction is no prediction of the stored sample

    _lam_ok = field_validator("lam")(classmethod(lambda cls, v: check_weight(v, "lam")))
    _temp_ok = field_validator("temp")(classmethod(lambda cls, v: check_temp(v)))

    def base_label(self) -> str:
        return (f"cskd-lam{self.lam:g}-T{self.temp:g}-stored" + ("-gated" if self.gated else "")
                + ("-fp16" if self.store == "float16" else ""))

    def facts(self) -> dict: return dict(lam=self.lam, temp=self.temp, gated=self.gated, store=self.store)

    def method_callbacks(self, n_epochs: int) -> list:
        import torch
        from ..callbacks.stored_cskd import StoredCSKD
        return [StoredCSKD(self.lam, self.temp, gated=self.gated, store_dtype=getattr(torch, self.store))]
