"Training callbacks that make a method: CS-KD (`cskd_fastai.callback`), PS-KD, teacher KD."
from ..callback import CSKD, warmup_schedule
from ..teacher import TeacherKD
from .pskd import PSKD

__all__ = ["CSKD", "PSKD", "TeacherKD", "warmup_schedule"]
