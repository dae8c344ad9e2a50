"""Training callbacks that make a method: CS-KD, CS-KD with stored partners, PS-KD, teacher KD (the KD callbacks share
`base.KDCallback`), and the run protocol's callbacks (`protocol`, `memory`)."""
from .base import KDCallback
from .cskd import CSKD, warmup_schedule
from .teacher import TeacherKD
from .memory import ReleaseMemory
from .ps_kd import PSKD
from .cskd_stored import StoredCSKD

__all__ = ["KDCallback", "CSKD", "PSKD", "ReleaseMemory", "StoredCSKD", "TeacherKD", "warmup_schedule"]
