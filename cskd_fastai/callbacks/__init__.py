"Training callbacks that make a method: CS-KD (`cskd_fastai.callback`), CS-KD with stored partners, PS-KD, teacher KD."
from ..callback import CSKD, warmup_schedule
from ..teacher import TeacherKD
from .memory import ReleaseMemory
from .pskd import PSKD
from .stored_cskd import StoredCSKD

__all__ = ["CSKD", "PSKD", "ReleaseMemory", "StoredCSKD", "TeacherKD", "warmup_schedule"]
