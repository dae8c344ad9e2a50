"""Tiny, format-exact replicas of the official dataset layouts, for tests and smoke runs.

Every `make_<name>(root, n_per_class=3, n_classes=5, ...)` writes real files (python pickles, MATLAB .mat via
`scipy.io.savemat`, idx files, small JPEG/PNG images) under `root` and returns the folder to pass to
`load_dataset(<name>, root)`. Images are `size`x`size` noise around a class-dependent mean colour
(`class_colour(label)`, `label` being the index `load_dataset` reports), so a model can learn them and a test
can check that labels follow the pixels. `replica_classes(name, n_classes)` gives the class names the loader
should report. Everything is deterministic given `seed`.

The replicas carry the quirks of the real releases that broke code tested on tidy replicas:
- display names that sort unlike the class ids (Tiny-ImageNet's words.txt names vs wnids, CUB's and Stanford
  Dogs' names vs their numeric/wnid order, ImageNet's synset names);
- odd file names (spaces, parentheses, '#', several dots) on the first image of each class;
- per-class counts: `n_per_class` / `n_test_per_class` may be a list (one count per class), so a replica can have
  a singleton class (count 1) or a class only in test (train count 0);
- `add_image_quirks(root, name)` re-saves a few images as 8-bit grey, CMYK JPEG and 16-bit grey PNG, as in the
  real files, and `break_images(root, name)` leaves a truncated and a zero-byte image behind.
"""
from __future__ import annotations

import colorsys
import gzip
import pickle
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

__all__ = ["add_image_quirks", "break_images", "make_cifar100", "make_cifar10", "make_tinyimagenet", "make_cub", "make_dogs", "make_mit67",
           "make_imagenet", "make_imagefolder", "make_fashion_mnist", "REPLICAS", "replica_classes",
           "class_colour", "class_grey", "CIFAR100_NAMES", "CIFAR10_NAMES"]

CIFAR100_NAMES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm").split()
CIFAR10_NAMES = "airplane automobile bird cat deer dog frog horse ship truck".split()
assert len(CIFAR100_NAMES) == 100 and len(CIFAR10_NAMES) == 10

_DOG_FOLDERS = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02085936-Maltese_dog", "n02086079-Pekinese",
                "n02086240-Shih-Tzu", "n02086646-Blenheim_spaniel", "n02086910-papillon", "n02087046-toy_terrier",
                "n02087394-Rhodesian_ridgeback", "n02088094-Afghan_hound"]
_MIT67_CLASSES = ["airport_inside", "artstudio", "auditorium", "bakery", "bar", "bathroom", "bedroom", "bookstore",
                  "bowling", "buffet"]
_FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot"]


# ----------------------------------------------------------------------------------------------------------
# pixels


def class_colour(label: int) -> np.ndarray:
    "Mean RGB colour (float, 0..255) of replica images of class `label`: well-spread hues, two saturations/values."
    h = (label * 0.6180339887) % 1.0
    s = 0.9 if label % 2 == 0 else 0.55
    v = 0.95 if (label // 2) % 2 == 0 else 0.65
    return np.array(colorsys.hsv_to_rgb(h, s, v)) * 255.0


def class_grey(label: int) -> float:
    "Mean grey level (0..255) of Fashion-MNIST replica images of class `label` (0..9)."
    return 25.0 + 22.0 * label


def _pixels(rng: np.random.Generator, label: int, size: int, noise: float = 20.0) -> np.ndarray:
    img = class_colour(label) + rng.normal(0.0, noise, (size, size, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _write_image(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = path.suffix.lower()
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".webp": "WEBP"}[ext]
    kw = {"quality": 95} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}
    Image.fromarray(arr).save(path, fmt, **kw)
    return path


def _write_text(path: Path, lines: Sequence[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{ln}\n" for ln in lines))
    return path


def _check(n_classes: int, limit: int | None = None, name: str = ""):
    if n_classes < 1 or (limit is not None and n_classes > limit):
        raise ValueError(f"{name} replica supports 1..{limit} classes, got {n_classes}")


# ----------------------------------------------------------------------------------------------------------
# class names the loaders report for each replica


def _wnid(i: int, base: int = 1440764) -> str:
    return f"n{base + 1000 * i:08d}"


# the first classes of the real releases, in id order: their names do not sort like their ids
_CUB_NAMES = ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross", "Groove_billed_Ani", "Crested_Auklet",
              "Least_Auklet", "Parakeet_Auklet", "Rhinoceros_Auklet", "Brewer_Blackbird", "Red_winged_Blackbird"]
_TINY_NAMES = ["goldfish", "European fire salamander", "bullfrog", "tailed frog", "American alligator",
               "boa constrictor", "trilobite", "scorpion", "black widow", "tarantula"]
_IMAGENET_NAMES = ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead", "electric ray", "stingray",
                   "cock", "hen", "ostrich"]


def _named(names: Sequence[str], i: int, fallback: str) -> str:
    # past the real list: descending letters keep the names sorting unlike the ids
    return names[i] if i < len(names) else f"{chr(ord('z') - i % 26)}_{fallback}_{i:03d}"


def _tiny_name(i: int) -> str:
    return _named(_TINY_NAMES, i, "thing")


def _cub_species(i: int) -> str:
    return _named(_CUB_NAMES, i, "Bird")


def _cub_folder(cid: int, i: int) -> str:
    return f"{cid:03d}.{_cub_species(i)}"


def _odd(j: int, stem: str) -> str:
    "The first file of each class gets a name with spaces, parentheses, '#' and extra dots, as downloads do."
    return f"{stem} (copy #1).v2" if j == 0 else stem


def _counts(n, n_classes: int, what: str = "n_per_class") -> list[int]:
    "One count per class: an int for every class, or a list of per-class counts (0 and 1 allowed)."
    counts = [int(n)] * n_classes if np.isscalar(n) else [int(c) for c in n]
    if len(counts) != n_classes or min(counts, default=0) < 0:
        raise ValueError(f"{what} must be an int or {n_classes} counts >= 0, got {n!r}")
    return counts


def _dog_folder(i: int) -> str:
    return _DOG_FOLDERS[i] if i < len(_DOG_FOLDERS) else f"n{3000000 + i:08d}-breed_{i:03d}"


def _mit_class(i: int) -> str:
    return _MIT67_CLASSES[i] if i < len(_MIT67_CLASSES) else f"scene_{i:03d}"


def replica_classes(name: str, n_classes: int = 5, names: bool = False) -> list[str]:
    """Class names, in label order, that `load_dataset(name, make_<name>(root, n_classes=n_classes))` reports
    (Fashion-MNIST always reports its 10 names; its replica uses labels 0..n_classes-1)."""
    r = range(n_classes)
    table: dict[str, Callable[[], list[str]]] = {
        "cifar100": lambda: CIFAR100_NAMES[:n_classes],
        "cifar10": lambda: CIFAR10_NAMES[:n_classes],
        "tinyimagenet": lambda: [_tiny_name(i) for i in r],
        "cub": lambda: [_cub_species(i) for i in r],
        "dogs": lambda: [_dog_folder(i).split("-", 1)[1] for i in r],
        "mit67": lambda: [_mit_class(i) for i in r],
        "imagenet": lambda: [_named(_IMAGENET_NAMES, i, "object") if names else _wnid(i) for i in r],
        "imagefolder": lambda: [f"class_{i:02d}" for i in r],
        "fashion_mnist": lambda: list(_FASHION_NAMES),  # a fixed dataset: always its 10 names
    }
    return list(table[name]())


# ----------------------------------------------------------------------------------------------------------
# array datasets


def _cifar_rows(rng, labels: Sequence[int]) -> np.ndarray:
    "(N, 3072) uint8 rows, channel-major (1024 R, 1024 G, 1024 B) like the official pickles."
    imgs = np.stack([_pixels(rng, l, 32) for l in labels]) if len(labels) else np.zeros((0, 32, 32, 3), np.uint8)
    return np.ascontiguousarray(imgs.transpose(0, 3, 1, 2).reshape(len(labels), 3072))


def _labels(n_classes: int, n, rng) -> list[int]:
    "n items of every class (or n[c] of class c), shuffled (the official files are not sorted by class)."
    labels = np.repeat(np.arange(n_classes), _counts(n, n_classes))
    rng.shuffle(labels)
    return labels.tolist()


def _pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def make_cifar100(root, n_per_class: int = 3, n_classes: int = 5, n_test_per_class: int = 2, seed: int = 0) -> Path:
    "`root/cifar-100-python/{train,test,meta}` with bytes keys, as python 2 wrote them. Returns `root`."
    _check(n_classes, 100, "CIFAR-100")
    root = Path(root); base = root / "cifar-100-python"
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_per_class), ("test", n_test_per_class)):
        labels = _labels(n_classes, n, rng)
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
    _check(n_classes, 10, "CIFAR-10")
    root = Path(root); base = root / "cifar-10-batches-py"
    rng = np.random.default_rng(seed)
    train = _labels(n_classes, n_per_class, rng)
    for b, part in enumerate(np.array_split(np.array(train, dtype=np.int64), 5), 1):
        labels = part.tolist()
        _pickle(base / f"data_batch_{b}", {b"batch_label": f"training batch {b} of 5".encode(), b"labels": labels,
                                           b"data": _cifar_rows(rng, labels),
                                           b"filenames": [f"b{b}_{k}.png".encode() for k in range(len(labels))]})
    test = _labels(n_classes, n_test_per_class, rng)
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
    _check(n_classes, 10, "Fashion-MNIST")
    root = Path(root); rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_per_class), ("t10k", n_test_per_class)):
        labels = np.array(_labels(n_classes, n, rng), dtype=np.uint8)
        means = np.array([class_grey(int(l)) for l in labels]).reshape(-1, 1, 1)
        imgs = np.clip(np.rint(means + rng.normal(0.0, 20.0, (len(labels), 28, 28))), 0, 255).astype(np.uint8)
        _idx(root / f"{prefix}-images-idx3-ubyte", imgs, compress)
        _idx(root / f"{prefix}-labels-idx1-ubyte", labels, compress)
    return root


# ----------------------------------------------------------------------------------------------------------
# file datasets


def make_tinyimagenet(root, n_per_class: int = 3, n_classes: int = 5, n_test_per_class: int = 2, size: int = 16,
                      seed: int = 0) -> Path:
    """`root/tiny-imagenet-200/` with wnids.txt (unsorted, like the official one), words.txt, train/<wnid>/images/
    and <wnid>_boxes.txt, val/images/ + val/val_annotations.txt; the unlabelled test/ folder too. Returns `root`."""
    _check(n_classes, None, "Tiny-ImageNet")
    root = Path(root); base = root / "tiny-imagenet-200"; rng = np.random.default_rng(seed)
    wnids = [_wnid(i, base=1443537) for i in range(n_classes)]
    _write_text(base / "wnids.txt", wnids[::-1])
    _write_text(base / "words.txt", ["n00001740\tentity"] + [f"{w}\t{_tiny_name(i)}, synonym {i}"
                                                             for i, w in enumerate(wnids)])
    for i, w in enumerate(wnids):
        boxes = []
        (base / "train" / w / "images").mkdir(parents=True, exist_ok=True)
        for j in range(_counts(n_per_class, n_classes)[i]):
            f = f"{_odd(j, f'{w}_{j}')}.JPEG"
            _write_image(base / "train" / w / "images" / f, _pixels(rng, i, size))
            boxes.append(f"{f}\t0\t0\t{size - 1}\t{size - 1}")
        _write_text(base / "train" / w / f"{w}_boxes.txt", boxes)
    ann = []
    for k, i in enumerate(_labels(n_classes, n_test_per_class, rng)):
        _write_image(base / "val" / "images" / f"val_{k}.JPEG", _pixels(rng, i, size))
        ann.append(f"val_{k}.JPEG\t{wnids[i]}\t0\t0\t{size - 1}\t{size - 1}")
    _write_text(base / "val" / "val_annotations.txt", ann)
    _write_image(base / "test" / "images" / "test_0.JPEG", _pixels(rng, 0, size))
    return root


def make_cub(root, n_per_class: int = 3, n_classes: int = 5, n_test_per_class: int = 2, size: int = 16,
             seed: int = 0, class_ids: Sequence[int] | None = None) -> Path:
    """`root/CUB_200_2011/{images.txt,image_class_labels.txt,train_test_split.txt,classes.txt,images/}`.
    `class_ids` (1-based, default 1..n_classes) may have gaps, as in a subset of the 200 classes. Returns `root`."""
    _check(n_classes, None, "CUB")
    class_ids = list(range(1, n_classes + 1)) if class_ids is None else sorted(int(c) for c in class_ids)
    if len(class_ids) != n_classes:
        raise ValueError(f"class_ids has {len(class_ids)} ids for n_classes={n_classes}")
    root = Path(root); base = root / "CUB_200_2011"; rng = np.random.default_rng(seed)
    images, labels, split, classes = [], [], [], []
    img_id = 0
    for i, cid in enumerate(class_ids):
        folder = _cub_folder(cid, i)
        classes.append(f"{cid} {folder}")
        flags = np.array([1] * _counts(n_per_class, n_classes)[i] + [0] * _counts(n_test_per_class, n_classes)[i])
        rng.shuffle(flags)  # train and test images interleave within a class, as in the official split
        for j, flag in enumerate(flags):
            img_id += 1
            rel = f"{folder}/{_odd(j, folder.split('.', 1)[1] + f'_{j:04d}_{img_id}')}.jpg"
            _write_image(base / "images" / rel, _pixels(rng, i, size))
            images.append(f"{img_id} {rel}"); labels.append(f"{img_id} {cid}"); split.append(f"{img_id} {flag}")
    _write_text(base / "images.txt", images)
    _write_text(base / "image_class_labels.txt", labels)
    _write_text(base / "train_test_split.txt", split)
    _write_text(base / "classes.txt", classes)
    _write_text(base / "bounding_boxes.txt", [f"{k} 0.0 0.0 {size}.0 {size}.0" for k in range(1, img_id + 1)])
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
    _check(n_classes, None, "Stanford Dogs")
    root = Path(root); rng = np.random.default_rng(seed)
    lists = {"train": [], "test": []}
    for i in range(n_classes):
        folder = _dog_folder(i); wnid = folder.split("-", 1)[0]
        n_tr = _counts(n_per_class, n_classes)[i]
        for j in range(n_tr + _counts(n_test_per_class, n_classes)[i]):
            rel = f"{folder}/{_odd(j, f'{wnid}_{1000 + j}')}.jpg"
            _write_image(root / "Images" / rel, _pixels(rng, i, size))
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
    _check(n_classes, None, "MIT Indoor-67")
    root = Path(root); rng = np.random.default_rng(seed)
    train, test = [], []
    for i in range(n_classes):
        c = _mit_class(i)
        n_tr, n_te = _counts(n_per_class, n_classes)[i], _counts(n_test_per_class, n_classes)[i]
        for j in range(n_tr + n_te + 1):
            rel = f"{c}/{_odd(j, f'{c}_{j:04d}')}.jpg"
            _write_image(root / "Images" / rel, _pixels(rng, i, size))
            if j < n_tr:
                train.append(rel)
            elif j < n_tr + n_te:
                test.append(rel)
    _write_text(root / "TrainImages.txt", train)
    _write_text(root / "TestImages.txt", test)
    return root


def make_imagenet(root, n_per_class: int = 3, n_classes: int = 5, n_test_per_class: int = 2, size: int = 16,
                  seed: int = 0, names: bool = False) -> Path:
    """`root/{train,val}/<wnid>/*.JPEG` (val already sorted into class folders); with `names=True` also a
    LOC_synset_mapping.txt so the loader reports readable names. Returns `root`."""
    _check(n_classes, None, "ImageNet")
    root = Path(root); rng = np.random.default_rng(seed)
    k = 0
    for i in range(n_classes):
        w = _wnid(i)
        (root / "train" / w).mkdir(parents=True, exist_ok=True); (root / "val" / w).mkdir(parents=True, exist_ok=True)
        for j in range(_counts(n_per_class, n_classes)[i]):
            _write_image(root / "train" / w / f"{_odd(j, f'{w}_{j}')}.JPEG", _pixels(rng, i, size))
        for j in range(_counts(n_test_per_class, n_classes)[i]):
            k += 1
            _write_image(root / "val" / w / f"ILSVRC2012_val_{k:08d}.JPEG", _pixels(rng, i, size))
    if names:
        _write_text(root / "LOC_synset_mapping.txt",
                    [f"{_wnid(i)} {_named(_IMAGENET_NAMES, i, 'object')}, thing {i}" for i in range(n_classes)])
    return root


_FOLDER_EXTS = [".png", ".JPG", ".jpeg", ".bmp", ".webp", ".PNG", ".jpg"]


def make_imagefolder(root, n_per_class: int = 3, n_classes: int = 5, n_test_per_class: int = 2, size: int = 16,
                     seed: int = 0) -> Path:
    """`root/{train,test}/<class>/*` with a mix of image extensions and cases, plus a non-image file per class
    folder that the loader must skip. Returns `root`."""
    _check(n_classes, None, "ImageFolder")
    root = Path(root); rng = np.random.default_rng(seed)
    for split, n in (("train", n_per_class), ("test", n_test_per_class)):
        for i in range(n_classes):
            d = root / split / f"class_{i:02d}"
            for j in range(_counts(n, n_classes)[i]):
                _write_image(d / f"{_odd(j, f'img_{j:03d}')}{_FOLDER_EXTS[(i + j) % len(_FOLDER_EXTS)]}",
                             _pixels(rng, i, size))
            _write_text(d / "notes.txt", ["not an image"])
    return root


# ----------------------------------------------------------------------------------------------------------
# image-file quirks of the real releases


def _train_files(root, name: str, n: int) -> list[Path]:
    "The first training file of each of the first `n` classes that have one (in the loader's view)."
    from ..datasets import load_dataset
    ds = load_dataset(name, root)
    firsts: dict[int, Path] = {}
    for item, label in zip(ds.train.items, ds.train.labels):
        if isinstance(item, Path): firsts.setdefault(label, item)
    files = [firsts[c] for c in sorted(firsts)][:n]
    if len(files) < n: raise ValueError(f"{name} replica at {root} has fewer than {n} classes with image files")
    return files


def add_image_quirks(root, name: str) -> dict[str, Path]:
    """Re-save one training image each as 8-bit greyscale ('L'), CMYK JPEG and 16-bit greyscale PNG (under its
    original name, as some real files are), keeping its class's brightness; returns `{quirk: path}`."""
    files = _train_files(root, name, 3)
    out = {}
    for quirk, f in zip(("grey", "cmyk", "16bit"), files):
        im = Image.open(f).convert("RGB")
        if quirk == "grey": im.convert("L").save(f, "JPEG" if f.suffix.lower() in (".jpg", ".jpeg") else "PNG")
        elif quirk == "cmyk": im.convert("CMYK").save(f, "JPEG", quality=95)
        else:   # 16-bit: values up to 65535, which a plain convert("RGB") clips to white
            a = np.asarray(im.convert("L"), dtype=np.uint16) * 257
            Image.fromarray(a.astype(np.uint16)).save(f, "PNG")
        out[quirk] = f
    return out


def break_images(root, name: str) -> dict[str, Path]:
    "Truncate one training image to half its bytes and empty another (zero bytes); returns `{quirk: path}`."
    files = _train_files(root, name, 2)
    data = files[0].read_bytes()
    files[0].write_bytes(data[: len(data) // 2])
    files[1].write_bytes(b"")
    return {"corrupt": files[0], "zero_byte": files[1]}


REPLICAS: dict[str, Callable[..., Path]] = {
    "cifar100": make_cifar100, "cifar10": make_cifar10, "tinyimagenet": make_tinyimagenet, "cub": make_cub,
    "dogs": make_dogs, "mit67": make_mit67, "imagenet": make_imagenet, "imagefolder": make_imagefolder,
    "fashion_mnist": make_fashion_mnist,
}
