"""The decoded-image cache (`train.cache`): same labels, the same validation/test pixels as the plain pipeline,
memory and disk equal, a changed source file rebuilds the disk cache."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cskd_fastai.cache import CachedCrop, build_cache, cache_side
from cskd_fastai.datasets import load_dataset
from cskd_fastai.recipe import Recipe
from cskd_fastai.testing.replicas import add_image_quirks, make_cub

from test_cli import cli


def _odd_sized(root: Path) -> Path:
    "Replace the replica's square images by photos of different shapes (landscape, portrait), as real data has."
    rng = np.random.default_rng(0)
    for i, f in enumerate(sorted(root.rglob("*.jpg"))):
        w, h = [(40, 24), (24, 40), (33, 33), (50, 20)][i % 4]
        a = np.asarray(Image.open(f).convert("RGB").resize((w, h)), dtype=np.int16) + rng.integers(-30, 30, (h, w, 3))
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(f, "JPEG", quality=95)
    return root


@pytest.fixture(scope="module")
def cub(tmp_path_factory):
    root = _odd_sized(make_cub(tmp_path_factory.mktemp("cub"), n_per_class=6, n_classes=3, n_test_per_class=3))
    add_image_quirks(root, "cub")   # grey, CMYK and 16-bit files go through the cache too
    return root


def _recipe(root, augment: str, cache: str, size: int = 16, epochs: int = 1) -> Recipe:
    return Recipe.model_validate(dict(
        name="c", dataset=dict(name="cub", root=str(root), image_size=size, valid_pct=0.25),
        model=dict(arch="small_cnn"), methods=[dict(name="cskd")],
        train=dict(epochs=epochs, bs=4, lr=0.05, schedule="one_cycle", augment=augment, cache=cache)))


def _batches(dl) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*[(x.as_subclass(torch.Tensor).clone(), y.clone()) for x, y in dl])
    return torch.cat(xs), torch.cat(ys)


@pytest.mark.parametrize("augment", ["resized_crop_flip", "crop_flip"])
@pytest.mark.parametrize("where", ["memory", "disk"])
def test_cached_valid_and_test_pixels_equal_the_plain_pipeline(cub, tmp_path, augment, where):
    from cskd_fastai.pipeline import build_dls
    data = load_dataset("cub", cub)
    r = _recipe(cub, augment, where)
    mode = "rrc" if augment == "resized_crop_flip" else "resize"
    cache = build_cache(list(data.train.items) + list(data.test.items), cache_side(16, augment), mode, where,
                        cache_dir=tmp_path, log=lambda m: None)
    plain = build_dls(data, r.dataset, r.train, 0, paired=True, device="cpu")
    cached = build_dls(data, r.dataset, r.train, 0, paired=True, device="cpu", cache=cache)
    for i in (1, 2):                                    # valid, test: identical images and labels
        xp, yp = _batches(plain.loaders[i]); xc, yc = _batches(cached.loaders[i])
        assert torch.equal(yp, yc) and torch.equal(xp, xc), (i, (xp - xc).abs().max())
    # training: same labels, images of the right size, paired partners of the same class
    (xb, yb), = [next(iter(cached.train))]
    assert xb.shape[-2:] == (16, 16) and torch.equal(yb[: len(yb) // 2], yb[len(yb) // 2:])
    assert [cached.vocab[int(y)] for _, y in cached.train_ds] == [plain.vocab[int(y)] for _, y in plain.train_ds]


@pytest.mark.parametrize("gpu_augment", [False, True])
def test_sample_ids_survive_the_cache(cub, gpu_augment):
    "PS-KD / cskd_stored batches end with sample ids; the cache's int -> image transform must leave them ids."
    from cskd_fastai.pipeline import build_dls
    data = load_dataset("cub", cub)
    r = _recipe(cub, "resized_crop_flip", "memory")
    r.train.gpu_augment = gpu_augment
    cache = build_cache(list(data.train.items) + list(data.test.items), cache_side(16, "resized_crop_flip"), "rrc",
                        "memory", log=lambda m: None)
    dls = build_dls(data, r.dataset, r.train, 0, paired=False, device="cpu", cache=cache, indexed=True)
    seen = []
    for x, y, i in dls.train:
        assert x.shape[1:] == (3, 16, 16) and i.shape == y.shape and not i.is_floating_point()
        assert [int(dls.train_ds[k][1]) for k in i.tolist()] == y.tolist()   # each id names its own sample
        seen += i.tolist()
    assert len(set(seen)) == len(seen) and set(seen) <= set(range(len(dls.train_ds)))


def test_training_crops_follow_random_resized_crop(cub, tmp_path):
    data = load_dataset("cub", cub)
    items = list(data.train.items)
    cache = build_cache(items, cache_side(16, "resized_crop_flip"), "rrc", "memory", log=lambda m: None)
    assert cache.side == 24 and cache.images.dtype == np.uint8             # 16 + fastai's val_xtra margin (8)
    assert tuple(cache.sizes[0]) == Image.open(items[0]).size        # the original (w, h) is kept for the geometry
    crop = CachedCrop(cache, 16)
    outs = [crop(0, split_idx=0) for _ in range(20)]
    assert all(o.shape == (3, 16, 16) and o.dtype == torch.uint8 for o in outs)
    assert len({o.numpy().tobytes() for o in outs}) > 10                # random crops
    v = crop(0, split_idx=1)
    assert torch.equal(v, crop(0, split_idx=1)) and v.shape == (3, 16, 16)   # validation: the fixed centre crop
    # the crop geometry is RandomResizedCrop's in *original* pixels: on a wide 50x20 photo every crop keeps an
    # aspect in 3/4..4/3 (not the squashed cache's), so none spans more than 4/3 * 20 = 26.7 of its 50 columns
    for _ in range(50):
        x0, y0, w, h = crop._box(50, 20)
        assert 0 <= x0 and x0 + w <= 50 and 0 <= y0 and y0 + h <= 20 and w <= 27
        assert 3 / 4 - 0.1 <= w / h <= 4 / 3 + 0.1


def test_disk_cache_is_reused_and_rebuilt_when_a_file_changes(cub, tmp_path):
    data = load_dataset("cub", cub)
    items = list(data.train.items) + list(data.test.items)
    logs = []
    a = build_cache(items, 32, "rrc", "disk", cache_dir=tmp_path, log=logs.append)
    b = build_cache(items, 32, "rrc", "disk", cache_dir=tmp_path, log=logs.append)
    assert "wrote" in logs[0] and "reusing" in logs[1] and a.path == b.path
    assert np.array_equal(np.asarray(a.images), np.asarray(b.images))
    f = items[3]
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(f, "JPEG")    # the dataset changed on disk
    os.utime(f, (time.time() + 5, time.time() + 5))
    c = build_cache(items, 32, "rrc", "disk", cache_dir=tmp_path, log=logs.append)
    assert "wrote" in logs[2] and c.path != a.path and not a.path.exists()   # rebuilt; the stale file removed
    assert np.asarray(c.images[3]).max() == 0 and tuple(c.sizes[3]) == (30, 20)
    assert not list(tmp_path.glob("*.tmp*"))


@pytest.mark.slow
def test_memory_and_disk_train_the_same_run_and_the_export_reads_files(cub, tmp_path):
    base = yaml.safe_load(yaml.safe_dump(_recipe(cub, "resized_crop_flip", "memory", epochs=2).model_dump(mode="json")))
    results = {}
    for where in ("memory", "disk", "none"):
        f = tmp_path / f"{where}.yaml"
        rec = dict(base, name=f"c{where}"); rec["train"] = dict(base["train"], cache=where)
        f.write_text(yaml.safe_dump(rec))
        code, out = cli("train", f, "--out", tmp_path / "o", "--no-progress")
        assert code == 0, out
        run = tmp_path / "o" / f"c{where}" / "cskd-lam1-T4" / "seed0"
        results[where] = json.loads((run / "metrics.json").read_text())["test"]
        if where != "none":
            code, out = cli("eval", run)                 # the export decodes files: same numbers as the cached eval
            assert code == 0, out
            got = json.loads(out[out.index("{"):])["test"]
            for k in got: assert got[k] == pytest.approx(results[where][k], abs=1e-6), (where, k)
    assert results["memory"] == results["disk"]          # the same arrays, the same run
    assert (tmp_path / "o" / ".cache").is_dir() and list((tmp_path / "o" / ".cache").glob("cub-rrc24-*.npy"))
