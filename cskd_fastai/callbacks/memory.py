"""Give freed heap memory back to the operating system while training (glibc's `malloc_trim`).

Why: on CPU, glibc keeps the buffers of freed tensors (batches, activations, gradients) in its heap, and on a long
run it reuses them too poorly to stay level. Measured on cub100 (ResNet-18, 64 px, one DataLoader worker): the
training process grew 200-500 MB per epoch while the tensors Python held stayed at 130 MB; a 100-epoch run reached
19.3 GB and ran the 24 GB machine out of memory at epoch 95. `malloc_trim(0)` after each epoch brought it back to
1.0 GB every time (bench/rss_growth.py, docs/performance.md). Nothing was leaking: the memory was free, just not
returned, so trimming is the fix, not a workaround.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Callable, Optional

from fastai.callback.core import Callback

__all__ = ["ReleaseMemory", "malloc_trim"]


@functools.lru_cache(maxsize=None)
def _libc_trim() -> Optional[Callable[[int], int]]:
    "glibc's `malloc_trim`, or None where there is none (macOS, Windows, musl)."
    try:
        f = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    f.argtypes, f.restype = [ctypes.c_size_t], ctypes.c_int
    return f


def malloc_trim() -> bool:
    "Return the free pages of glibc's heap to the OS; False where this C library has no `malloc_trim` (a no-op)."
    f = _libc_trim()
    return bool(f(0)) if f is not None else False


class ReleaseMemory(Callback):
    """Call `malloc_trim` every `every` training batches and after each epoch, so a long run's resident memory stays
    where its first epochs put it (no-op without glibc). `cskd-fastai train` adds it to every run
    (`train.malloc_trim_every`, 0 turns it off); add it yourself to a Python `fit` on CPU:
    `learn.fit(100, cbs=ReleaseMemory())`. Its cost did not show in cub100 epoch times (docs/performance.md)."""
    order, run_valid = 100, True
    def __init__(self, every: int = 50, trim: Callable[[], object] = malloc_trim):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a whole number of batches >= 1, got {every!r}")
        self.every, self.trim = every, trim
    def after_batch(self):
        if self.training and (self.iter + 1) % self.every == 0: self.trim()
    def after_epoch(self): self.trim()
