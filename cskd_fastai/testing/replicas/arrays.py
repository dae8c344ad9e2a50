"Array-file replicas: CIFAR-10/100 python pickles and Fashion-MNIST idx files, byte-exact to the official layouts."
from __future__ import annotations

import gzip
import pickle
from pathlib import Path
from typing import Sequence

import numpy as np

from .common import check_n_classes, class_grey, noise_image, shuffled_labels
from .names import CIFAR10_NAMES, CIFAR100_NAMES

__all__ = ["make_cifar100", "make_cifar10", "make_fashion_mnist"]


def _cifar_rows(rng, labels: Sequence[int]) -> np.ndarray:
    "(N, 3072) uint8 rows, channel-major (1024 R, 1024 G, 1024 B) like the official pickles."
    imgs = np.stack([noise_image(rng, l, 32) for l in labels]) if len(labels) else np.zeros((0, 32, 32, 3), np.uint8)
    return np.ascontiguousarray(imgs.transpose(0, 3, 1, 2).reshape(len(labels), 3072))


def _pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def make_cifar100(root, n_per_class: int = 3, n_classes: int = 5, n_test_per_class: int = 2, seed: int = 0) -> Path:
    "`root/cifar-100-python/{train,test,meta}` with bytes keys, as python 2 wrote them. Returns `root`."
    check_n_classes(n_classes, 100, "CIFAR-100")
    root = Path(root); base = root / "cifar-100-python"
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_per_class), ("test", n_test_per_class)):
        labels = shuffled_labels(n_classes, n, rng)
        _pickle(base / split, {b"filenames": [f"img_{k:05d}.png".encode() for k in range(len(labels))],
                               b"batch_label": f"{split}ing batch 1 of 1".encode(),
                               b"fine_labels": labels, b"coarse_labels": [l // 5 for l in labels],
                               b"data": _cifar_rows(rng, labels)})
    # the official meta lists all 100 names and the loader reports them all, so a replica lists only those in use
    _pickle(base / "meta", {b"fine_label_names": [n.encode() for n in CIFAR100_NAMES[:n_classes]],
                            b"coarse_label_names": [f"superclass_{k}".encode() for k in range(20)]})
    return root


def make_cifar10(root, n_per_class: int = 3, n_classes: int = 5, n_test_per_class: int = 2, seed: int = 0) -> Path:
    "`root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`. Returns `root`."
    check_n_classes(n_classes, 10, "CIFAR-10")
    root = Path(root); base = root / "cifar-10-batches-py"
    rng = np.random.default_rng(seed)
    train = shuffled_labels(n_classes, n_per_class, rng)
    for b, part in enumerate(np.array_split(np.array(train, dtype=np.int64), 5), 1):
        labels = part.tolist()
        _pickle(base / f"data_batch_{b}", {b"batch_label": f"training batch {b} of 5".encode(), b"labels": labels,
                                           b"data": _cifar_rows(rng, labels),
                                           b"filenames": [f"b{b}_{k}.png".encode() for k in range(len(labels))]})
    test = shuffled_labels(n_classes, n_test_per_class, rng)
    _pickle(base / "test_batch", {b"batch_label": b"testing batch 1 of 1", b"labels": test,
                                  b"data": _cifar_rows(rng, test),
                                  b"filenames": [f"t_{k}.png".encode() for k in range(len(test))]})
    # as for CIFAR-100, the meta lists only the classes in use
    _pickle(base / "batches.meta", {b"label_names": [n.encode() for n in CIFAR10_NAMES[:n_classes]],
                                    b"num_cases_per_batch": max(1, len(train) // 5), b"num_vis": 3072})
    return root


def _idx(path: Path, arr: np.ndarray, compress: bool) -> None:
    header = (0x0800 + arr.ndim).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def make_fashion_mnist(root, n_per_class: int = 3, n_classes: int = 5, n_test_per_class: int = 2, seed: int = 0,
                       compress: bool = True) -> Path:
    "`root/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]` (28x28 grey around `class_grey(label)`). Returns `root`."
    check_n_classes(n_classes, 10, "Fashion-MNIST")
    root = Path(root); rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_per_class), ("t10k", n_test_per_class)):
        labels = np.array(shuffled_labels(n_classes, n, rng), dtype=np.uint8)
        means = np.array([class_grey(int(l)) for l in labels]).reshape(-1, 1, 1)
        imgs = np.clip(np.rint(means + rng.normal(0.0, 20.0, (len(labels), 28, 28))), 0, 255).astype(np.uint8)
        _idx(root / f"{prefix}-images-idx3-ubyte", imgs, compress)
        _idx(root / f"{prefix}-labels-idx1-ubyte", labels, compress)
    return root
