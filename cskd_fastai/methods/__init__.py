"""Training methods, one small module each: a pydantic config (the recipe's `methods:` entries, told apart by
`name`) and what the method adds to a learner (`loss_func`, `callbacks`, `paired`, `needs_ids`, `facts`).

Adding a method: a module with a `MethodBase` subclass (its own `name: Literal[...]`), listed in `Method` below,
plus its tests and a recipe entry. `train.py`, the app, `compare` and `analyze` ask the method object; none of them
compares names."""
from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from .base import MethodBase
from .ce import CE
from .cskd import CSKDMethod
from .cskd_stored import StoredCSKDMethod
from .label_smoothing import LabelSmoothing
from .ps_kd import PSKDMethod
from .tf_kd import TfKDMethod

__all__ = ["Method", "METHODS", "MethodBase", "CE", "LabelSmoothing", "CSKDMethod", "StoredCSKDMethod", "PSKDMethod", "TfKDMethod"]

METHODS = (CE, LabelSmoothing, CSKDMethod, StoredCSKDMethod, PSKDMethod, TfKDMethod)
Method = Annotated[Union[CE, LabelSmoothing, CSKDMethod, StoredCSKDMethod, PSKDMethod, TfKDMethod], Field(discriminator="name")]
