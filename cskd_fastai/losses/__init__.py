"Loss terms, one small file per concern (timm style)."
from .class_kd import KD_TERMS, class_wise_kd, decoupled_term, gated_term, plain_term
from .decoupled import decoupled_kd, tckd_nckd
from .entropy import informativeness, softened_entropy
from .soft_ce import SoftTargetCE, soft_cross_entropy
from .softened_kl import softened_kl
from .teacher_kd import teacher_kd
from .tf_kd import TfKDLoss, designed_teacher, tf_kd_loss

__all__ = ["class_wise_kd", "KD_TERMS", "plain_term", "gated_term", "decoupled_term", "softened_kl", "teacher_kd", "decoupled_kd", "informativeness", "softened_entropy",
           "tckd_nckd", "SoftTargetCE", "soft_cross_entropy", "TfKDLoss", "designed_teacher", "tf_kd_loss"]
