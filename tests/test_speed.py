"Speed options of a recipe (cskd_fastai.speed): channels_last, torch.compile (+ export), augmentation on the device."
from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
import torch
from fastai.callback.core import Callback, CancelFitException
from fastai.learner import load_learner
from fastai.torch_core import TensorImage

from cskd_fastai import CSKD, cskd_learner
from cskd_fastai.batch_transforms import BatchFlip, BatchPadCrop, BatchResizedCropFlip
from cskd_fastai.speed import ChannelsLast, apply_speed_options, compile_model, is_compiled
from conftest import make_dls

CL = torch.channels_last


def _opts(**kw): return SimpleNamespace(**{"channels_last": False, "compile": False, **kw})


class _InputLog:
    "Forward pre-hook: (training mode, grad enabled, batch size, channels_last?) of every model call."
    def __init__(self, model): self.calls = []; self.h = model.register_forward_pre_hook(self)
    def __call__(self, m, args):
        x = args[0]
        self.calls.append((m.training, torch.is_grad_enabled(), x.shape[0], x.is_contiguous(memory_format=CL)))


def test_channels_last_reaches_model_for_anchors_and_partners(image_folder):
    dls = make_dls(image_folder, bs=4)
    learn = apply_speed_options(cskd_learner(dls, "small_cnn"), _opts(channels_last=True))
    log = _InputLog(learn.model)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    train = [c for c in log.calls if c[0]]
    anchors, partners = [c for c in train if c[1]], [c for c in train if not c[1]]
    assert anchors and len(anchors) == len(partners) == len(dls.train)
    assert all(c[3] for c in train), train                                   # anchors AND partners
    assert [c[2] for c in anchors] == [c[2] for c in partners]              # B anchors, B partners per step
    assert all(c[3] for c in log.calls if not c[0])                          # validation too
    conv = next(m for m in learn.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=CL)
    assert ChannelsLast.order < CSKD.order                                  # converts before CSKD splits


class _FixedBatch(Callback):
    "Train on one given paired batch, record predictions, loss and gradients, stop before the optimizer step."
    order = -50
    def __init__(self, b): self.b, self.out = b, {}
    def before_batch(self): self.learn.xb, self.learn.yb = (self.b[0].clone(),), (self.b[1].clone(),)
    def after_loss(self):
        cskd = next(c for c in self.learn.cbs if isinstance(c, CSKD))
        self.out.update(pred=self.pred.detach().clone(), partner=cskd.partner_pred.clone(), loss=self.loss.detach().clone())
    def after_backward(self):
        self.out["grads"] = [p.grad.detach().clone() for p in self.model.parameters()]
        raise CancelFitException()


def test_channels_last_matches_contiguous_on_one_batch(image_folder):
    dls = make_dls(image_folder, bs=4)
    b = dls.train.one_batch()
    assert not b[0].is_contiguous(memory_format=CL)
    runs = {}
    for cl in (False, True):
        learn = apply_speed_options(cskd_learner(dls, "small_cnn"), _opts(channels_last=cl))
        if cl: learn.model.load_state_dict(init)
        else: init = {k: v.clone() for k, v in learn.model.state_dict().items()}
        rec = _FixedBatch(b)
        with learn.no_bar(), learn.no_logging(): learn.fit(1, 0.1, cbs=rec)
        runs[cl] = rec.out
    a, c = runs[False], runs[True]
    for k in ("pred", "partner", "loss"): assert torch.allclose(a[k], c[k], atol=1e-5, rtol=0), k
    for g, h in zip(a["grads"], c["grads"]): assert torch.allclose(g, h, atol=1e-5, rtol=0)


def _compile_available():
    try:
        torch.compile(lambda t: t * 2 + 1, backend="eager")(torch.ones(2))
        return True, ""
    except Exception as e:
        return False, f"torch.compile unavailable here: {type(e).__name__}: {str(e).splitlines()[0][:120]}"


def test_export_after_compile_loads_and_predicts(image_folder, tmp_path, monkeypatch):
    ok, why = _compile_available()
    if not ok: pytest.skip(why)
    # aot_eager: dynamo + AOTAutograd (where fastai's tensor subclasses used to break tracing) without inductor's
    # C++ code generation, which takes minutes on a 2-core CPU; export does not depend on the backend.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    dls = make_dls(image_folder, bs=4)
    msgs = []
    learn = cskd_learner(dls, "small_cnn", path=tmp_path)
    assert compile_model(learn.model, log=msgs.append)
    log = _InputLog(learn.model)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    assert is_compiled(learn.model) and not msgs, msgs                       # really ran compiled, no fallback
    assert any(not c[1] for c in log.calls if c[0])                           # partner pass through the same module
    learn.export("export.pkl")
    assert is_compiled(learn.model)                                            # the training learner keeps it
    loaded = load_learner(tmp_path / "export.pkl")
    assert type(loaded.model) is type(learn.model) and loaded.model._compiled_call_impl is None
    assert set(loaded.model.state_dict()) == set(learn.model.state_dict())   # no `_orig_mod.` prefixes
    img = next(image_folder.rglob("*.png"))
    cls, _, probs = loaded.predict(img)
    assert str(cls) in ("cat", "dog", "emu") and probs.shape == (3,)


def test_compile_failure_warns_once_and_trains_eager(image_folder, monkeypatch):
    def broken(fn, **kw):
        def call(*a, **k): raise RuntimeError("no C++ compiler\nsecond line")
        return call
    monkeypatch.setattr(torch, "compile", broken)
    dls = make_dls(image_folder, bs=4)
    learn = cskd_learner(dls, "small_cnn")
    msgs = []
    assert compile_model(learn.model, log=msgs.append)
    b = dls.train.one_batch()
    with torch.no_grad(): eager = learn.model.eval()(b[0])
    with torch.no_grad(): again = learn.model(b[0])
    learn.model.train()
    learn.fit(1, 1e-3, cbs=_FixedBatch(b))                                    # a CS-KD step (anchors + partners)
    assert torch.equal(eager, again)
    assert len(msgs) == 1 and msgs[0].startswith("warning: train.compile:") and "\n" not in msgs[0]
    assert "no C++ compiler" in msgs[0] and "training eager" in msgs[0] and not is_compiled(learn.model)


def test_compile_does_not_hide_model_errors(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: (lambda *a, **k: (_ for _ in ()).throw(RuntimeError("x"))))
    m = torch.nn.Linear(3, 2)
    msgs = []
    compile_model(m, log=msgs.append)
    with pytest.raises(RuntimeError, match="mat1 and mat2"): m(torch.ones(1, 5))  # the model's own error, from eager
    assert not msgs and is_compiled(m)


# ---- augmentation on the device -----------------------------------------------------------------------
def _batch(n=8, c=3, h=12, w=12):
    return TensorImage(torch.rand(n, c, h, w))


def test_batch_flip_is_per_image_and_training_only():
    torch.manual_seed(0)
    x = _batch(64)
    y = BatchFlip(0.5)(x, split_idx=0)
    same, flipped = [(y[i] == x[i]).all().item() for i in range(64)], [(y[i] == x[i].flip(-1)).all().item() for i in range(64)]
    assert all(s or f for s, f in zip(same, flipped)) and 10 < sum(flipped) < 54
    assert isinstance(y, TensorImage)
    assert BatchFlip(1.0)(x, split_idx=1) is x                                 # valid/test: untouched


def test_batch_pad_crop_translates_with_black_border():
    torch.manual_seed(0)
    x = _batch(32) + 0.5                                                        # > 0 everywhere: zeros are padding
    p = 2
    y = BatchPadCrop(p)(x, split_idx=0)
    assert y.shape == x.shape and y.is_contiguous()
    xp = torch.nn.functional.pad(x.as_subclass(torch.Tensor), (p, p, p, p))
    for k in range(32):   # every output is one of the (2p+1)^2 crops of the zero-padded image
        assert any(torch.equal(y[k].as_subclass(torch.Tensor), xp[k, :, i:i + 12, j:j + 12])
                   for i in range(2 * p + 1) for j in range(2 * p + 1)), k
    assert BatchPadCrop(p)(x, split_idx=1) is x


def test_batch_resized_crop_flip_shapes_and_identity_at_full_scale():
    torch.manual_seed(0)
    x = _batch(16, h=20, w=20)
    y = BatchResizedCropFlip(12)(x, split_idx=0)
    assert y.shape == (16, 3, 12, 12) and torch.isfinite(y).all()
    full = BatchResizedCropFlip(20, min_scale=1.0, ratio=(1, 1), p_flip=0.0)(x, split_idx=0)
    assert torch.allclose(full, x, atol=1e-5)                                  # whole image, no flip: identity
    flip = BatchResizedCropFlip(20, min_scale=1.0, ratio=(1, 1), p_flip=1.0)(x, split_idx=0)
    assert torch.allclose(flip, x.flip(-1), atol=1e-5)


def test_gpu_augment_keeps_the_valid_pipeline(tmp_path):
    "gpu_augment moves training augmentation only: valid/test batches are identical to the item-level pipeline."
    from cskd_fastai.datasets import load_dataset
    from cskd_fastai.recipe import Recipe
    from cskd_fastai.testing.replicas import make_imagefolder
    from cskd_fastai.pipeline import build_dls
    root = make_imagefolder(tmp_path, n_per_class=4, n_classes=2, n_test_per_class=2, size=20)
    data = load_dataset("imagefolder", root)
    for augment in ("crop_flip", "resized_crop_flip"):
        out = {}
        for gpu in (False, True):
            r = Recipe.model_validate(dict(name="t", dataset=dict(name="imagefolder", image_size=16, valid_pct=0.25),
                                           model=dict(arch="small_cnn"), methods=[dict(name="cskd")],
                                           train=dict(epochs=1, bs=4, lr=0.1, augment=augment, gpu_augment=gpu)))
            dls = build_dls(data, r.dataset, r.train, 0, paired=True, device="cpu")
            out[gpu] = [dls.loaders[i].one_batch()[0] for i in (1, 2)]
            xb, yb = dls.train.one_batch()
            assert xb.shape == (8, 3, 16, 16) and torch.equal(yb[:4], yb[4:])
            names = [type(t).__name__ for t in dls.train.after_batch.fs]
            assert any(n.startswith("Batch") for n in names) == gpu, names
        for a, b in zip(out[False], out[True]): assert torch.equal(a, b), augment
