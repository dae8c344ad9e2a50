"""Datasets stored as image files: Tiny-ImageNet, CUB-200-2011, Stanford Dogs, MIT Indoor-67, ImageNet and a
generic train/test ImageFolder. Items are `pathlib.Path`s; files are listed, never opened."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from .core import (ImageDataset, ImageSplit, Layout, list_images, list_subdirs, nested_base, read_lines,
                   register, split_by_folder)

__all__ = ["load_tinyimagenet", "load_cub", "load_dogs", "load_mit67", "load_imagenet", "load_imagefolder"]


def _synset_names(path: Path, wnids: list[str]) -> list[str]:
    """Readable names for WordNet ids from a `wnid<TAB or space>name, synonym, ...` file (words.txt,
    LOC_synset_mapping.txt): the first synonym, with the wnid appended where two classes would collide."""
    wanted, found = set(wnids), {}
    for line in read_lines(path):
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[0] in wanted:
            found[parts[0]] = parts[1].split(",")[0].strip() or parts[0]
    names = [found.get(w, w) for w in wnids]
    counts = {n: names.count(n) for n in names}
    return [f"{n} ({w})" if counts[n] > 1 and n != w else n for n, w in zip(names, wnids)]


def _folder_dataset(layout: Layout, name: str, root: Path, train_dir: Path, test_dir: Path,
                    classes: list[str] | None = None) -> ImageDataset:
    """train/<class>/* and test/<class>/*; classes are the train folders, test classes must be a subset. A class
    folder with no image in train nor in test is dropped with a warning naming it (kept, it would be a class no
    model can learn or be tested on, counted in class-wise metrics)."""
    import warnings
    layout.require_dir(root, train_dir)
    layout.require_dir(root, test_dir)
    folders = list_subdirs(train_dir)
    empty = [c for c in folders if not list_images(train_dir / c)
             and not ((test_dir / c).is_dir() and list_images(test_dir / c))]
    for c in empty:
        warnings.warn(f"{layout.label} root {root}: class folder {train_dir.relative_to(root).as_posix()}/{c}/ holds no "
                      f"image (nor does its test folder): dropped", UserWarning, stacklevel=2)
    if classes is None: folders = [c for c in folders if c not in empty]
    if not folders:
        raise layout.error(root, f"no class folders in {train_dir.relative_to(root).as_posix()}/")
    train = split_by_folder(layout, root, train_dir, folders)
    if not train.items:
        raise layout.error(root, f"no image files in {train_dir.relative_to(root).as_posix()}/<class>/")
    test_folders = list_subdirs(test_dir)
    if not test_folders and list_images(test_dir):
        raise layout.error(root, f"{test_dir.relative_to(root).as_posix()}/ holds images directly; "
                                 "sort them into one sub-folder per class")
    index = {c: i for i, c in enumerate(folders)}
    items, labels = [], []
    for c in test_folders:
        if c not in index:
            rel = test_dir.relative_to(root).as_posix()
            raise layout.error(root, f"class folder {rel}/{c}/ has no {train_dir.relative_to(root).as_posix()}/{c}/ "
                                     "counterpart (test classes must be a subset of the train classes)")
        files = list_images(test_dir / c)
        items += files
        labels += [index[c]] * len(files)
    return ImageDataset(name, classes if classes is not None else folders, train, ImageSplit(items, labels))


# ----------------------------------------------------------------------------------------------------------
TINY = Layout("Tiny-ImageNet", "tiny-imagenet-200/{wnids.txt,words.txt (optional),train/<wnid>/images/*.JPEG,"
              "val/images/*.JPEG,val/val_annotations.txt}", "tiny-imagenet-200/", download="tinyimagenet")


@register("tinyimagenet")
def load_tinyimagenet(root=None) -> ImageDataset:
    "Tiny-ImageNet-200; its labelled val set is the test split (as in the paper). Classes: sorted wnids."
    root = TINY.root(root)
    base = nested_base(root, "tiny-imagenet-200", "wnids.txt")
    wnids = sorted({ln.split()[0] for ln in read_lines(TINY.require_file(root, base / "wnids.txt"))})
    if not wnids:
        raise TINY.error(root, "wnids.txt lists no class")
    train_dir = TINY.require_dir(root, base / "train")
    ann = TINY.require_file(root, base / "val" / "val_annotations.txt")
    val_images = TINY.require_dir(root, base / "val" / "images")
    words = base / "words.txt"
    classes = _synset_names(words, wnids) if words.is_file() else list(wnids)
    train = split_by_folder(TINY, root, train_dir, wnids, nested="images")
    index = {w: i for i, w in enumerate(wnids)}
    items, labels = [], []
    for n, line in enumerate(read_lines(ann), 1):
        parts = line.split("\t") if "\t" in line else line.split()
        if len(parts) < 2:
            raise TINY.error(root, f"val/val_annotations.txt line {n} is not 'filename<TAB>wnid<TAB>bbox...'")
        if parts[1] not in index:
            raise TINY.error(root, f"val/val_annotations.txt line {n} names wnid {parts[1]} absent from wnids.txt")
        items.append(inside(TINY, root, val_images, parts[0], f"val/val_annotations.txt line {n}"))
        labels.append(index[parts[1]])
    return ImageDataset("tinyimagenet", classes, train, ImageSplit(items, labels))


# ----------------------------------------------------------------------------------------------------------
CUB = Layout("CUB", "CUB_200_2011/{images.txt,image_class_labels.txt,train_test_split.txt,classes.txt,images/}",
             "CUB_200_2011/", download="cub")
_CUB_PREFIX = re.compile(r"^\d+\.")


def _id_table(root: Path, path: Path, lines: dict | None = None) -> dict[int, str]:
    """`<int id> <rest>` lines of a CUB metadata file; an empty file, a malformed line or a repeated id is one error
    naming the file and the line (a repeated id would silently drop an image). `lines` collects id -> line number."""
    out, where = {}, {}
    for n, line in enumerate(read_lines(path), 1):
        parts = line.split(None, 1)
        try: key, value = int(parts[0]), parts[1].strip()
        except (ValueError, IndexError):
            raise CUB.error(root, f"{path.name} line {n} is not '<id> <value>': {line[:60]!r}") from None
        if key in out:
            raise CUB.error(root, f"{path.name} line {n} repeats id {key} (first on line {where[key]}); each id once")
        out[key], where[key] = value, n
    if not out: raise CUB.error(root, f"{path.name} lists nothing")
    if lines is not None: lines.update(where)
    return out


def inside(layout: Layout, root: Path, base: Path, rel: str, what: str) -> Path:
    """`base/rel`, which must stay under the data root: a metadata line naming '/etc/x' or '../../x' is refused.
    The check is on the normalised path (no symlink is followed: a data root may keep its images on another disk)."""
    p = base / rel
    if Path(rel).is_absolute() or not Path(os.path.normpath(p)).is_relative_to(os.path.normpath(root)):
        raise layout.error(root, f"{what} names {rel!r}, which is outside the data root; paths in metadata files "
                                 f"must be relative and stay inside it")
    return p


@register("cub")
def load_cub(root=None) -> ImageDataset:
    """CUB-200-2011 (or a subset in its layout). The class ids used by the images, sorted, become labels 0..K-1;
    names drop the 'NNN.' prefix of classes.txt (e.g. 'Black_footed_Albatross')."""
    root = CUB.root(root)
    base = nested_base(root, "CUB_200_2011", "images.txt")
    files = {f: CUB.require_file(root, base / f) for f in
             ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")}
    img_dir = CUB.require_dir(root, base / "images")
    line_of: dict = {}
    paths = _id_table(root, files["images.txt"], line_of)
    cls_of = _id_table(root, files["image_class_labels.txt"])
    is_train = _id_table(root, files["train_test_split.txt"])
    class_names = _id_table(root, files["classes.txt"])
    try:
        cls_of = {k: int(v) for k, v in cls_of.items()}
        is_train = {k: int(v) for k, v in is_train.items()}
    except ValueError:
        raise CUB.error(root, "image_class_labels.txt and train_test_split.txt need integer values") from None
    bad = next((i for i, v in is_train.items() if v not in (0, 1)), None)
    if bad is not None:
        raise CUB.error(root, f"train_test_split.txt gives image id {bad} the value {is_train[bad]}; expected 1 (train) "
                              f"or 0 (test)")
    for f, table in (("image_class_labels.txt", cls_of), ("train_test_split.txt", is_train)):
        missing = [i for i in paths if i not in table]
        if missing:
            raise CUB.error(root, f"{f} has no entry for image id {missing[0]} ({len(missing)} ids missing)")
    used = sorted({cls_of[i] for i in paths})
    unnamed = [c for c in used if c not in class_names]
    if unnamed:
        raise CUB.error(root, f"classes.txt has no entry for class id {unnamed[0]}")
    label = {c: k for k, c in enumerate(used)}
    classes = [_CUB_PREFIX.sub("", class_names[c]) for c in used]
    splits = {True: ([], []), False: ([], [])}
    for i, rel in paths.items():
        items, labels = splits[is_train[i] == 1]
        items.append(inside(CUB, root, img_dir, rel, f"images.txt line {line_of[i]}"))
        labels.append(label[cls_of[i]])
    return ImageDataset("cub", classes, ImageSplit(*splits[True]), ImageSplit(*splits[False]))


# ----------------------------------------------------------------------------------------------------------
DOGS = Layout("Stanford Dogs", "<root>/{Images/<wnid>-<breed>/*.jpg,lists/train_list.mat,lists/test_list.mat}",
              "Images/ and lists/", download="dogs")


def _mat_str(x) -> str:
    while isinstance(x, np.ndarray):
        if x.size != 1:
            break
        x = x.reshape(-1)[0]
    if isinstance(x, np.ndarray):  # a char matrix row
        return "".join(str(c) for c in x.reshape(-1)).strip()
    return (x.decode() if isinstance(x, bytes) else str(x)).strip()


def _read_list_mat(root: Path, path: Path) -> tuple[list[str], list[int]]:
    from scipy.io import loadmat
    DOGS.require_file(root, path)
    try:
        m = loadmat(str(path))
    except Exception as e:
        raise DOGS.error(root, f"cannot read {path.name} as a MATLAB .mat file ({type(e).__name__})") from None
    for k in ("file_list", "labels"):
        if k not in m:
            raise DOGS.error(root, f"{path.name} has no {k!r} variable")
    fl = np.asarray(m["file_list"])
    files = [s.strip() for s in fl.reshape(-1)] if fl.dtype.kind == "U" else [_mat_str(x) for x in fl.reshape(-1)]
    labels = [int(v) for v in np.asarray(m["labels"]).reshape(-1)]
    if len(files) != len(labels):
        raise DOGS.error(root, f"{path.name}: {len(files)} files but {len(labels)} labels")
    return [f.replace("\\", "/") for f in files], labels


@register("dogs")
def load_dogs(root=None) -> ImageDataset:
    "Stanford Dogs with its official train/test lists; names are the breed folder after the first '-'."
    root = DOGS.root(root)
    lists = root / "lists"
    if not lists.is_dir() and (root / "train_list.mat").is_file():
        lists = root  # lists.tar extracted straight into the root
    img_dir = DOGS.require_dir(root, root / "Images")
    tr_files, tr_labels = _read_list_mat(root, lists / "train_list.mat")
    te_files, te_labels = _read_list_mat(root, lists / "test_list.mat")
    folder_of: dict[int, str] = {}
    for f, l in zip(tr_files + te_files, tr_labels + te_labels):
        folder = f.split("/")[0]
        if folder_of.setdefault(l, folder) != folder:
            raise DOGS.error(root, f"label {l} is used for both {folder_of[l]}/ and {folder}/ in the .mat lists")
    used = sorted(set(tr_labels))
    extra = sorted(set(te_labels) - set(used))
    if extra:
        raise DOGS.error(root, f"test_list.mat uses label {extra[0]} ({folder_of[extra[0]]}) absent from train_list.mat")
    index = {l: k for k, l in enumerate(used)}
    classes = [folder_of[l].split("-", 1)[-1] for l in used]
    split = lambda fs, ls: ImageSplit([inside(DOGS, root, img_dir, f, f"lists/*_list.mat entry {f!r}") for f in fs],
                                      [index[l] for l in ls])
    return ImageDataset("dogs", classes, split(tr_files, tr_labels), split(te_files, te_labels))


# ----------------------------------------------------------------------------------------------------------
MIT67 = Layout("MIT Indoor-67", "<root>/{Images/<class>/*.jpg,TrainImages.txt,TestImages.txt}",
               "Images/, TrainImages.txt and TestImages.txt", download="mit67")


@register("mit67")
def load_mit67(root=None) -> ImageDataset:
    "MIT Indoor-67 with the official TrainImages.txt / TestImages.txt split; classes are the sorted folders."
    root = MIT67.root(root)
    img_dir = MIT67.require_dir(root, root / "Images")
    train_txt = MIT67.require_file(root, root / "TrainImages.txt")
    test_txt = MIT67.require_file(root, root / "TestImages.txt")
    classes = list_subdirs(img_dir)
    if not classes:
        raise MIT67.error(root, "no class folders in Images/")
    index = {c: i for i, c in enumerate(classes)}

    def split(path: Path) -> ImageSplit:
        items, labels = [], []
        for n, line in enumerate(read_lines(path), 1):
            rel = line.replace("\\", "/")
            c = rel.split("/")[0]
            if c not in index:
                raise MIT67.error(root, f"{path.name} line {n} ({rel}) names class {c!r} with no Images/{c}/ folder")
            items.append(inside(MIT67, root, img_dir, rel, f"{path.name} line {n}"))
            labels.append(index[c])
        return ImageSplit(items, labels)

    return ImageDataset("mit67", classes, split(train_txt), split(test_txt))


# ----------------------------------------------------------------------------------------------------------
IMAGENET = Layout("ImageNet", "<root>/{train,val}/<wnid>/*.JPEG (val reorganised into one folder per wnid)",
                  "train/ and val/")


@register("imagenet")
def load_imagenet(root=None) -> ImageDataset:
    """ILSVRC-2012 in the ImageFolder layout; val is the test split. Names come from LOC_synset_mapping.txt or
    words.txt / synset_words.txt in the root when present, else they are the wnids."""
    root = IMAGENET.root(root)
    ds = _folder_dataset(IMAGENET, "imagenet", root, root / "train", root / "val")
    for f in ("LOC_synset_mapping.txt", "synset_words.txt", "words.txt"):
        if (root / f).is_file():
            ds.classes = _synset_names(root / f, ds.classes)
            break
    return ds


IMAGEFOLDER = Layout("ImageFolder", "<root>/{train,test}/<class>/*.{jpg,jpeg,png,bmp,webp}", "train/ and test/")


@register("imagefolder")
def load_imagefolder(root=None) -> ImageDataset:
    "Generic `train/<class>/*` + `test/<class>/*`; classes are the sorted train folders."
    root = IMAGEFOLDER.root(root)
    return _folder_dataset(IMAGEFOLDER, "imagefolder", root, root / "train", root / "test")
