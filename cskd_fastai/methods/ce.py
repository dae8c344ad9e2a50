"""Plain cross-entropy: the baseline every other method is compared with."""
from __future__ import annotations

from typing import Literal

from .base import MethodBase, register

__all__ = ["CE"]


@register
class CE(MethodBase):
    "Cross-entropy on one-hot labels."
    name: Literal["ce"] = "ce"
