"""Dataset loaders against tiny format-exact replicas of every official layout (CPU, a few seconds)."""
from __future__ import annotations

import pickle
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cskd_fastai.datasets import (DATASETS, FASHION_MNIST_DEFAULT_ROOT, DatasetLayoutError, ImageDataset,
                                  ImageSplit, load_dataset)
from cskd_fastai.testing import REPLICAS, class_colour, class_grey, make_cub, make_imagenet, replica_classes

ALL = ["cifar100", "cifar10", "tinyimagenet", "cub", "dogs", "mit67", "imagenet", "imagefolder", "digits",
       "fashion_mnist"]
NEEDS_ROOT = [n for n in ALL if n not in ("digits", "fashion_mnist")]
N_CLS, N_TR, N_TE = 4, 3, 2
CUB100 = Path("/work/shared/datasets/cub100/CUB_200_2011")


def replica(name: str, tmp_path: Path, **kw) -> Path:
    return REPLICAS[name](tmp_path / name, n_per_class=N_TR, n_classes=N_CLS, n_test_per_class=N_TE, **kw)


def nearest_class(item, n_classes: int, grey: bool = False) -> int:
    arr = np.asarray(Image.open(item).convert("RGB")) if isinstance(item, Path) else item
    mean = arr.reshape(-1, 3).astype(np.float64).mean(0)
    if grey:
        return int(np.argmin([abs(mean.mean() - class_grey(c)) for c in range(n_classes)]))
    return int(np.argmin([np.linalg.norm(mean - class_colour(c)) for c in range(n_classes)]))


def test_registry():
    assert sorted(DATASETS) == sorted(ALL)
    assert set(REPLICAS) == set(ALL) - {"digits"}
    with pytest.raises(ValueError, match="unknown dataset 'nope'.*cifar100"):
        load_dataset("nope")


@pytest.mark.parametrize("name", sorted(REPLICAS))
def test_replica_roundtrip(name, tmp_path):
    root = replica(name, tmp_path)
    ds = load_dataset(name, root)
    assert isinstance(ds, ImageDataset) and isinstance(ds.train, ImageSplit) and ds.name == name
    assert ds.classes == replica_classes(name, N_CLS)
    assert len(ds.train.items) == len(ds.train.labels) == N_CLS * N_TR
    assert len(ds.test.items) == len(ds.test.labels) == N_CLS * N_TE
    assert Counter(ds.train.labels) == {c: N_TR for c in range(N_CLS)}
    assert Counter(ds.test.labels) == {c: N_TE for c in range(N_CLS)}
    for split in (ds.train, ds.test):
        assert all(type(l) is int for l in split.labels)
        for item, label in zip(split.items, split.labels):
            if isinstance(item, Path):
                assert item.is_file(), item
            else:
                assert item.dtype == np.uint8 and item.ndim == 3 and item.shape[2] == 3
            # labels follow the pixels: each image sits next to its class's mean colour
            assert nearest_class(item, N_CLS, grey=name == "fashion_mnist") == label, (item, label)
    if isinstance(ds.train.items[0], Path):
        assert not set(ds.train.items) & set(ds.test.items)


@pytest.mark.parametrize("name, sub", [("cifar100", "cifar-100-python"), ("cifar10", "cifar-10-batches-py"),
                                       ("tinyimagenet", "tiny-imagenet-200"), ("cub", "CUB_200_2011")])
def test_root_may_be_the_top_folder(name, sub, tmp_path):
    root = replica(name, tmp_path)
    a, b = load_dataset(name, root), load_dataset(name, str(root / sub))
    assert a.classes == b.classes and a.train.labels == b.train.labels and len(b.test.items) == N_CLS * N_TE


def test_dogs_lists_at_root(tmp_path):
    root = replica("dogs", tmp_path)
    for f in (root / "lists").iterdir():
        f.rename(root / f.name)
    (root / "lists").rmdir()
    assert len(load_dataset("dogs", root).train.items) == N_CLS * N_TR


# (dataset, path deleted relative to the replica root, text the message must contain)
MISSING = [
    ("cifar100", "cifar-100-python/train", "cifar-100-python/train"),
    ("cifar100", "cifar-100-python/test", "cifar-100-python/test"),
    ("cifar100", "cifar-100-python/meta", "cifar-100-python/meta"),
    ("cifar10", "cifar-10-batches-py/data_batch_3", "data_batch_3"),
    ("cifar10", "cifar-10-batches-py/test_batch", "test_batch"),
    ("cifar10", "cifar-10-batches-py/batches.meta", "batches.meta"),
    ("tinyimagenet", "tiny-imagenet-200/wnids.txt", "wnids.txt"),
    ("tinyimagenet", "tiny-imagenet-200/val/val_annotations.txt", "val/val_annotations.txt"),
    ("tinyimagenet", "tiny-imagenet-200/val/images", "val/images/"),
    ("tinyimagenet", "tiny-imagenet-200/train/n01445537", "train/n01445537/images/"),
    ("cub", "CUB_200_2011/images.txt", "images.txt"),
    ("cub", "CUB_200_2011/image_class_labels.txt", "image_class_labels.txt"),
    ("cub", "CUB_200_2011/train_test_split.txt", "train_test_split.txt"),
    ("cub", "CUB_200_2011/classes.txt", "classes.txt"),
    ("cub", "CUB_200_2011/images", "images/"),
    ("dogs", "Images", "Images/"),
    ("dogs", "lists/train_list.mat", "lists/train_list.mat"),
    ("dogs", "lists/test_list.mat", "lists/test_list.mat"),
    ("mit67", "Images", "Images/"),
    ("mit67", "TrainImages.txt", "TrainImages.txt"),
    ("mit67", "TestImages.txt", "TestImages.txt"),
    ("imagenet", "train", "train/"),
    ("imagenet", "val", "val/"),
    ("imagefolder", "train", "train/"),
    ("imagefolder", "test", "test/"),
    ("fashion_mnist", "train-images-idx3-ubyte.gz", "train-images-idx3-ubyte"),
    ("fashion_mnist", "t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte"),
]


@pytest.mark.parametrize("name, rel, token", MISSING, ids=[f"{n}-{r.split('/')[-1]}" for n, r, _ in MISSING])
def test_missing_file_names_it(name, rel, token, tmp_path):
    root = replica(name, tmp_path)
    target = root / rel
    assert target.exists(), target
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(DatasetLayoutError) as exc:
        load_dataset(name, root)
    msg = str(exc.value)
    assert isinstance(exc.value, ValueError)
    assert "\n" not in msg and "missing " in msg and token in msg and "expected" in msg and str(root) in msg, msg


@pytest.mark.parametrize("name", NEEDS_ROOT + ["fashion_mnist"])
def test_nonexistent_root(name, tmp_path):
    with pytest.raises(DatasetLayoutError) as exc:
        load_dataset(name, tmp_path / "nowhere")
    msg = str(exc.value)
    assert "\n" not in msg and "does not exist" in msg and "--data-root DIR" in msg and "dataset.root" in msg, msg


@pytest.mark.parametrize("name", NEEDS_ROOT)
def test_no_root_given(name):
    with pytest.raises(DatasetLayoutError, match="needs a data root.*--data-root DIR.*dataset.root"):
        load_dataset(name, None)


@pytest.mark.parametrize("name", NEEDS_ROOT)
def test_empty_root_names_first_required_entry(name, tmp_path):
    with pytest.raises(DatasetLayoutError, match="missing .*expected"):
        load_dataset(name, tmp_path)


# ----------------------------------------------------------------------------------------------------------
# malformed contents


def test_imagefolder_test_class_absent_from_train(tmp_path):
    root = replica("imagefolder", tmp_path)
    shutil.copytree(root / "test" / "class_01", root / "test" / "zebra")
    with pytest.raises(DatasetLayoutError, match=r"test/zebra/ has no train/zebra/"):
        load_dataset("imagefolder", root)


def test_imagefolder_does_not_decode(tmp_path):
    # zero-byte "images": listing must not open them; extensions are matched case-insensitively
    for split, n in (("train", 300), ("test", 100)):
        for c in ("a", "b"):
            d = tmp_path / split / c
            d.mkdir(parents=True)
            for k in range(n):
                (d / f"{k}.{['jpg', 'JPEG', 'Png', 'webp', 'bmp'][k % 5]}").touch()
            (d / "Thumbs.db").touch()
            (d / "sub.jpg").mkdir()  # a folder with an image-like name is not an item
    ds = load_dataset("imagefolder", tmp_path)
    assert ds.classes == ["a", "b"] and len(ds.train.items) == 600 and len(ds.test.items) == 200
    assert ds.train.labels == [0] * 300 + [1] * 300


def test_imagenet_flat_val_is_rejected(tmp_path):
    root = replica("imagenet", tmp_path)
    for d in list((root / "val").iterdir()):
        for f in d.iterdir():
            f.rename(root / "val" / f.name)
        d.rmdir()
    with pytest.raises(DatasetLayoutError, match="val/ holds images directly"):
        load_dataset("imagenet", root)


def test_imagenet_synset_names(tmp_path):
    root = make_imagenet(tmp_path, n_per_class=1, n_classes=3, n_test_per_class=1, names=True)
    assert load_dataset("imagenet", root).classes == replica_classes("imagenet", 3, names=True)


def test_cub_noncontiguous_class_ids(tmp_path):
    root = make_cub(tmp_path, n_per_class=2, n_classes=3, n_test_per_class=1, class_ids=[4, 17, 200])
    ds = load_dataset("cub", root)
    assert ds.classes == replica_classes("cub", 3)
    assert sorted(set(ds.train.labels)) == [0, 1, 2] and Counter(ds.test.labels) == {0: 1, 1: 1, 2: 1}
    assert all(f"{cid:03d}." in p.parent.name for p, l in zip(ds.train.items, ds.train.labels)
               for cid in [[4, 17, 200][l]])


def test_cub_missing_label_entry(tmp_path):
    root = replica("cub", tmp_path)
    f = root / "CUB_200_2011" / "image_class_labels.txt"
    f.write_text("".join(f"{ln}\n" for ln in f.read_text().splitlines()[:-1]))
    with pytest.raises(DatasetLayoutError, match="image_class_labels.txt has no entry for image id"):
        load_dataset("cub", root)


def test_cifar_corrupt_pickle(tmp_path):
    root = replica("cifar100", tmp_path)
    (root / "cifar-100-python" / "meta").write_bytes(b"not a pickle")
    with pytest.raises(DatasetLayoutError, match="cannot read meta"):
        load_dataset("cifar100", root)
    with open(root / "cifar-100-python" / "meta", "wb") as f:
        pickle.dump({b"coarse_label_names": []}, f)
    with pytest.raises(DatasetLayoutError, match="meta has no 'fine_label_names'"):
        load_dataset("cifar100", root)


def test_tinyimagenet_unknown_val_wnid(tmp_path):
    root = replica("tinyimagenet", tmp_path)
    ann = root / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text() + "val_99.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(DatasetLayoutError, match="n99999999 absent from wnids.txt"):
        load_dataset("tinyimagenet", root)


def test_tinyimagenet_without_words_uses_wnids(tmp_path):
    root = replica("tinyimagenet", tmp_path)
    (root / "tiny-imagenet-200" / "words.txt").unlink()
    assert load_dataset("tinyimagenet", root).classes == sorted(
        (root / "tiny-imagenet-200" / "wnids.txt").read_text().split())


def test_mit67_unknown_class_in_list(tmp_path):
    root = replica("mit67", tmp_path)
    with open(root / "TestImages.txt", "a") as f:
        f.write("winecellar/foo.jpg\n")
    with pytest.raises(DatasetLayoutError, match="TestImages.txt line .*'winecellar'"):
        load_dataset("mit67", root)


def test_dogs_test_label_absent_from_train(tmp_path):
    from scipy.io import loadmat, savemat
    root = replica("dogs", tmp_path)
    p = root / "lists" / "train_list.mat"
    m = loadmat(str(p))
    keep = np.asarray(m["labels"]).ravel() != N_CLS  # drop the last breed from train only
    savemat(str(p), {"file_list": m["file_list"][keep], "annotation_list": m["annotation_list"][keep],
                     "labels": m["labels"][keep]})
    with pytest.raises(DatasetLayoutError, match=f"test_list.mat uses label {N_CLS}"):
        load_dataset("dogs", root)


# ----------------------------------------------------------------------------------------------------------
# real data shipped with the environment


def test_digits_split():
    ds = load_dataset("digits", "/ignored")
    assert ds.classes == [str(d) for d in range(10)]
    assert (len(ds.train.items), len(ds.test.items)) == (1257, 540)
    tr, te = Counter(ds.train.labels), Counter(ds.test.labels)
    for c in range(10):
        assert abs(te[c] - 0.3 * (tr[c] + te[c])) <= 1, (c, tr[c], te[c])  # stratified
    x = ds.train.items[0]
    assert x.shape == (8, 8, 3) and x.dtype == np.uint8
    assert (x[..., 0] == x[..., 1]).all() and (x[..., 1] == x[..., 2]).all()
    assert max(int(i.max()) for i in ds.train.items) == 255
    again = load_dataset("digits")
    assert again.train.labels == ds.train.labels and all((a == b).all() for a, b in zip(again.test.items, ds.test.items))


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_replica_formats_and_subsample(compress, tmp_path):
    root = REPLICAS["fashion_mnist"](tmp_path, n_per_class=5, n_classes=3, n_test_per_class=1, compress=compress)
    assert any(p.suffix == ".gz" for p in root.iterdir()) == compress
    full = load_dataset("fashion_mnist", root)
    assert len(full.train.items) == 15 and full.train.items[0].shape == (28, 28, 3)
    sub = load_dataset("fashion-mnist", root, train_per_class=2)
    assert Counter(sub.train.labels) == {0: 2, 1: 2, 2: 2} and len(sub.test.items) == 3
    assert load_dataset("fashion_mnist", root, train_per_class=2).train.labels == sub.train.labels


def test_fashion_mnist_bad_magic(tmp_path):
    root = REPLICAS["fashion_mnist"](tmp_path, compress=False)
    (root / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 8)
    with pytest.raises(DatasetLayoutError, match="train-labels-idx1-ubyte has idx magic"):
        load_dataset("fashion_mnist", root)


def test_fashion_mnist_default_root_missing(tmp_path, monkeypatch):
    import cskd_fastai.datasets.arrays as arrays
    monkeypatch.setattr(arrays, "FASHION_MNIST_DEFAULT_ROOT", tmp_path / "absent")
    with pytest.raises(DatasetLayoutError, match="absent does not exist; install it with apt-get install "
                                                 "dataset-fashion-mnist.*--data-root DIR"):
        load_dataset("fashion_mnist")


@pytest.mark.skipif(not FASHION_MNIST_DEFAULT_ROOT.is_dir(),
                    reason=f"Fashion-MNIST not installed at {FASHION_MNIST_DEFAULT_ROOT} "
                           "(apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_debian():
    ds = load_dataset("fashion_mnist")
    assert (len(ds.train.items), len(ds.test.items)) == (60000, 10000) and len(ds.classes) == 10
    assert Counter(ds.train.labels) == {c: 6000 for c in range(10)}
    assert ds.test.items[0].shape == (28, 28, 3) and ds.test.items[0].dtype == np.uint8
    sub = load_dataset("fashion_mnist", None, train_per_class=7)
    assert Counter(sub.train.labels) == {c: 7 for c in range(10)} and len(sub.test.items) == 10000
    assert load_dataset("fashion_mnist", train_per_class=7).train.labels == sub.train.labels


@pytest.mark.skipif(not CUB100.is_dir(), reason=f"real CUB subset not present at {CUB100}")
@pytest.mark.parametrize("root", [CUB100.parent, CUB100])
def test_cub100_real(root):
    ds = load_dataset("cub", root)
    assert (len(ds.classes), len(ds.train.items), len(ds.test.items)) == (100, 2999, 2903)
    assert ds.classes[0] == "Black_footed_Albatross" and set(ds.train.labels) == set(range(100))
    assert set(ds.test.labels) == set(range(100))
    for p in ds.train.items[::300] + ds.test.items[::300]:
        assert p.is_file(), p
    assert ds.train.items[0].parent.name.split(".", 1)[1] == ds.classes[ds.train.labels[0]]
