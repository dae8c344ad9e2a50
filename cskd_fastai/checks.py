"""Every argument rule of the package in one leaf module (no torch, no fastai, no package import): the recipe
configs, the callbacks and the losses call the same functions, so a value refused in Python is refused in a recipe
with the same words, and a value one place accepts no other place refuses."""
from __future__ import annotations

import math
import re
from typing import Callable, Optional

__all__ = ["safe_component", "check_number", "check_temp", "check_weight", "check_fraction", "check_open_unit",
           "check_flag"]

_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=-]{0,99}")


def safe_component(s) -> Optional[str]:
    """`s` if it is one safe path component (letters, digits, `_ . + = -`, not starting with a dot, no `..`), else
    None. Recipe names and method labels become folders under --out: they must never climb out of it."""
    return s if isinstance(s, str) and _COMPONENT.fullmatch(s) and ".." not in s else None


def _finite(x) -> Optional[float]:
    "`x` as a float if it is a finite real number (a bool is not one), else None."
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x): return None
    return float(x)


def _rule(ok: Callable[[float], bool], what: str):
    def check(x, name: str, hint: str = "") -> float:
        v = _finite(x)
        if v is None or not ok(v):
            raise ValueError(f"{name} must be {what}{f' ({hint})' if hint else ''}, got {x!r}")
        return v
    check.__doc__ = f"`x` as a float if it is {what}; one `ValueError` line naming `name` (and `hint`) otherwise."
    return check


check_number = _rule(lambda v: True, "a finite number")
_nonneg = _rule(lambda v: v >= 0, "a finite number >= 0")
_positive = _rule(lambda v: v > 0, "a finite number > 0")
check_fraction = _rule(lambda v: 0 <= v <= 1, "a number in [0, 1]")
check_open_unit = _rule(lambda v: 0 < v < 1, "a number in (0, 1)")


def check_weight(w, name: str = "lam", hint: str = "") -> float:
    "A loss weight: a finite number >= 0."
    return _nonneg(w, name, hint)


def check_temp(temp, name: str = "temp", hint: str = "the paper uses 4") -> float:
    "One rule for every temperature of every method: a finite number > 0."
    return _positive(temp, name, hint)


def check_flag(x, name: str) -> bool:
    if not isinstance(x, bool): raise ValueError(f"{name} must be True or False, got {x!r}")
    return x
