"""Training methods, one small module each: a pydantic config (the recipe's `methods:` entries, told apart by
`name`) and what the method adds to a learner (`loss_func`, `callbacks`, `paired`, `needs_ids`, `facts`).

Adding a method: a module with a `@register`ed `MethodBase` subclass (its own `name: Literal[...]`), imported
below, plus its tests and a recipe entry; `Method` (the recipes' tagged union) is built from the registry. `train.py`, the app, `compare` and `analyze` ask the method object; none of them
compares names."""
from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from .base import METHODS, MethodBase, register
from .ce import CE
from .cskd import CSKDMethod
from .cskd_stored import StoredCSKDMethod
from .label_smoothing import LabelSmoothing
from .ps_kd import PSKDMethod
from .tf_kd import TfKDMethod

__all__ = ["Method", "METHODS", "MethodBase", "register", "CE", "LabelSmoothing", "CSKDMethod", "StoredCSKDMethod", "PSKDMethod", "TfKDMethod"]

Method = Annotated[Union[tuple(METHODS.values())], Field(discriminator="name")]   # type: ignore[valid-type]
