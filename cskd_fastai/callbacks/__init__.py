"Training callbacks that make a method: CS-KD (`cskd_fastai.callback`), PS-KD, teacher KD."
from ..callback import CSKD, warmup_schedule
from ..teacher import TeacherKD
from .memory import ReleaseMemory
from .pskd import PSKD

__all__ = ["CSKD", "PSKD", "ReleaseMemory", "TeacherKD", "warmup_schedule"]
