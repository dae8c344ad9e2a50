"""Datasets that ship as arrays: CIFAR-10/100 (python pickles), scikit-learn digits, Fashion-MNIST (idx files).

Items are HxWx3 uint8 numpy arrays (views into one contiguous block per split).
"""
from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

from .core import DatasetLayoutError, ImageDataset, ImageSplit, Layout, nested_base, register

__all__ = ["load_cifar10", "load_cifar100", "load_digits", "load_fashion_mnist",
           "FASHION_MNIST_DEFAULT_ROOT", "FASHION_MNIST_CLASSES"]


def _get(d: dict, key: str):
    "Value of `key` in a CIFAR pickle, whose keys are bytes (python 2 pickles read with encoding='bytes')."
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise KeyError(key)


def _read_pickle(layout: Layout, root: Path, path: Path, keys: tuple[str, ...]) -> dict:
    layout.require_file(root, path)
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        for k in keys:
            _get(d, k)
    except KeyError as e:
        raise layout.error(root, f"{path.name} has no {e.args[0]!r} entry") from None
    except Exception as e:  # truncated / not a pickle
        raise layout.error(root, f"cannot read {path.name} as a CIFAR python pickle ({type(e).__name__})") from None
    return d


def _cifar_split(layout, root, paths, label_key) -> ImageSplit:
    datas, labels = [], []
    for p in paths:
        d = _read_pickle(layout, root, p, ("data", label_key))
        data = np.asarray(_get(d, "data"), dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072:
            raise layout.error(root, f"{p.name}: data has shape {data.shape}, expected (N, 3072) uint8 rows")
        datas.append(data)
        labels += [int(x) for x in _get(d, label_key)]
    data = np.concatenate(datas) if datas else np.zeros((0, 3072), np.uint8)
    if len(data) != len(labels):
        raise layout.error(root, f"{len(data)} images but {len(labels)} labels in {', '.join(p.name for p in paths)}")
    imgs = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return ImageSplit(list(imgs), labels)


def _names(values) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


CIFAR100 = Layout("CIFAR-100", "<root>/cifar-100-python/{train,test,meta} (the extracted cifar-100-python.tar.gz)",
                  "cifar-100-python/", download="cifar100")
CIFAR10 = Layout("CIFAR-10", "<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta} "
                 "(the extracted cifar-10-python.tar.gz)", "cifar-10-batches-py/", download="cifar10")


@register("cifar100")
def load_cifar100(root=None) -> ImageDataset:
    "CIFAR-100 (fine labels) from `<root>/cifar-100-python/` or from that folder itself."
    root = CIFAR100.root(root)
    base = nested_base(root, "cifar-100-python", "meta")
    for f in ("train", "test", "meta"):
        CIFAR100.require_file(root, base / f)
    meta = _read_pickle(CIFAR100, root, base / "meta", ("fine_label_names",))
    classes = _names(_get(meta, "fine_label_names"))
    train = _cifar_split(CIFAR100, root, [base / "train"], "fine_labels")
    test = _cifar_split(CIFAR100, root, [base / "test"], "fine_labels")
    return ImageDataset("cifar100", classes, train, test)


@register("cifar10")
def load_cifar10(root=None) -> ImageDataset:
    "CIFAR-10 from `<root>/cifar-10-batches-py/` or from that folder itself."
    root = CIFAR10.root(root)
    base = nested_base(root, "cifar-10-batches-py", "batches.meta")
    train_files = [base / f"data_batch_{i}" for i in range(1, 6)]
    for p in [*train_files, base / "test_batch", base / "batches.meta"]:
        CIFAR10.require_file(root, p)
    meta = _read_pickle(CIFAR10, root, base / "batches.meta", ("label_names",))
    classes = _names(_get(meta, "label_names"))
    train = _cifar_split(CIFAR10, root, train_files, "labels")
    test = _cifar_split(CIFAR10, root, [base / "test_batch"], "labels")
    return ImageDataset("cifar10", classes, train, test)


def _to_rgb_list(gray: np.ndarray) -> list:
    "(N,H,W) uint8 -> list of N contiguous HxWx3 uint8 arrays."
    rgb = np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=-1))
    return list(rgb)


@register("digits")
def load_digits(root=None) -> ImageDataset:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes; `root` is ignored), 0..16 scaled to 0..255 and
    replicated to 3 channels; stratified 70/30 train/test split with seed 0."""
    from sklearn.datasets import load_digits as _sk_digits
    from sklearn.model_selection import train_test_split

    d = _sk_digits()
    imgs = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    y = d.target.astype(np.int64)
    idx_tr, idx_te = train_test_split(np.arange(len(y)), test_size=0.3, stratify=y, random_state=0)
    rgb = _to_rgb_list(imgs)
    split = lambda idx: ImageSplit([rgb[i] for i in idx], y[idx].tolist())
    return ImageDataset("digits", [str(c) for c in d.target_names], split(idx_tr), split(idx_te))


# ----------------------------------------------------------------------------------------------------------
# Fashion-MNIST

FASHION_MNIST_DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION = Layout("Fashion-MNIST",
                 "<root>/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] (Debian: apt-get install "
                 f"dataset-fashion-mnist puts them in {FASHION_MNIST_DEFAULT_ROOT})",
                 "the idx files train-images-idx3-ubyte[.gz] ...")


def _idx_path(root: Path, base: Path, stem: str) -> Path:
    for p in (base / f"{stem}.gz", base / stem):
        if p.is_file():
            return p
    raise FASHION.error(root, f"missing {stem}[.gz]")


def _read_idx(root: Path, path: Path, ndim: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise FASHION.error(root, f"cannot read {path.name} ({e})") from None
    if len(raw) < 4 + 4 * ndim:
        raise FASHION.error(root, f"{path.name} is too short to be an idx file")
    magic = int.from_bytes(raw[:4], "big")
    if magic != 0x0800 + ndim:  # unsigned byte data, `ndim` dimensions
        raise FASHION.error(root, f"{path.name} has idx magic {magic:#010x}, expected {0x0800 + ndim:#010x}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise FASHION.error(root, f"{path.name} holds {data.size} bytes of data, header says {shape}")
    return data.reshape(shape)


def _fashion_split(root: Path, base: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    x = _read_idx(root, _idx_path(root, base, f"{prefix}-images-idx3-ubyte"), 3)
    y = _read_idx(root, _idx_path(root, base, f"{prefix}-labels-idx1-ubyte"), 1)
    if len(x) != len(y):
        raise FASHION.error(root, f"{prefix}: {len(x)} images but {len(y)} labels")
    return x, y.astype(np.int64)


def per_class_subset(labels: np.ndarray, n_per_class: int, seed: int = 0) -> np.ndarray:
    "Sorted indices of at most `n_per_class` items of every class, drawn deterministically from `seed`."
    if n_per_class < 1:
        raise ValueError(f"train_per_class must be >= 1, got {n_per_class}")
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keep.append(idx if len(idx) <= n_per_class else rng.choice(idx, n_per_class, replace=False))
    return np.sort(np.concatenate(keep))


@register("fashion_mnist")
def load_fashion_mnist(root=None, train_per_class: int | None = None) -> ImageDataset:
    """Fashion-MNIST from gzipped or plain idx files (default root: where Debian's `dataset-fashion-mnist`
    installs them). `train_per_class` keeps that many training images per class (seed 0); test is untouched."""
    if root is None or str(root) == "":
        if not FASHION_MNIST_DEFAULT_ROOT.is_dir():
            raise DatasetLayoutError(
                f"Fashion-MNIST default root {FASHION_MNIST_DEFAULT_ROOT} does not exist; install it with "
                "apt-get install dataset-fashion-mnist, or pass the folder holding the idx files with "
                "--data-root DIR or dataset.root in the recipe")
        root = FASHION_MNIST_DEFAULT_ROOT
    root = FASHION.root(root)
    base = root / "fashion-mnist" if (root / "fashion-mnist").is_dir() else root
    xtr, ytr = _fashion_split(root, base, "train")
    xte, yte = _fashion_split(root, base, "t10k")
    if train_per_class is not None:
        keep = per_class_subset(ytr, int(train_per_class), seed=0)
        xtr, ytr = xtr[keep], ytr[keep]
    return ImageDataset("fashion_mnist", list(FASHION_MNIST_CLASSES),
                        ImageSplit(_to_rgb_list(xtr), ytr.tolist()), ImageSplit(_to_rgb_list(xte), yte.tolist()))
