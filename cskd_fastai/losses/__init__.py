"Loss terms, one small file per concern (timm style)."
from .class_kd import class_wise_kd
from .decoupled import decoupled_kd, tckd_nckd
from .entropy import informativeness, softened_entropy
from .soft_ce import SoftTargetCE, soft_cross_entropy
from .softened_kl import softened_kl
from .teacher_kd import teacher_kd
from .tf_kd import TfKDLoss, designed_teacher, tf_kd_loss

__all__ = ["class_wise_kd", "softened_kl", "teacher_kd", "decoupled_kd", "informativeness", "softened_entropy",
           "tckd_nckd", "SoftTargetCE", "soft_cross_entropy", "TfKDLoss", "designed_teacher", "tf_kd_loss"]
