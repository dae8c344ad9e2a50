"""CS-KD (Yun, Park, Lee, Shin, CVPR 2020): paired batches and the `CSKD` callback, the published loss by default."""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from ..checks import check_temp, check_weight
from ..variants import VARIANTS
from .base import MethodBase, register

__all__ = ["CSKDMethod", "ClassWiseKDFields"]

PAIRED_VARIANTS = tuple(n for n, v in VARIANTS.items() if v.partners != "store")


class ClassWiseKDFields(MethodBase):
    "λ and T of a class-wise KD term (CS-KD and its stored-partner form), checked by the one rule of `checks`."
    lam: float = Field(1.0, description="CS-KD weight λ (>= 0)")
    temp: float = Field(4.0, description="CS-KD temperature T (> 0)")
    class_partners: ClassVar[bool] = True   # every anchor gets a same-class partner (check classes, warn on singletons)

    _lam_ok = field_validator("lam")(classmethod(lambda cls, v: check_weight(v, "lam")))
    _temp_ok = field_validator("temp")(classmethod(lambda cls, v: check_temp(v)))


@register
class CSKDMethod(ClassWiseKDFields):
    "λ, T and λ warm-up of the published loss; `variant` selects one of this project's variants (see `CSKD`)."
    name: Literal["cskd"] = "cskd"
    lam_warmup: float = Field(0.0, ge=0, le=1, description="linear warm-up of λ over this fraction of training")
    variant: Literal[PAIRED_VARIANTS] = Field("published", description="a CS-KD form with paired partners "
                                              "(cskd_fastai.variants; the stored form is `name: cskd_stored`)")
    tckd_weight: float = Field(0.0, ge=0, description="variant decoupled: weight of the target-class part")
    nckd_weight: float = Field(1.0, ge=0, description="variant decoupled: weight of the non-target part")
    partner_mode: Literal["train", "eval"] = Field("train", description="the partner pass in train mode (as "
                                                   "published) or eval mode (a diagnostic: no dropout, running BN stats)")

    paired: ClassVar[bool] = True

    @model_validator(mode="after")
    def _decoupled_only(self):
        if self.variant != "decoupled" and (self.tckd_weight, self.nckd_weight) != (0.0, 1.0):
            raise ValueError("tckd_weight / nckd_weight only apply to variant: decoupled")
        if self.partner_mode == "eval" and self.variant == "in_batch":
            raise ValueError("partner_mode: eval needs a partner pass; variant in_batch has none")
        return self

    def base_label(self) -> str:
        s = f"cskd-lam{self.lam:g}-T{self.temp:g}" + (f"-wu{self.lam_warmup:g}" if self.lam_warmup else "")
        if self.variant == "decoupled": s += f"-dec{self.tckd_weight:g}-{self.nckd_weight:g}"
        elif self.variant != "published": s += f"-{self.variant.replace('_', '')}"
        return s + ("-peval" if self.partner_mode == "eval" else "")

    def facts(self) -> dict:
        return dict(lam=self.lam, temp=self.temp, lam_warmup=self.lam_warmup, variant=self.variant,
                    **({"partner_mode": "eval"} if self.partner_mode == "eval" else {}),
                    **({"tckd_weight": self.tckd_weight, "nckd_weight": self.nckd_weight} if self.variant == "decoupled" else {}))

    def method_callbacks(self, n_epochs: int) -> list:
        from ..callbacks.cskd import CSKD
        return [CSKD(lam=self.lam, temp=self.temp, lam_warmup=self.lam_warmup, variant=self.variant,
                     tckd_weight=self.tckd_weight, nckd_weight=self.nckd_weight, partner_mode=self.partner_mode)]
