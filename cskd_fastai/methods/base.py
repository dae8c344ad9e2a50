"""What every training method of a recipe shares: its pydantic config (strict: a key another method owns is
refused), its run label, and what it contributes to the learner (loss, callbacks, paired batches, sample ids)."""
from __future__ import annotations

from typing import ClassVar, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..checks import check_temp, check_weight, safe_component

__all__ = ["Strict", "MethodBase", "METHODS", "register"]

# Every method config by its recipe name (`name:`), filled by `@register` as the datasets' loaders are.
METHODS: dict[str, type] = {}


def register(cls):
    "Class decorator: make a `MethodBase` subclass (with its `name: Literal[...]`) a method recipes can name."
    METHODS[cls.model_fields["name"].default] = cls
    return cls


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MethodBase(Strict):
    """Fields every method has: a run label, MixUp/CutMix, and standard KD from a teacher run beside it."""
    label: Optional[str] = Field(None, description="name of this method's runs (default derived)")
    mix: Optional[str] = Field(None, description="mixup or cutmix, applied to the (anchor) batch")
    mix_alpha: float = Field(1.0, description="Beta(α, α) of MixUp/CutMix (> 0)")
    teacher: Optional[str] = Field(None, description="run dir of an exported teacher: adds standard KD")
    teacher_weight: float = Field(1.0, description="weight of the teacher's KD term (>= 0)")
    teacher_temp: float = Field(4.0, description="temperature of the teacher's KD term (> 0)")

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

    _mix_alpha_ok = field_validator("mix_alpha")(classmethod(lambda cls, v: check_temp(v, "mix_alpha", "")))
    _teacher_weight_ok = field_validator("teacher_weight")(classmethod(lambda cls, v: check_weight(v, "teacher_weight")))
    _teacher_temp_ok = field_validator("teacher_temp")(classmethod(lambda cls, v: check_temp(v, "teacher_temp")))

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
        """This method's callbacks, then MixUp/CutMix when asked for (teacher KD is added by `train`, which rebuilds
        the teacher from its run directory: `rebuild.teacher_from_run`)."""
        from fastai.callback.mixup import CutMix, MixUp
        if self.mix and not self.mixable:
            raise ValueError(f"method {self.name} does not compose with {self.mix}")   # type: ignore[attr-defined]
        cbs = list(self.method_callbacks(n_epochs))
        if self.mix == "mixup": cbs.append(MixUp(self.mix_alpha))
        if self.mix == "cutmix": cbs.append(CutMix(self.mix_alpha))
        return cbs
