"Image-file replicas: Tiny-ImageNet, CUB-200-2011, Stanford Dogs, MIT Indoor-67, ImageNet and a plain ImageFolder."
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .common import (check_n_classes, noise_image, odd_name, per_class_counts, shuffled_labels, wnid, write_image,
                     write_text)
from .names import IMAGENET_NAMES, cub_folder, dog_folder, mit_class, named, tiny_name

__all__ = ["make_tinyimagenet", "make_cub", "make_dogs", "make_mit67", "make_imagenet", "make_imagefolder"]


def make_tinyimagenet(root, n_per_class: int = 3, n_classes: int = 5, n_test_per_class: int = 2, size: int = 16,
                      seed: int = 0) -> Path:
    """`root/tiny-imagenet-200/` with wnids.txt (unsorted, like the official one), words.txt, train/<wnid>/images/
    and <wnid>_boxes.txt, val/images/ + val/val_annotations.txt; the unlabelled test/ folder too. Returns `root`."""
    check_n_classes(n_classes, None, "Tiny-ImageNet")
    root = Path(root); base = root / "tiny-imagenet-200"; rng = np.random.default_rng(seed)
    wnids = [wnid(i, base=1443537) for i in range(n_classes)]
    write_text(base / "wnids.txt", wnids[::-1])
    write_text(base / "words.txt", ["n00001740\tentity"] + [f"{w}\t{tiny_name(i)}, synonym {i}"
                                                             for i, w in enumerate(wnids)])
    for i, w in enumerate(wnids):
        boxes = []
        (base / "train" / w / "images").mkdir(parents=True, exist_ok=True)
        for j in range(per_class_counts(n_per_class, n_classes)[i]):
            f = f"{odd_name(j, f'{w}_{j}')}.JPEG"
            write_image(base / "train" / w / "images" / f, noise_image(rng, i, size))
            boxes.append(f"{f}\t0\t0\t{size - 1}\t{size - 1}")
        write_text(base / "train" / w / f"{w}_boxes.txt", boxes)
    ann = []
    for k, i in enumerate(shuffled_labels(n_classes, n_test_per_class, rng)):
        write_image(base / "val" / "images" / f"val_{k}.JPEG", noise_image(rng, i, size))
        ann.append(f"val_{k}.JPEG\t{wnids[i]}\t0\t0\t{size - 1}\t{size - 1}")
    write_text(base / "val" / "val_annotations.txt", ann)
    write_image(base / "test" / "images" / "test_0.JPEG", noise_image(rng, 0, size))
    return root


def make_cub(root, n_per_class: int = 3, n_classes: int = 5, n_test_per_class: int = 2, size: int = 16,
             seed: int = 0, class_ids: Sequence[int] | None = None) -> Path:
    """`root/CUB_200_2011/{images.txt,image_class_labels.txt,train_test_split.txt,classes.txt,images/}`.
    `class_ids` (1-based, default 1..n_classes) may have gaps, as in a subset of the 200 classes. Returns `root`."""
    check_n_classes(n_classes, None, "CUB")
    class_ids = list(range(1, n_classes + 1)) if class_ids is None else sorted(int(c) for c in class_ids)
    if len(class_ids) != n_classes:
        raise ValueError(f"class_ids has {len(class_ids)} ids for n_classes={n_classes}")
    root = Path(root); base = root / "CUB_200_2011"; rng = np.random.default_rng(seed)
    images, labels, split, classes = [], [], [], []
    img_id = 0
    for i, cid in enumerate(class_ids):
        folder = cub_folder(cid, i)
        classes.append(f"{cid} {folder}")
        flags = np.array([1] * per_class_counts(n_per_class, n_classes)[i] + [0] * per_class_counts(n_test_per_class, n_classes)[i])
        rng.shuffle(flags)  # train and test images interleave within a class, as in the official split
        for j, flag in enumerate(flags):
            img_id += 1
            rel = f"{folder}/{odd_name(j, folder.split('.', 1)[1] + f'_{j:04d}_{img_id}')}.jpg"
            write_image(base / "images" / rel, noise_image(rng, i, size))
            images.append(f"{img_id} {rel}"); labels.append(f"{img_id} {cid}"); split.append(f"{img_id} {flag}")
    write_text(base / "images.txt", images)
    write_text(base / "image_class_labels.txt", labels)
    write_text(base / "train_test_split.txt", split)
    write_text(base / "classes.txt", classes)
    write_text(base / "bounding_boxes.txt", [f"{k} 0.0 0.0 {size}.0 {size}.0" for k in range(1, img_id + 1)])
    return root


def _cell(strings: Sequence[str]) -> np.ndarray:
    "An N x 1 MATLAB cell array of strings (what `loadmat` returns for the official lists)."
    c = np.empty((len(strings), 1), dtype=object)
    for k, s in enumerate(strings):
        c[k, 0] = s
    return c


def make_dogs(root, n_per_class: int = 3, n_classes: int = 5, n_test_per_class: int = 2, size: int = 16,
              seed: int = 0) -> Path:
    """`root/Images/<wnid>-<breed>/*.jpg` and `root/lists/{train_list,test_list,file_list}.mat` with
    `file_list`, `annotation_list` and 1-based `labels`, written by `scipy.io.savemat`. Returns `root`."""
    from scipy.io import savemat
    check_n_classes(n_classes, None, "Stanford Dogs")
    root = Path(root); rng = np.random.default_rng(seed)
    lists = {"train": [], "test": []}
    for i in range(n_classes):
        folder = dog_folder(i); wnid = folder.split("-", 1)[0]
        n_tr = per_class_counts(n_per_class, n_classes)[i]
        for j in range(n_tr + per_class_counts(n_test_per_class, n_classes)[i]):
            rel = f"{folder}/{odd_name(j, f'{wnid}_{1000 + j}')}.jpg"
            write_image(root / "Images" / rel, noise_image(rng, i, size))
            lists["train" if j < n_tr else "test"].append((rel, i + 1))
    (root / "lists").mkdir(parents=True, exist_ok=True)
    every = lists["train"] + lists["test"]
    for name, entries in (("train_list", lists["train"]), ("test_list", lists["test"]), ("file_list", every)):
        files = [f for f, _ in entries]
        savemat(str(root / "lists" / f"{name}.mat"),
                {"file_list": _cell(files), "annotation_list": _cell([f.rsplit(".", 1)[0] for f in files]),
                 "labels": np.array([[float(l)] for _, l in entries]).reshape(-1, 1)})
    return root


def make_mit67(root, n_per_class: int = 3, n_classes: int = 5, n_test_per_class: int = 2, size: int = 16,
               seed: int = 0) -> Path:
    """`root/Images/<class>/*.jpg` (plus one image per class in neither list, as in the official release) and
    `root/{TrainImages,TestImages}.txt`. Returns `root`."""
    check_n_classes(n_classes, None, "MIT Indoor-67")
    root = Path(root); rng = np.random.default_rng(seed)
    train, test = [], []
    for i in range(n_classes):
        c = mit_class(i)
        n_tr, n_te = per_class_counts(n_per_class, n_classes)[i], per_class_counts(n_test_per_class, n_classes)[i]
        for j in range(n_tr + n_te + 1):
            rel = f"{c}/{odd_name(j, f'{c}_{j:04d}')}.jpg"
            write_image(root / "Images" / rel, noise_image(rng, i, size))
            if j < n_tr:
                train.append(rel)
            elif j < n_tr + n_te:
                test.append(rel)
    write_text(root / "TrainImages.txt", train)
    write_text(root / "TestImages.txt", test)
    return root


def make_imagenet(root, n_per_class: int = 3, n_classes: int = 5, n_test_per_class: int = 2, size: int = 16,
                  seed: int = 0, names: bool = False) -> Path:
    """`root/{train,val}/<wnid>/*.JPEG` (val already sorted into class folders); with `names=True` also a
    LOC_synset_mapping.txt so the loader reports readable names. Returns `root`."""
    check_n_classes(n_classes, None, "ImageNet")
    root = Path(root); rng = np.random.default_rng(seed)
    k = 0
    for i in range(n_classes):
        w = wnid(i)
        (root / "train" / w).mkdir(parents=True, exist_ok=True); (root / "val" / w).mkdir(parents=True, exist_ok=True)
        for j in range(per_class_counts(n_per_class, n_classes)[i]):
            write_image(root / "train" / w / f"{odd_name(j, f'{w}_{j}')}.JPEG", noise_image(rng, i, size))
        for j in range(per_class_counts(n_test_per_class, n_classes)[i]):
            k += 1
            write_image(root / "val" / w / f"ILSVRC2012_val_{k:08d}.JPEG", noise_image(rng, i, size))
    if names:
        write_text(root / "LOC_synset_mapping.txt",
                    [f"{wnid(i)} {named(IMAGENET_NAMES, i, 'object')}, thing {i}" for i in range(n_classes)])
    return root


_FOLDER_EXTS = [".png", ".JPG", ".jpeg", ".bmp", ".webp", ".PNG", ".jpg"]


def make_imagefolder(root, n_per_class: int = 3, n_classes: int = 5, n_test_per_class: int = 2, size: int = 16,
                     seed: int = 0) -> Path:
    """`root/{train,test}/<class>/*` with a mix of image extensions and cases, plus a non-image file per class
    folder that the loader must skip. Returns `root`."""
    check_n_classes(n_classes, None, "ImageFolder")
    root = Path(root); rng = np.random.default_rng(seed)
    for split, n in (("train", n_per_class), ("test", n_test_per_class)):
        for i in range(n_classes):
            d = root / split / f"class_{i:02d}"
            for j in range(per_class_counts(n, n_classes)[i]):
                write_image(d / f"{odd_name(j, f'img_{j:03d}')}{_FOLDER_EXTS[(i + j) % len(_FOLDER_EXTS)]}",
                             noise_image(rng, i, size))
            write_text(d / "notes.txt", ["not an image"])
    return root
