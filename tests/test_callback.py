"The CSKD callback: exact loss values, no gradient to partners, composition, logging, export."
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from fastai.callback.core import Callback
from fastai.callback.mixup import CutMix, MixUp
from fastai.callback.training import GradientAccumulation
from fastai.callback.progress import CSVLogger
from fastai.callback.schedule import SchedLin
from fastai.losses import CrossEntropyLossFlat
from fastai.optimizer import SGD
from torch import nn

from cskd_fastai import CSKD, class_wise_kd, cskd_learner
from conftest import make_dls, write_folder


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_kd(anchor, partner, T):
    "T² · mean_i Σ_k p_k (log p_k − log q_k), p = softmax(partner/T), q = softmax(anchor/T), by hand."
    lp, lq = np_log_softmax(partner / T), np_log_softmax(anchor / T)
    return T * T * float((np.exp(lp) * (lp - lq)).sum(-1).mean())


class TinyNet(nn.Module):
    "Deterministic (no BatchNorm, no dropout) so a loss can be recomputed by hand."
    def __init__(self, n_out=3, bn=False):
        super().__init__()
        self.bn = nn.BatchNorm2d(3) if bn else nn.Identity()
        self.fc = nn.Linear(3 * 16 * 16, n_out)
    def forward(self, x): return self.fc(self.bn(x).flatten(1))


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_kd_matches_hand_computation(T):
    a = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [5.0, -1.0, 0.5]])
    p = np.array([[3.0, 2.0, 1.0], [1.0, 0.0, -1.0], [5.0, -1.0, 0.5]])
    got = class_wise_kd(torch.tensor(a), torch.tensor(p), T).item()
    assert got == pytest.approx(np_kd(a, p, T), abs=1e-6)
    assert class_wise_kd(torch.tensor(p), torch.tensor(p), T).item() == pytest.approx(0.0, abs=1e-7)


class Capture(Callback):
    "Runs after every other callback's after_loss and recomputes the loss from scratch."
    order = 100
    def __init__(self): self.rows = []
    def after_loss(self):
        if not self.training: return
        m, cb = self.learn.model, self.learn.cskd
        with torch.no_grad():
            za = m(self.learn.xb[0]).double().numpy(); zp = m(cb.partner_xb[0]).double().numpy()
        y = self.learn.yb[0].numpy()
        ce = float(-np_log_softmax(za)[np.arange(len(y)), y].mean())
        lam = cb.lam_at(self.learn.pct_train)
        self.rows.append((self.learn.loss.item(), self.learn.loss_grad.item(), ce, np_kd(za, zp, cb.temp), lam))
        self.learn.loss = self.learn.loss.float()   # Recorder's smoothing expects float32


class ToDouble(Callback):
    "Run the model in float64 so the comparison with the hand computation is exact to 1e-6."
    order = CSKD.order - 1
    def before_batch(self): self.learn.xb = tuple(x.double() for x in self.learn.xb)


@pytest.mark.parametrize("lam,T", [(1.0, 4.0), (3.0, 4.0), (0.5, 2.0)])
def test_recorded_loss_is_ce_plus_lambda_kd(dls, lam, T):
    cap = Capture()
    learn = cskd_learner(dls, TinyNet().double(), lam=lam, temp=T, cbs=[cap, ToDouble()], opt_func=SGD, lr=0.01)
    learn.fit(1)
    assert len(cap.rows) == len(dls.train)
    for loss, loss_grad, ce, kd, lam_now in cap.rows:
        assert lam_now == lam
        assert loss == pytest.approx(ce + lam * kd, abs=1e-6)
        assert loss_grad == pytest.approx(loss, abs=1e-6)
    assert any(r[3] > 1e-4 for r in cap.rows)          # the KD term is really there


class LeafInputs(Callback):
    "Make the whole paired batch a leaf tensor before CSKD splits it, and read its gradient after backward."
    order = CSKD.order - 1
    def __init__(self): self.grads = []
    def before_batch(self):
        if self.training: self.leaf = self.learn.xb[0].clone().requires_grad_(True); self.learn.xb = (self.leaf,)
    def after_backward(self): self.grads.append(self.leaf.grad.detach().clone())


def test_no_gradient_reaches_partners(dls):
    leaf = LeafInputs()
    learn = cskd_learner(dls, TinyNet(), lam=3.0, cbs=[leaf], opt_func=SGD, lr=0.01)
    learn.fit(1)
    assert leaf.grads
    for g in leaf.grads:
        b = len(g) // 2
        assert torch.count_nonzero(g[b:]) == 0                  # partners: exactly zero
        assert (g[:b].flatten(1).abs().sum(1) > 0).all()          # every anchor gets gradient


def test_partner_pass_is_separate_and_in_train_mode(dls):
    net = TinyNet(bn=True)
    calls = []
    net.bn.register_forward_hook(lambda mod, inp, out: calls.append((mod.training, inp[0].shape[0], torch.is_grad_enabled())))
    learn = cskd_learner(dls, net, lam=1.0, opt_func=SGD, lr=0.01)
    learn.fit(1)
    train_calls = [c for c in calls if c[0]]
    b = dls.train.bs
    # per training batch: anchors (with grad) then partners (no grad), each its own BatchNorm batch of B
    assert train_calls[0] == (True, b, True) and train_calls[1] == (True, b, False)
    assert [c[2] for c in train_calls] == [True, False] * (len(train_calls) // 2)


def test_partner_mode_eval_runs_partners_in_eval_mode_and_restores_every_module(dls):
    """The diagnostic `partner_mode='eval'`: anchors in train mode, partners with BatchNorm on running statistics (no
    update of them) and no grad; each module's mode afterwards is the one it had, a BatchNorm kept in eval too."""
    from cskd_fastai import CSKD
    net = TinyNet(bn=True)
    calls = []
    net.bn.register_forward_hook(lambda mod, inp, out: calls.append((mod.training, torch.is_grad_enabled())))
    learn = cskd_learner(dls, net, opt_func=SGD, lr=0.01)
    learn.cbs = learn.cbs.filter(lambda cb: not isinstance(cb, CSKD))
    learn.add_cb(CSKD(lam=1.0, partner_mode="eval"))
    seen = []
    class Check(Callback):
        order = 90
        def after_pred(self):
            if self.training: seen.append((self.model.training, net.bn.training, net.bn.num_batches_tracked.item()))
    learn.fit(1, cbs=Check())
    train = [c for c in calls if c[1] or not c[0]][: 2 * len(dls.train)]
    assert train[0] == (True, True) and train[1] == (False, False)    # anchor: train + grad; partner: eval, no grad
    assert all(m and bn for m, bn, _ in seen)                          # back in train mode for the anchors' loss
    # running statistics move once per batch (anchors), not twice
    assert [n for *_, n in seen] == list(range(1, len(seen) + 1))
    with pytest.raises(ValueError, match="needs a partner pass"): CSKD(partner_mode="eval", variant="in_batch")
    with pytest.raises(ValueError, match="partner_mode must be"): CSKD(partner_mode="test")


def test_validation_is_plain_cross_entropy(dls):
    learn = cskd_learner(dls, TinyNet(), lam=5.0, opt_func=SGD, lr=0.01)
    learn.fit(1)
    valid_loss = learn.validate()[0]
    preds, targs = learn.get_preds(act=lambda x: x)
    assert len(preds) == len(dls.valid_ds)
    assert valid_loss == pytest.approx(CrossEntropyLossFlat()(preds, targs).item(), abs=1e-5)
    preds0, _ = learn.get_preds(ds_idx=0, act=lambda x: x)
    assert len(preds0) == len(dls.train_ds)                   # train set predicted once, unpaired


class BatchSizes(Callback):
    order = 50
    def __init__(self): self.sizes = []
    def after_pred(self):
        if self.training: self.sizes.append(self.learn.xb[0].shape[0])


@pytest.mark.parametrize("mix", [MixUp, CutMix])
def test_composes_with_mixup_and_cutmix(dls, mix):
    sizes = BatchSizes()
    learn = cskd_learner(dls, TinyNet(), lam=1.0, cbs=[mix(), sizes], opt_func=SGD, lr=0.01)
    assert learn.cskd.order < next(c for c in learn.cbs if isinstance(c, mix)).order
    learn.fit(1)
    assert sizes.sizes and all(s == dls.train.bs for s in sizes.sizes)   # mixing saw anchors only
    assert all(np.isfinite(v) for v in learn.recorder.values[-1][:2])


class StepCount(Callback):
    order = 100
    def before_fit(self): self.batches = self.steps = 0
    def after_loss(self):
        if self.training: self.batches += 1
    def after_step(self): self.steps += 1


class AccumulatedGrads(Callback):
    "Records each training batch's anchors/partners and the accumulated gradient at the first optimizer step."
    order = 99
    def __init__(self): self.batches, self.grads = [], None
    def after_loss(self):
        if self.training and self.grads is None:
            self.batches.append((self.xb[0].clone(), self.yb[0].clone(), self.learn.cskd.partner_xb[0].clone()))
    def before_step(self):
        if self.grads is None:
            self.grads = [p.grad.detach().clone() for p in self.learn.model.parameters()]
            self.weights = [p.detach().clone() for p in self.learn.model.parameters()]


@pytest.mark.parametrize("lam", [1.0, 3.0])
def test_composes_with_gradient_accumulation(dls, lam):
    "The accumulated gradient is that of the mean CS-KD loss over the accumulated batches: KD term scaled like CE."
    sc, rec = StepCount(), AccumulatedGrads()
    learn = cskd_learner(dls, TinyNet(), lam=lam, cbs=[GradientAccumulation(n_acc=2 * dls.train.bs), sc, rec],
                         opt_func=SGD, lr=0.01)
    learn.fit(1)
    assert sc.batches >= 4 and sc.steps == sc.batches // 2
    assert len(rec.batches) == 2            # the first step came after two batches, before any weight changed
    ref = TinyNet()
    with torch.no_grad():
        for p, w in zip(ref.parameters(), rec.weights): p.copy_(w)
    total = 0
    for xa, y, xp in rec.batches:
        with torch.no_grad(): partner = ref(xp)
        total = total + nn.functional.cross_entropy(ref(xa), y) + lam * class_wise_kd(ref(xa), partner, 4.0)
    (total / len(rec.batches)).backward()
    for g, p in zip(rec.grads, ref.parameters()):
        assert torch.allclose(g, p.grad, rtol=1e-4, atol=1e-6), (g - p.grad).abs().max()


class CPUMixedPrecision(Callback):
    "fastai's `MixedPrecision` (bf16) event for event, with CPU autocast: the partner pass runs in bf16 under it."
    order = 10
    def before_batch(self): self.ac = torch.autocast("cpu", dtype=torch.bfloat16); self.ac.__enter__()
    def after_pred(self): self.learn.pred = self.pred.float()
    def after_loss(self): self.ac.__exit__(None, None, None)
    def after_cancel_batch(self): self.ac.__exit__(None, None, None)


def test_kd_term_is_float32_under_bf16_autocast(dls, monkeypatch):
    "The KD term on bf16 logits (the MixedPrecision path) must be computed in float32, not in bf16."
    import cskd_fastai.callbacks.cskd as C
    seen = []
    stock = C.KD_TERMS["plain"]   # the published term, per anchor: CSKD takes its mean
    def recording_kd(a, p, y, T):
        per = stock(a, p, y, T)
        kd = per.mean()
        seen.append((p.dtype, kd.dtype, kd.item(), class_wise_kd(a.double(), p.double(), T).item()))
        return per
    monkeypatch.setitem(C.KD_TERMS, "plain", recording_kd)
    learn = cskd_learner(dls, TinyNet(), lam=3.0, temp=4.0, cbs=[CPUMixedPrecision()], opt_func=SGD, lr=0.5)
    learn.fit(2)
    assert seen and all(pd == torch.bfloat16 for pd, *_ in seen)          # the partner logits really were bf16
    assert all(kd_dtype == torch.float32 for _, kd_dtype, *_ in seen)
    # float32 math on the bf16 logits agrees with float64 to a few 1e-6 (T² = 16 times float32 rounding of the
    # log-softmax); log-softmax in bf16 misses by 1e-3 to 1e-1
    errs = [abs(kd - ref) for *_, kd, ref in seen]
    assert max(errs) < 3e-5, max(errs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fastai's MixedPrecision needs CUDA")
def test_composes_with_mixed_precision(image_folder):
    from fastai.callback.fp16 import MixedPrecision
    dls = make_dls(image_folder, device="cuda")
    learn = cskd_learner(dls, TinyNet(), lam=1.0, cbs=[MixedPrecision()], opt_func=SGD, lr=0.01)
    learn.fit(1)
    assert np.isfinite(learn.recorder.values[-1][0])


def test_lambda_schedules():
    assert CSKD(lam=3.0, lam_warmup=0.5).lam_at(0.25) == pytest.approx(1.5)
    assert CSKD(lam=3.0, lam_warmup=0.5).lam_at(0.75) == pytest.approx(3.0)
    assert CSKD(lam=SchedLin(0.0, 2.0)).lam_at(0.5) == pytest.approx(1.0)
    assert CSKD(lam=lambda p: 4 * p * (1 - p)).lam_at(0.5) == pytest.approx(1.0)
    assert CSKD(lam=2.0).lam_at(0.0) == 2.0


def test_stats_logged_as_columns_and_removed_after_fit(dls, tmp_path):
    learn = cskd_learner(dls, TinyNet(), lam=2.0, lam_warmup=1.0, opt_func=SGD, lr=0.01, path=tmp_path)
    learn.fit(3, cbs=[CSVLogger(fname="history.csv")])
    names = list(learn.recorder.metric_names)
    for col in ("train_ce", "train_kd", "cskd_lam", "partner_conf", "partner_entropy", "anchor_conf"):
        assert col in names
    import pandas as pd
    hist = pd.read_csv(tmp_path / "history.csv")
    assert list(hist.columns) == names
    lams = hist["cskd_lam"].tolist()
    assert lams == sorted(lams) and 0 < lams[0] < lams[-1] <= 2.0    # warm-up: λ grows over epochs
    assert ((hist["partner_conf"] > 0) & (hist["partner_conf"] <= 1)).all()
    assert (hist["partner_entropy"] <= np.log(3) + 1e-6).all()
    assert not any(getattr(m, "cskd_stat", False) for m in learn.metrics)   # the training statistics left with the fit
    assert not {m.name for m in learn.metrics} & {"train_ce", "train_kd", "cskd_lam", "partner_conf"}


def test_fit_with_callback_on_a_plain_learner(image_folder):
    from fastai.vision.all import Learner
    plain = make_dls(image_folder, paired=False)
    learn = Learner(plain, TinyNet(), loss_func=CrossEntropyLossFlat(), opt_func=SGD, lr=0.01)
    sizes = BatchSizes()
    learn.fit(1, cbs=[CSKD(lam=1.0), sizes])
    assert learn.dls is plain                                  # the learner is left as it was
    assert all(s == plain.train.bs for s in sizes.sizes)


EXPORT_CHECK = textwrap.dedent('''
    import sys
    from fastai.vision.all import load_learner, PILImage
    learn = load_learner(sys.argv[1])
    assert "cskd_fastai" not in sys.modules, "loading needed cskd_fastai"
    assert type(learn).__name__ == "Learner", type(learn)
    names = [type(c).__name__ for c in learn.cbs]
    assert not {"CSKD", "MixUp", "CutMix"} & set(names), names
    assert type(learn.dls.train).__name__ == "TfmdDL"
    cls, idx, probs = learn.predict(PILImage.create(sys.argv[2]))
    assert abs(float(probs.sum()) - 1) < 1e-5 and len(probs) == 3
    print("OK", cls)
''')


def test_export_loads_in_fresh_process(dls, image_folder, tmp_path):
    from torchvision.models import resnet18
    learn = cskd_learner(dls, resnet18, lam=1.0, cbs=[MixUp()], path=tmp_path, pretrained=False)
    learn.fit(1, 1e-3)
    learn.export("model.pkl")
    assert learn.cskd is not None and any(isinstance(c, MixUp) for c in learn.cbs)   # training cbs restored
    img = next((image_folder / "test" / "cat").iterdir())
    out = subprocess.run([sys.executable, "-c", EXPORT_CHECK, str(tmp_path / "model.pkl"), str(img)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1].startswith("OK")


@pytest.mark.parametrize("kwargs,msg", [(dict(lam=-1.0), "lam must be"), (dict(temp=0.0), "temp must be"),
                                        (dict(temp=-2.0), "temp must be"), (dict(lam_warmup=1.5), "lam_warmup")])
def test_bad_hyperparameters_fail_eagerly(dls, kwargs, msg):
    with pytest.raises(ValueError, match=msg): cskd_learner(dls, TinyNet(), **kwargs)
    with pytest.raises(ValueError, match=msg): CSKD(**kwargs)


def test_class_missing_from_train_is_reported(tmp_path):
    root = write_folder(tmp_path, {"train": {"cat": 4, "dog": 4}, "test": {"cat": 2, "fox": 2}})
    with pytest.raises(ValueError, match="validation set but not in the training set"):
        cskd_learner(make_dls(root), TinyNet(2))


def test_one_class_dataset_is_reported(tmp_path):
    root = write_folder(tmp_path, {"train": {"cat": 4}, "test": {"cat": 2}})
    with pytest.raises(ValueError, match="at least 2 classes"):
        cskd_learner(make_dls(root), TinyNet(1))


def test_progress_bars_leave_no_stray_fill_characters(dls, capsys):
    "fastprogress prints its fill character when a bar is created, to test the encoding; we check it silently."
    learn = cskd_learner(dls, TinyNet(), lam=1.0, opt_func=SGD, lr=0.01)
    learn.fit(1)                                  # with fastai's progress callback (output is not a terminal here)
    assert "\u2588" not in capsys.readouterr().out
