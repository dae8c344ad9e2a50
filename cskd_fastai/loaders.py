"""Paired-class batches for CS-KD: B anchors followed by B same-class partners.

Pairing happens in `create_batches`, i.e. *after* the index list has been shuffled, sliced per worker
and (under `DistributedDL`) per rank, so every consumer of `get_idxs` keeps seeing plain indices.
Loaders derived with `new()` (validation, `test_dl`, `get_preds`, exported learners) are plain `TfmdDL`s.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from fastcore.basics import chunked
from fastai.data.core import DataLoaders, TfmdDL

__all__ = ["PairedDL", "paired_dls", "IndexedDL", "dataset_labels", "ClassIndex", "check_classes"]


def _as_int(label) -> int:
    if isinstance(label, torch.Tensor):
        if label.numel() != 1:
            raise ValueError(f"CS-KD needs single-label targets, got a label tensor of shape {tuple(label.shape)}; "
                             "use a CategoryBlock (not MultiCategoryBlock) for the target")
        return int(label.item())
    return int(label)


def dataset_labels(ds) -> np.ndarray:
    "Integer class of every item of `ds`, computed without running the input (image) pipeline."
    if hasattr(ds, "tls") and hasattr(ds, "n_inp"):  # fastai Datasets: run only the target pipeline
        tl = ds.tls[ds.n_inp]
        return np.fromiter((_as_int(tl[i]) for i in range(len(tl))), dtype=np.int64, count=len(tl))
    for attr in ("targets", "labels", "y"):  # torchvision / TensorDataset-style datasets
        ys = getattr(ds, attr, None)
        if ys is not None and len(ys) == len(ds):
            return np.asarray([_as_int(y) for y in ys], dtype=np.int64)
    if hasattr(ds, "tensors"):  # torch TensorDataset: last tensor is the target
        return np.asarray(ds.tensors[-1].long().view(-1).tolist(), dtype=np.int64)
    # Last resort: index the dataset (this does decode inputs, so only for small in-memory data)
    return np.asarray([_as_int(ds[i][-1]) for i in range(len(ds))], dtype=np.int64)


class ClassIndex:
    "Per-class item lists for O(1) uniform sampling of a *different* item of the same class."
    def __init__(self, labels: Sequence[int]):
        labels = np.asarray(labels, dtype=np.int64)
        if labels.ndim != 1 or len(labels) == 0:
            raise ValueError("CS-KD needs a non-empty 1-D list of training labels")
        if labels.min() < 0:
            raise ValueError(f"class labels must be >= 0, got {labels.min()}")
        self.labels = labels
        self.order = np.argsort(labels, kind="stable")           # items grouped by class
        self.counts = np.bincount(labels)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        self.pos = np.empty_like(labels)                           # position of each item inside its class
        self.pos[self.order] = np.arange(len(labels)) - self.starts[labels[self.order]]

    def partners(self, anchors: Sequence[int], u: np.ndarray | None = None) -> np.ndarray:
        "A uniform draw among the other items of each anchor's class (the anchor itself if it is alone)."
        # one implementation, `partners_like`, on the CPU; torch's RNG is seeded per loader worker by fastai
        return self.partners_like(torch.as_tensor(np.asarray(anchors, dtype=np.int64)),
                                  None if u is None else torch.as_tensor(u, dtype=torch.float64)).numpy()

    def partners_like(self, anchors: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        """`partners` on a tensor of anchor indices, computed on its device: no host round trip per step on a GPU
        (`partners` is this, on the CPU)."""
        t = self._tensors(anchors.device)
        a = anchors.long()
        c = t["labels"][a]
        n_other = t["counts"][c] - 1
        if u is None: u = torch.rand(len(a), dtype=torch.float64, device=a.device)
        r = torch.minimum((u * n_other).long(), (n_other - 1).clamp_min(0))
        r = r + (r >= t["pos"][a]).long()
        return t["order"][t["starts"][c] + torch.where(n_other > 0, r, t["pos"][a])]

    def _tensors(self, device) -> dict:
        cache = self.__dict__.setdefault("_on_device", {})   # one copy of the index per device, made on first use
        key = str(device)
        if key not in cache:
            cache[key] = {k: torch.as_tensor(getattr(self, k), dtype=torch.int64, device=device)
                          for k in ("labels", "order", "counts", "starts", "pos")}
        return cache[key]


class PairedDL(TfmdDL):
    "A `TfmdDL` whose training batches are `bs` anchors followed by `bs` same-class partners."
    def __init__(self, dataset=None, labels: Sequence[int] | None = None, **kwargs):
        super().__init__(dataset, **kwargs)
        self._labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self._cidx = None

    @classmethod
    def from_dl(cls, dl: TfmdDL, **kwargs) -> "PairedDL":
        "Pair an existing (plain) training loader, keeping its transforms, batch size and workers."
        return TfmdDL.new(dl, cls=cls, **kwargs)

    @property
    def class_index(self) -> ClassIndex:
        if self._cidx is None:
            self._cidx = ClassIndex(self._labels if self._labels is not None else dataset_labels(self.dataset))
        return self._cidx

    def before_iter(self):
        super().before_iter()
        self.class_index  # build in the main process, so worker copies inherit it

    def _chunks(self, samps):
        "Anchor chunks of `bs`; a trailing single anchor joins the previous batch (BatchNorm needs >1 sample)."
        chunks = chunked(samps, self.bs, self.drop_last)
        prev = None
        for ch in chunks:
            if prev is not None and len(ch) == 1 and not self.drop_last:
                yield list(prev) + list(ch); prev = None; continue
            if prev is not None: yield prev
            prev = ch
        if prev is not None: yield prev

    def create_batches(self, samps):
        if self.dataset is not None: self.it = iter(self.dataset)
        for anchors in self._chunks(samps):
            partners = self.class_index.partners(anchors)
            items = [self.do_item(int(i)) for i in list(anchors) + partners.tolist()]
            if any(o is None for o in items):  # an item was skipped: drop its pair, keep the halves aligned
                n = len(anchors)
                keep = [k for k in range(n) if items[k] is not None and items[n + k] is not None]
                items = [items[k] for k in keep] + [items[n + k] for k in keep]
                if not items: continue
            yield self.do_batch(items)

    def __len__(self):
        n = super().__len__()
        if not self.drop_last and self.bs and n > 1 and self.n % self.bs == 1: n -= 1
        return n

    def new(self, dataset=None, cls=None, **kwargs):
        "Derived loaders (valid, test, `get_preds`, export) are plain unless `cls` asks otherwise."
        res = super().new(dataset, cls=TfmdDL if cls is None else cls, **kwargs)
        if isinstance(res, PairedDL) and dataset is None: res._labels, res._cidx = self._labels, self._cidx
        return res

    def show_batch(self, b=None, max_n: int = 4, ctxs=None, show: bool = True, unique: bool = False, **kwargs):
        "Show `max_n` anchor/partner pairs side by side (anchor left, partner right)."
        if b is None: b = self.one_batch()
        bs = len(b[-1]) // 2
        n = min(max_n, bs)
        order = torch.stack([torch.arange(n), torch.arange(n) + bs], 1).view(-1).to(b[-1].device)
        b = tuple(t[order] for t in b)
        kwargs.setdefault("nrows", n); kwargs.setdefault("ncols", 2)
        return super().show_batch(b=b, max_n=2 * n, ctxs=ctxs, show=show, unique=unique, **kwargs)


class IndexedDL(TfmdDL):
    """A `TfmdDL` whose training items carry their dataset index as a last element: `(x, y, i)`. Methods with
    per-sample state (PS-KD's last-epoch predictions) read it; the index travels through workers and collation like
    a label. Derived loaders (valid, test, `get_preds`, exports) are plain."""
    def do_item(self, s):
        # appended *after* the item transforms: a transform typed on `int` (the image cache's `CachedCrop` maps a cache
        # index to an image) would otherwise turn the sample id into an image too
        item = super().do_item(s)
        return None if item is None else (*item, 0 if s is None else s)   # s is None in fastai's one-pass probe

    @classmethod
    def from_dl(cls, dl: TfmdDL, **kwargs) -> "IndexedDL":
        return TfmdDL.new(dl, cls=cls, **kwargs)

    def new(self, dataset=None, cls=None, **kwargs):
        return super().new(dataset, cls=TfmdDL if cls is None else cls, **kwargs)


def check_classes(dls: DataLoaders) -> None:
    "Fail early, with one clear line, on data CS-KD cannot train on."
    vocab = getattr(dls, "vocab", None)
    n_cls = len(vocab) if vocab is not None else getattr(dls, "c", None)
    if n_cls is not None and n_cls < 2:
        raise ValueError(f"CS-KD needs at least 2 classes, the data has {n_cls}; check get_y / the dataset root")
    train = dataset_labels(dls.train_ds)
    if len(dls.loaders) > 1 and dls.valid_ds is not None and len(dls.valid_ds):
        try:
            valid = dataset_labels(dls.valid_ds)
        except KeyError as e:
            raise ValueError(f"class {e.args[0]!r} is in the validation set but not in the training set; "
                             "re-split so every class has training images") from None
        missing = sorted(set(valid.tolist()) - set(train.tolist()))
        if missing:
            names = [str(vocab[i]) for i in missing[:5]] if vocab is not None else missing[:5]
            raise ValueError(f"{len(missing)} class(es) in the validation set have no training images (e.g. {names}); "
                             "re-split so every class has training images")
    if len(np.unique(train)) < 2:
        raise ValueError("CS-KD needs at least 2 classes in the training set; check get_y / the dataset root")


def paired_dls(dls: DataLoaders, **kwargs) -> DataLoaders:
    "`dls` with its training loader replaced by a `PairedDL` (other loaders untouched)."
    if isinstance(dls.train, PairedDL) and not kwargs: return dls
    loaders = [PairedDL.from_dl(dls.train, **kwargs)] + list(dls.loaders[1:])
    res = DataLoaders(*loaders, path=dls.path, device=dls.device)
    return res
