"""What every training method of a recipe shares: its pydantic config (strict: a key another method owns is
refused), its run label, and what it contributes to the learner (loss, callbacks, paired batches, sample ids)."""
from __future__ import annotations

from typing import ClassVar, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["Strict", "MethodBase", "check_temp", "check_weight", "safe_component"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def safe_component(s) -> Optional[str]:
    """`s` if it is one safe path component (letters, digits, `_ . + = -`, not starting with a dot, no `..`), else
    None. Recipe names and method labels become folders under --out: they must never climb out of it."""
    import re
    return s if isinstance(s, str) and re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.+=-]{0,99}", s) and ".." not in s else None


def check_temp(temp) -> float:
    "One place for every temperature of every method: a finite number > 0."
    import math
    if isinstance(temp, bool) or not isinstance(temp, (int, float)) or not math.isfinite(temp) or temp <= 0:
        raise ValueError(f"temp must be a finite number > 0 (the paper uses 4), got {temp!r}")
    return float(temp)


def check_weight(w, name: str = "lam") -> float:
    import math
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {w!r}")
    return float(w)


class MethodBase(Strict):
    """Fields every method has: a run label, MixUp/CutMix, and standard KD from a teacher run beside it."""
    label: Optional[str] = Field(None, description="name of this method's runs (default derived)")
    mix: Optional[str] = Field(None, description="mixup or cutmix, applied to the (anchor) batch")
    mix_alpha: float = Field(1.0, gt=0)
    teacher: Optional[str] = Field(None, description="run dir of an exported teacher: adds standard KD")
    teacher_weight: float = Field(1.0, ge=0)
    teacher_temp: float = Field(4.0, gt=0)

    paired: ClassVar[bool] = False       # batches of B anchors + B same-class partners (PairedDL)
    needs_ids: ClassVar[bool] = False    # each sample's dataset index travels with its label (per-sample state, e.g. PS-KD)
    mixable: ClassVar[bool] = True       # composes with MixUp/CutMix
    class_partners: ClassVar[bool] = False   # each anchor is distilled from a same-class partner (CS-KD and variants)

    @field_validator("label")
    @classmethod
    def _label_safe(cls, v):
        if v is not None and safe_component(v) is None:
            raise ValueError("expected one folder name: letters, digits and _ . + = - (no '/', no '..', no leading dot)")
        return v

    @field_validator("mix")
    @classmethod
    def _mix_known(cls, v):
        if v not in (None, "mixup", "cutmix"): raise ValueError("expected mixup or cutmix")
        return v

    # ---- what a method is called and what it records ------------------------------------------------------
    def base_label(self) -> str: return self.name   # type: ignore[attr-defined]

    @property
    def run_label(self) -> str:
        if self.label: return self.label
        s = self.base_label()
        if self.mix: s += f"+{self.mix}"
        if self.teacher: s += "+teacher"
        return s

    def facts(self) -> dict:
        "Hyperparameters recorded in metrics.json (beside name, label and mix)."
        return {}

    # ---- what it contributes to training -------------------------------------------------------------------
    def loss_func(self):
        from fastai.losses import CrossEntropyLossFlat
        return CrossEntropyLossFlat()

    def method_callbacks(self, n_epochs: int) -> list:
        "The callbacks that make this method (none for plain CE)."
        return []

    def callbacks(self, n_epochs: int) -> list:
        "This method's callbacks, then MixUp/CutMix and teacher KD when asked for."
        from fastai.callback.mixup import CutMix, MixUp
        from ..teacher import TeacherKD
        if self.mix and not self.mixable:
            raise ValueError(f"method {self.name} does not compose with {self.mix}")   # type: ignore[attr-defined]
        cbs = list(self.method_callbacks(n_epochs))
        if self.mix == "mixup": cbs.append(MixUp(self.mix_alpha))
        if self.mix == "cutmix": cbs.append(CutMix(self.mix_alpha))
        if self.teacher: cbs.append(TeacherKD.from_run(self.teacher, weight=self.teacher_weight, temp=self.teacher_temp))
        return cbs
