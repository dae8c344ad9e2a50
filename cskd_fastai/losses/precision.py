"""The one precision rule of every loss term: compute in at least float32 (fp16/bf16 logits under mixed precision
are upcast, so log-softmax at T = 4 or 20 does not lose the small probabilities; float64 stays float64)."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["at_least_float32"]


def at_least_float32(x: Tensor) -> Tensor: return x.to(torch.promote_types(x.dtype, torch.float32))
