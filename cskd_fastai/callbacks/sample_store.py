"""What PS-KD and CS-KD with stored partners share: loaders that carry each item's dataset index, and an N x C
store of per-sample values (with a seen mask) on the training device, checkpointed with the callback."""
from __future__ import annotations

import torch
from fastai.data.core import DataLoaders

from ..data import IndexedDL

__all__ = ["SampleStoreMixin", "check_store_dtype"]


def check_store_dtype(dtype: torch.dtype) -> torch.dtype:
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"store_dtype must be float32, float16 or bfloat16, got {dtype}")
    return dtype


class SampleStoreMixin:
    "For a `Callback` with `store_dtype`: `_index_loaders()` and `_ensure_store()` in `before_fit`; `store`, `seen`."
    store = seen = None

    def _index_loaders(self):
        "Make the training loader an `IndexedDL` for this fit (items end with their dataset index); returns the old dls."
        dls = self.learn.dls
        if not isinstance(dls.train, IndexedDL):
            self.learn.dls = DataLoaders(IndexedDL.from_dl(dls.train), *dls.loaders[1:], path=dls.path, device=dls.device)
        return dls

    def _ensure_store(self) -> None:
        "An N x C store sized for this training set, kept across fits (and restored on --resume) when it fits."
        n, c = len(self.learn.dls.train_ds), int(self.learn.dls.c)
        dev = self.learn.dls.device or "cpu"
        if self.store is None or self.store.shape != (n, c):
            self.store = torch.zeros(n, c, dtype=self.store_dtype, device=dev)
            self.seen = torch.zeros(n, dtype=torch.bool, device=dev)
        self.store, self.seen = self.store.to(dev), self.seen.to(dev)

    def state_dict(self) -> dict:
        return {} if self.store is None else dict(store=self.store.cpu(), seen=self.seen.cpu())

    def load_state_dict(self, st: dict) -> None:
        if st: self.store, self.seen = st["store"], st["seen"]
