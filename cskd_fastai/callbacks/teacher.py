"""Standard knowledge distillation from an exported teacher, usable beside CS-KD (the paper's Table 6 setting)."""
from __future__ import annotations

import torch
from fastai.callback.mixup import MixUp

from ..checks import check_temp, check_weight
from ..losses import teacher_kd
from .base import KDCallback

__all__ = ["TeacherKD"]


class TeacherKD(KDCallback):
    "Adds weight·T²·KL(teacher ‖ student) on the anchors; the teacher runs in eval mode under no_grad."
    order = MixUp.order + 1   # after CSKD's split and MixUp: the teacher sees the student's input

    def __init__(self, teacher: torch.nn.Module, teacher_classes=None, weight: float = 1.0, temp: float = 4.0):
        check_temp(temp); check_weight(weight, "teacher weight")
        self.teacher, self.teacher_classes, self.weight, self.temp = teacher.eval(), teacher_classes, weight, temp

    def prepare_fit(self):
        vocab = getattr(self.dls, "vocab", None)
        if self.teacher_classes is not None and vocab is not None and list(map(str, vocab)) != list(map(str, self.teacher_classes)):
            diff = sorted(set(map(str, vocab)) ^ set(map(str, self.teacher_classes)))[:3]
            raise ValueError(f"teacher classes differ from the data's ({len(self.teacher_classes)} vs {len(vocab)} "
                             f"classes, e.g. {diff or 'same names, other order'}); use a teacher trained on the same classes")
        self.teacher.to(self.dls.device if self.dls.device is not None else "cpu")

    def after_pred(self):
        self.teacher.eval()
        with torch.no_grad(): self.teacher_pred = self.teacher(*self.xb)

    def after_loss(self):
        self.add_kd(teacher_kd(self.pred, self.teacher_pred, self.temp), self.weight)
        self.teacher_pred = None
