"""Dataset containers, the layout error, the loader registry and the shared path helpers.

Loaders only *list* items (paths, or uint8 arrays for datasets that ship as arrays); nothing is decoded here,
so listing ImageNet-sized folders stays a matter of `os.scandir` calls.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

__all__ = ["ImageSplit", "ImageDataset", "DatasetLayoutError", "DATASETS", "load_dataset", "register", "check_dataset",
           "IMAGE_EXTENSIONS", "canonical_name"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
ROOT_HINT = "with --data-root DIR or dataset.root in the recipe"


@dataclass
class ImageSplit:
    "One split: `items[i]` (a `Path` to an image file, or an HxWx3 uint8 array) has class `labels[i]`."
    items: list
    labels: list[int]

    def __post_init__(self):
        if len(self.items) != len(self.labels):
            raise ValueError(f"ImageSplit has {len(self.items)} items but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class ImageDataset:
    "A named dataset: class names in label order, a train split and the test split the paper reports on."
    name: str
    classes: list[str]
    train: ImageSplit
    test: ImageSplit

    def __repr__(self) -> str:
        return (f"ImageDataset({self.name!r}, {len(self.classes)} classes, "
                f"{len(self.train)} train / {len(self.test)} test)")


class DatasetLayoutError(ValueError):
    "The data root does not hold the official on-disk layout; the message is one line naming what is wrong."
    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always a single line


DATASETS: dict[str, Callable[..., ImageDataset]] = {}


def register(name: str):
    "Decorator adding a loader `fn(root=None, **kwargs) -> ImageDataset` to `DATASETS`."
    def deco(fn):
        DATASETS[name] = fn
        return fn
    return deco


def canonical_name(name: str) -> str:
    "A dataset name as the registry spells it: lower case, '-' as '_'."
    return str(name).strip().lower().replace("-", "_")


def load_dataset(name: str, root: str | Path | None = None, **kwargs) -> ImageDataset:
    "Load dataset `name` from its official layout under `root`; extra keywords go to that loader."
    key = canonical_name(name)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return check_dataset(DATASETS[key](root, **kwargs))


def check_dataset(ds: ImageDataset) -> ImageDataset:
    """What every loader's result must satisfy before training: distinct class names (they are the vocabulary),
    labels in range, and no class that has test images but no training image (no model can learn it, and its
    test images would count as errors without a word)."""
    if len(set(ds.classes)) != len(ds.classes):
        dup = next(c for c in ds.classes if ds.classes.count(c) > 1)
        raise DatasetLayoutError(f"{ds.name}: class name {dup!r} is used by two classes; class names must be distinct")
    k = len(ds.classes)
    for split_name, split in (("train", ds.train), ("test", ds.test)):
        bad = [l for l in split.labels if not 0 <= l < k]
        if bad: raise DatasetLayoutError(f"{ds.name}: {split_name} label {bad[0]} is outside 0..{k - 1}")
    has_train = set(ds.train.labels)
    test_only = sorted(set(ds.test.labels) - has_train)
    if test_only:
        c = test_only[0]
        n = sum(1 for l in ds.test.labels if l == c)
        more = f" (and {len(test_only) - 1} more such classes)" if len(test_only) > 1 else ""
        raise DatasetLayoutError(f"{ds.name}: class {ds.classes[c]!r} has {n} test image(s) but no training image"
                                 f"{more}, so no model can learn it; add training images of it or remove its test images")
    return ds


# ----------------------------------------------------------------------------------------------------------
# helpers shared by the loaders


# datasets `cskd-fastai download` can fetch (cskd_fastai.download.SOURCES)
DOWNLOADABLE = frozenset({"cifar10", "cifar100", "cub", "tinyimagenet", "dogs", "mit67"})


class Layout:
    "What a loader expects: used to turn missing files into one-line `DatasetLayoutError`s."
    def __init__(self, label: str, expected: str, holds: str, download: str | None = None):
        self.label, self.expected, self.holds, self.download = label, expected, holds, download

    @property
    def fetch_hint(self) -> str:
        return f"; or fetch it with `cskd-fastai download {self.download} --to DIR`" if self.download else ""

    def error(self, root: Path, what: str) -> DatasetLayoutError:
        return DatasetLayoutError(f"{self.label} root {root}: {what}; expected {self.expected}{self.fetch_hint}")

    def missing(self, root: Path, path: Path | str, kind: str = "") -> DatasetLayoutError:
        rel = _rel(path, root)
        return self.error(root, f"missing {rel}{'/' if kind == 'dir' else ''}")

    def root(self, root: str | Path | None) -> Path:
        "Validate that `root` was given and exists."
        if root is None or str(root) == "":
            raise DatasetLayoutError(f"{self.label} needs a data root (the folder that holds {self.holds}); "
                                     f"pass it {ROOT_HINT}{self.fetch_hint}")
        root = Path(root).expanduser()
        if not root.exists():
            raise DatasetLayoutError(f"{self.label} root {root} does not exist; pass the folder that holds "
                                     f"{self.holds} {ROOT_HINT}{self.fetch_hint}")
        if not root.is_dir():
            raise DatasetLayoutError(f"{self.label} root {root} is not a directory; pass the folder that "
                                     f"holds {self.holds} {ROOT_HINT}")
        return root

    def require_file(self, root: Path, path: Path) -> Path:
        if not path.is_file():
            raise self.missing(root, path)
        return path

    def require_dir(self, root: Path, path: Path) -> Path:
        if not path.is_dir():
            raise self.missing(root, path, "dir")
        return path


def _rel(path: Path | str, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def nested_base(root: Path, sub: str, marker: str) -> Path:
    """The official top folder `root/sub` when it exists, else `root` itself when it already holds `marker`
    (the user pointed at the top folder), else `root/sub` so that errors name the nested path."""
    if (root / sub).is_dir():
        return root / sub
    if (root / marker).exists():
        return root
    return root / sub


def is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def list_images(folder: Path) -> list[Path]:
    "Image files directly inside `folder`, sorted by name; no decoding and no `stat` beyond `scandir`."
    with os.scandir(folder) as it:
        names = sorted(e.name for e in it if is_image(e.name) and e.is_file())
    return [folder / n for n in names]


def list_subdirs(folder: Path) -> list[str]:
    "Sorted names of the (non-hidden) sub-folders of `folder`."
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def read_lines(path: Path) -> list[str]:
    "Non-empty stripped lines of a text file (tolerates CRLF and a BOM)."
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        return [ln.strip() for ln in f if ln.strip()]


def split_by_folder(layout: Layout, root: Path, split_dir: Path, classes: Iterable[str],
                    nested: str = "") -> ImageSplit:
    "Items of `split_dir/<class>/[nested/]*.img` with labels in the order of `classes`."
    items, labels = [], []
    for i, c in enumerate(classes):
        d = split_dir / c / nested if nested else split_dir / c
        layout.require_dir(root, d)
        files = list_images(d)
        items += files
        labels += [i] * len(files)
    return ImageSplit(items, labels)
