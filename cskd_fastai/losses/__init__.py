"Loss terms, one small file per concern (timm style)."
from .class_kd import ClassWiseKDLoss, class_wise_kd
from .softened_kl import softened_kl
from .teacher_kd import teacher_kd

__all__ = ["ClassWiseKDLoss", "class_wise_kd", "softened_kl", "teacher_kd"]
