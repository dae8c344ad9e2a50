"""Per-epoch training statistics of a KD callback as fastai metrics, summed over every process under DDP."""
from __future__ import annotations

from functools import partial
from typing import Callable, Iterable

import torch
import torch.distributed as dist
from fastai.learner import ValueMetric

__all__ = ["add_stat_metrics", "remove_stat_metrics", "all_reduce_sum"]


def remove_stat_metrics(learn, owner=None) -> None:
    """Drop the training-statistics metrics added by `owner` (every KD callback's when None); each is flagged
    `cskd_stat` with the callback that added it."""
    learn.metrics = [m for m in learn.metrics if not getattr(m, "cskd_stat", None)
                     or (owner is not None and m.cskd_stat is not owner)]


def add_stat_metrics(learn, stat: Callable[[str], object], keys: Iterable[str], owner=True) -> None:
    """Log `stat(key)` for each key as a fastai `ValueMetric` (Recorder, CSVLogger and progress bars show it),
    replacing any `owner` left from an earlier fit; `remove_stat_metrics` takes them out again."""
    remove_stat_metrics(learn, owner if owner is not True else None)
    mets = [ValueMetric(partial(stat, k), k) for k in keys]
    for m in mets: m.cskd_stat = owner
    learn.metrics = list(learn.metrics) + mets


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    "`t` summed over every process of the group (in place); `t` itself outside distributed training."
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t
