"""Training callbacks that make a method: CS-KD, CS-KD with stored partners, PS-KD, teacher KD (the KD callbacks share
`base.KDCallback`), and the run protocol's callbacks (`training`, `memory`)."""
from .base import KDCallback
from .cskd import CSKD, warmup_schedule
from .teacher import TeacherKD
from .memory import ReleaseMemory
from .pskd import PSKD
from .stored_cskd import StoredCSKD

__all__ = ["KDCallback", "CSKD", "PSKD", "ReleaseMemory", "StoredCSKD", "TeacherKD", "warmup_schedule"]
