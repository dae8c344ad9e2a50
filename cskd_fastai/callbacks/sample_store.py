"""What PS-KD and CS-KD with stored partners share: loaders that carry each item's dataset index, and an N x C
store of per-sample values (with a seen mask) on the training device, checkpointed with the callback.

Under multi-process training (DDP) each rank trains on its own slice of every epoch, and the slices change from epoch
to epoch: a rank's store would only know the samples it happened to see. `write_store` therefore all-gathers each
step's (ids, values) from every rank, so all ranks hold the same store, the one a single process would hold (two
small collectives per step: B x C numbers per rank)."""
from __future__ import annotations

import torch
import torch.distributed as dist
from fastai.data.core import DataLoaders

from ..loaders import IndexedDL

__all__ = ["SampleStoreMixin", "check_store_dtype", "gather_rows"]


def check_store_dtype(dtype: torch.dtype) -> torch.dtype:
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"store_dtype must be float32, float16 or bfloat16, got {dtype}")
    return dtype


def gather_rows(idx: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    "Every rank's (ids, rows) of this step, concatenated in rank order; the inputs themselves outside a process group."
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1): return idx, values
    w = dist.get_world_size()
    n = torch.tensor([len(idx)], device=values.device)
    sizes = [torch.zeros_like(n) for _ in range(w)]
    dist.all_gather(sizes, n)                                     # batches may differ in size: pad to the largest
    m = int(max(int(k) for k in sizes))
    pi = torch.zeros(m, dtype=torch.long, device=values.device); pi[:len(idx)] = idx.to(values.device)
    pv = values.new_zeros((m, *values.shape[1:])); pv[:len(idx)] = values
    gi, gv = [torch.empty_like(pi) for _ in range(w)], [torch.empty_like(pv) for _ in range(w)]
    dist.all_gather(gi, pi); dist.all_gather(gv, pv)
    return (torch.cat([g[:int(k)] for g, k in zip(gi, sizes)]), torch.cat([g[:int(k)] for g, k in zip(gv, sizes)]))


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

    @torch.no_grad()
    def write_store(self, idx: torch.Tensor, values: torch.Tensor) -> None:
        "Store this step's `values` for samples `idx`, and every other rank's (see the module docstring)."
        idx, values = gather_rows(idx, values.detach())
        idx = idx.to(self.store.device)
        self.store[idx] = values.to(self.store.device, self.store_dtype)
        self.seen[idx] = True

    def state_dict(self) -> dict:
        return {} if self.store is None else dict(store=self.store.cpu(), seen=self.seen.cpu())

    def load_state_dict(self, st: dict) -> None:
        if st: self.store, self.seen = st["store"], st["seen"]
