"""Methods as plug-ins: recipe configs told apart by name, PS-KD and Tf-KD against hand computations, the CS-KD
variants (decoupled, gated, in-batch), and every method training from a recipe."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from fastai.callback.core import Callback, CancelFitException
from fastai.callback.mixup import CutMix
from fastai.optimizer import SGD

from cskd_fastai import CSKD, cskd_learner, plain_learner
from cskd_fastai.callbacks import PSKD, StoredCSKD
from cskd_fastai.losses import decoupled_kd, informativeness, tckd_nckd, tf_kd_loss
from cskd_fastai.losses.softened_kl import softened_kl_per_sample
from cskd_fastai.recipe import Recipe
from conftest import make_dls
from test_callback import TinyNet, np_kd, np_log_softmax


def _recipe(methods) -> dict:
    return dict(name="m", dataset=dict(name="digits"), model=dict(arch="small_cnn"),
                train=dict(epochs=1, bs=4, lr=0.1), methods=methods)


# ---- configs ------------------------------------------------------------------------------------------------
def test_method_configs_are_told_apart_by_name():
    r = Recipe.model_validate(_recipe([{"name": "ce"}, {"name": "ps_kd"}, {"name": "tf_kd", "a": 0.95},
                                       {"name": "cskd", "lam": 3, "variant": "decoupled"},
                                       {"name": "label_smoothing", "smoothing": 0.2}]))
    assert [m.run_label for m in r.methods] == ["ce", "pskd-a0.8", "tfkd-a0.95-T20-w0.1", "cskd-lam3-T4-dec0-1", "ls0.2"]
    assert r.methods[1].needs_ids and r.methods[3].paired and not r.methods[0].paired
    for bad, words in (({"name": "ce", "lam": 3}, "Extra inputs"), ({"name": "tf_kd", "smoothing": 0.1}, "Extra inputs"),
                       ({"name": "cskd", "tckd_weight": 1.0}, "only apply to variant: decoupled"),
                       ({"name": "pskd"}, "does not match any of the expected tags")):
        with pytest.raises(Exception, match=words): Recipe.model_validate(_recipe([bad]))


def test_a_schedule_and_a_warmup_together_are_an_error():
    from cskd_fastai import warmup_schedule
    with pytest.raises(ValueError, match="not both"): CSKD(lam=warmup_schedule(3.0, 0.5), lam_warmup=0.5)
    assert CSKD(lam=warmup_schedule(3.0, 0.5)).lam_at(0.25) == pytest.approx(1.5)
    assert CSKD(lam=3.0, lam_warmup=0.5).lam_at(0.25) == pytest.approx(1.5)


# ---- Tf-KD ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,words", [(dict(a=1.5), "a .*in \\(0, 1\\)"), (dict(a=0.0), "in \\(0, 1\\)"),
                                      (dict(temp=0), "temp must be"), (dict(alpha=-1), "alpha must be"),
                                      (dict(alpha=2.0), "alpha .*in \\[0, 1\\]")])
def test_tf_kd_loss_refuses_bad_arguments_eagerly(kw, words):
    from cskd_fastai.losses import TfKDLoss
    with pytest.raises(ValueError, match=words): TfKDLoss(**kw)


@pytest.mark.parametrize("a,T,alpha", [(0.9, 20.0, 0.1), (0.99, 40.0, 0.5), (0.6, 1.0, 1.0)])
def test_tf_kd_matches_hand_computation(a, T, alpha):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 5, generator=g, dtype=torch.float64) * 3
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    zn, K = z.numpy(), 5
    pd = np.full((6, K), (1 - a) / (K - 1)); pd[np.arange(6), y.numpy()] = a
    t = np.exp(pd / T) / np.exp(pd / T).sum(1, keepdims=True)
    ls = np_log_softmax(zn)
    kl = (t * (np.log(t) - ls)).sum(1).mean()
    ce = -ls[np.arange(6), y.numpy()].mean()
    assert float(tf_kd_loss(z, y, a, T, alpha)) == pytest.approx((1 - alpha) * ce + alpha * kl, abs=1e-10)


# ---- PS-KD ----------------------------------------------------------------------------------------------------
class Targets(Callback):
    "Records (epoch, sample ids, soft targets, softmax of the predictions) of every training batch."
    order = 50
    def __init__(self): self.rows = []
    def after_loss(self):
        if self.training:
            self.rows.append((self.epoch, self.learn.pskd.idx.clone(), self.yb[0].clone(),
                              F.softmax(self.pred.detach().float(), -1).clone()))


def test_ps_kd_targets_are_last_epochs_predictions(image_folder):
    dls = make_dls(image_folder, paired=False)
    rec = Targets()
    learn = plain_learner(dls, TinyNet(), cbs=[PSKD(alpha_T=0.8), rec], opt_func=SGD, lr=0.05)
    learn.fit(3)
    n, c = len(dls.train_ds), dls.c
    last = {}
    labels = np.array([int(dls.train_ds[i][1]) for i in range(n)])
    for epoch, idx, t, p in rec.rows:
        alpha = 0.8 * (epoch + 1) / 3
        for i, row_t, row_p in zip(idx.tolist(), t, p):
            onehot = F.one_hot(torch.tensor(labels[i]), c).float()
            prev = last.get(i, onehot)                        # the label itself in the first epoch
            assert torch.allclose(row_t, (1 - alpha) * onehot + alpha * prev, atol=1e-6), (epoch, i)
        for i, row_p in zip(idx.tolist(), p): last[i] = row_p
    seen = sorted(i for e, idx, _, _ in rec.rows if e == 0 for i in idx.tolist())
    bs = dls.train.bs                                          # each sample at most once per epoch (drop_last drops
    assert len(set(seen)) == len(seen) == n - n % bs and set(seen) <= set(range(n))    # the ragged rest)
    assert learn.loss_func.__class__.__name__ != "SoftTargetCE"  # the learner is left as it was
    assert type(learn.dls.train).__name__ != "IndexedDL"


def test_ps_kd_store_precision_and_cutmix(image_folder):
    dls = make_dls(image_folder, paired=False)
    cb = PSKD(store_dtype=torch.float16)
    learn = plain_learner(dls, TinyNet(), cbs=[cb, CutMix(1.0)], opt_func=SGD, lr=0.05)
    learn.fit(2)
    n = len(dls.train_ds)                                   # drop_last leaves 1 of 21 out per epoch: after two
    assert cb.store.dtype == torch.float16 and int(cb.seen.sum()) >= n - 1     # epochs at most one is unseen
    assert torch.allclose(cb.store[cb.seen].float().sum(1), torch.ones(int(cb.seen.sum())), atol=1e-2)
    assert np.isfinite(learn.recorder.values[-1][0])
    with pytest.raises(ValueError, match="alpha_T"): PSKD(alpha_T=1.5)


@pytest.mark.parametrize("make_cb", [PSKD, StoredCSKD])
def test_export_leaves_per_sample_stores_out(image_folder, tmp_path, make_cb):
    "A callback added with add_cb (not fit(cbs=...)) stays with the learner; its N x C store must not reach export.pkl."
    from fastai.learner import load_learner
    learn = plain_learner(make_dls(image_folder, paired=False), TinyNet(), opt_func=SGD, lr=0.05, path=tmp_path)
    cb = make_cb(); learn.add_cb(cb)
    learn.fit(1)
    assert cb.store is not None and cb in learn.cbs
    learn.export("m.pkl")
    assert cb in learn.cbs                                               # put back after the export
    loaded = load_learner(tmp_path / "m.pkl")
    assert not [c for c in loaded.cbs if isinstance(c, (PSKD, StoredCSKD))]
    assert loaded.model(torch.zeros(2, 3, 16, 16)).shape == (2, learn.dls.c)


# ---- CS-KD variants ------------------------------------------------------------------------------------------
def test_decoupled_parts_add_up_to_the_kd_term():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(8, 6, generator=g, dtype=torch.float64) * 2, torch.randn(8, 6, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, 6, (8,), generator=g)
    tckd, nckd, w = tckd_nckd(s, t, y, 4.0)
    assert torch.allclose(16 * (tckd + w * nckd), softened_kl_per_sample(s, t, 4.0), atol=1e-10)
    # TCKD by hand: binary KL of (p_t[y], 1 - p_t[y]) against (p_s[y], 1 - p_s[y])
    ps, pt = F.softmax(s / 4, 1)[range(8), y], F.softmax(t / 4, 1)[range(8), y]
    hand = pt * torch.log(pt / ps) + (1 - pt) * torch.log((1 - pt) / (1 - ps))
    assert torch.allclose(tckd, hand, atol=1e-12)
    assert float(decoupled_kd(s, t, y, 4.0, 0.0, 1.0)) == pytest.approx(float(16 * nckd.mean()))
    assert float(decoupled_kd(s, t, y, 4.0, 2.0, 0.5)) == pytest.approx(float(16 * (2 * tckd + 0.5 * nckd).mean()))


def test_informativeness_gate():
    c = 10
    assert float(informativeness(torch.zeros(1, c), 4.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(informativeness(torch.tensor([[200.0] + [0.0] * (c - 1)]), 4.0)) == pytest.approx(1.0, abs=1e-6)
    z = torch.randn(5, c, dtype=torch.float64)
    p = F.softmax(z / 4, 1)
    assert torch.allclose(informativeness(z, 4.0), 1 + (p * p.log()).sum(1) / np.log(c), atol=1e-12)


class Calls(Callback):
    "Counts forward passes of the model and recomputes each variant's loss from the batch the loss saw."
    order = 100
    def __init__(self): self.forwards, self.checks = 0, []
    def before_fit(self):
        self.h = self.learn.model.register_forward_hook(lambda m, i, o: setattr(self, "forwards", self.forwards + 1))
    def after_fit(self): self.h.remove()
    def after_loss(self):
        if not self.training: return
        cb = self.learn.cskd
        lam = cb.lam_at(self.pct_train)
        if cb.variant == "in_batch":
            b = self.pred.shape[0] // 2
            a, p = self.pred[:b].double().detach().numpy(), self.pred[b:].double().detach().numpy()
            ce = float(F.cross_entropy(self.pred.double(), self.yb[0]))
            want = ce + lam * 0.5 * (np_kd(a, p, cb.temp) + np_kd(p, a, cb.temp))
        else:
            z, zp = self.pred.double(), cb.partner_pred.double()
            ce = float(F.cross_entropy(z, self.yb[0]))
            if cb.variant == "gated":
                kd = float((informativeness(zp, cb.temp) * softened_kl_per_sample(z, zp, cb.temp)).mean())
            else:
                kd = float(decoupled_kd(z, zp, self.yb[0], cb.temp, cb.tckd_weight, cb.nckd_weight))
            want = ce + lam * kd
        self.checks.append((float(self.learn.loss), want))


@pytest.mark.parametrize("variant,kw", [("decoupled", dict(tckd_weight=0.5, nckd_weight=2.0)), ("gated", {}),
                                        ("in_batch", {})])
def test_variants_compute_their_loss_and_passes(dls, variant, kw):
    chk = Calls()
    learn = cskd_learner(dls, TinyNet(), lam=2.0, temp=4.0, variant=variant, cbs=[chk], opt_func=SGD, lr=0.01)
    assert learn.cskd.variant == variant
    for k, v in kw.items(): setattr(learn.cskd, k, v)
    learn.fit(1)
    assert chk.checks and all(got == pytest.approx(want, rel=1e-4, abs=1e-5) for got, want in chk.checks)
    n_batches, n_valid = len(chk.checks), len(learn.dls.valid)
    train_forwards = chk.forwards - n_valid
    assert train_forwards == (n_batches if variant == "in_batch" else 2 * n_batches)   # no partner pass in-batch


def test_cskd_learner_variant_stored_and_refusals(image_folder):
    "variant='stored' gives StoredCSKD on plain batches; bad variants and a warm-up on 'stored' fail before any work."
    dls = make_dls(image_folder, paired=False)
    learn = cskd_learner(dls, TinyNet(), lam=2.0, temp=3.0, variant="stored", opt_func=SGD, lr=0.01)
    cb = learn.stored_cskd
    assert isinstance(cb, StoredCSKD) and (cb.lam, cb.temp) == (2.0, 3.0) and not hasattr(learn, "cskd")
    assert type(learn.dls.train).__name__ == "TfmdDL"                      # no PairedDL: no partner images
    learn.fit(2)
    assert int(cb.seen.sum()) >= len(dls.train_ds) - 1 and np.isfinite(learn.recorder.values[-1][0])
    with pytest.raises(ValueError, match="variant must be one of"): cskd_learner(dls, TinyNet(), variant="gate")
    with pytest.raises(ValueError, match="no lam_warmup"): cskd_learner(dls, TinyNet(), variant="stored", lam_warmup=0.5)


def test_in_batch_targets_are_detached():
    "Each half's KD target is the other half's prediction, detached: no gradient flows through a target."
    import warnings
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(8, 5, generator=g) * 2).requires_grad_()
    cb = CSKD(lam=1.0, temp=4.0, variant="in_batch")   # its plain term reads no labels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cb.pred = z
    (gz,) = torch.autograd.grad(cb._kd(), z)
    def kl(s, t): return F.kl_div(F.log_softmax(s / 4, 1), F.log_softmax(t / 4, 1), reduction="batchmean", log_target=True) * 16
    a, p = z[:4], z[4:]
    (want,) = torch.autograd.grad(0.5 * (kl(a, p.detach()) + kl(p, a.detach())), z)
    (attached,) = torch.autograd.grad(0.5 * (kl(a, p) + kl(p, a)), z)
    assert torch.allclose(gz, want, atol=1e-7) and not torch.allclose(gz, attached, atol=1e-4)


# ---- CS-KD with stored partner predictions ------------------------------------------------------------------
class StoredRows(Callback):
    "Records (epoch, anchor ids, partner ids, logits, labels, logged loss) of every training batch, and forward passes."
    order = 50
    def __init__(self): self.rows, self.forwards = [], 0
    def after_pred(self):
        if self.training: self.forwards += 1
    def after_loss(self):
        if self.training:
            cb = self.learn.stored_cskd
            self.rows.append((self.epoch, cb.idx.clone(), cb.partners.clone(), self.pred.detach().clone(),
                              self.yb[0].clone(), float(self.learn.loss)))


@pytest.mark.parametrize("lam,T,gated", [(2.0, 3.0, False), (1.0, 4.0, True)])
def test_stored_cskd_matches_hand_computation(image_folder, lam, T, gated):
    "Same-class partners, their logits the ones stored when they were last anchors, the loss recomputed by hand."
    dls = make_dls(image_folder, paired=False)
    rec = StoredRows()
    learn = plain_learner(dls, TinyNet(), cbs=[StoredCSKD(lam=lam, temp=T, gated=gated), rec], opt_func=SGD, lr=0.05)
    learn.fit(3)
    labels = np.array([int(dls.train_ds[i][1]) for i in range(len(dls.train_ds))])
    last, n_kd = {}, 0
    for epoch, idx, partners, z, y, logged in rec.rows:
        idx, partners, zn, yn = idx.numpy(), partners.numpy(), z.double().numpy(), y.numpy()
        assert (labels[partners] == labels[idx]).all() and (partners != idx).all()    # every class has > 1 image
        assert (labels[idx] == yn).all()
        ls = np_log_softmax(zn)
        ce = -ls[np.arange(len(yn)), yn].mean()
        kd = np.zeros(len(yn))
        for k, p in enumerate(partners):
            if p not in last: continue                                  # not yet seen: no term for this anchor
            lp, lq = np_log_softmax(last[p] / T), np_log_softmax(zn[k] / T)
            w = 1 - (-(np.exp(lp) * lp).sum()) / np.log(lp.shape[0]) if gated else 1.0
            kd[k] = w * T * T * (np.exp(lp) * (lp - lq)).sum()
            n_kd += 1
        assert logged == pytest.approx(ce + lam * kd.mean(), rel=1e-4, abs=1e-6), epoch
        for i, row in zip(idx, zn): last[i] = row                      # stored after this batch's loss
    assert n_kd > len(rec.rows)                                         # the KD term was really exercised
    assert rec.forwards == len(rec.rows)                                # one forward pass per step: CE's cost
    assert type(learn.dls.train).__name__ != "IndexedDL"                # the learner is left as it was
    assert not any(getattr(m, "cskd_stat", False) for m in learn.metrics)


def test_stored_cskd_gradient_is_ce_plus_the_kd_term(image_folder):
    "The backpropagated loss (loss_grad) is CE + λ·KD: its gradient matches autograd of the hand-built loss."
    dls = make_dls(image_folder, paired=False)
    cb = StoredCSKD(lam=3.0, temp=2.0, gated=False)
    learn = plain_learner(dls, TinyNet(), cbs=cb, opt_func=SGD, lr=0.05)
    learn.fit(1)                                                        # fills the store

    class Check(Callback):
        order = 60
        def after_loss(self):
            if not self.training: return
            x = self.xb[0]
            w = self.learn.model.fc.weight
            g = torch.autograd.grad(self.learn.loss_grad, w, retain_graph=True)[0]
            z = self.learn.model(x)
            seen = cb.partner_seen.float()      # the store as it was before this batch wrote into it
            assert bool(seen.any())             # after an epoch (drop_last skips a ragged rest) partners are stored
            want = F.cross_entropy(z, self.yb[0]) + 3.0 * (seen * softened_kl_per_sample(z, cb.partner_logits, 2.0)).mean()
            assert torch.allclose(g, torch.autograd.grad(want, w)[0], atol=1e-5)
            self.checked = True
            raise CancelFitException()
    chk = Check()
    learn.fit(1, cbs=chk)
    assert getattr(chk, "checked", False)


def test_stored_cskd_config():
    r = Recipe.model_validate(_recipe([{"name": "cskd_stored", "lam": 3}, {"name": "cskd_stored", "gated": False,
                                                                           "store": "float16"}]))
    assert [m.run_label for m in r.methods] == ["cskd-lam3-T4-stored-gated", "cskd-lam1-T4-stored-fp16"]
    assert r.methods[0].needs_ids and not r.methods[0].paired and r.methods[0].class_partners
    for bad, words in (({"name": "cskd_stored", "variant": "gated"}, "Extra inputs"),
                       ({"name": "cskd_stored", "temp": 0}, "temp must be"), ({"name": "cskd_stored", "lam": -1}, "lam must be")):
        with pytest.raises(Exception, match=words): Recipe.model_validate(_recipe([bad]))
    with pytest.raises(ValueError, match="does not compose with cutmix"):
        Recipe.model_validate(_recipe([{"name": "cskd_stored", "mix": "cutmix"}])).methods[0].callbacks(1)
    with pytest.raises(ValueError, match="temp"): StoredCSKD(temp=-1.0)


# ---- from a recipe, end to end ------------------------------------------------------------------------------
@pytest.mark.slow
def test_every_method_trains_from_a_recipe(tmp_path):
    from test_cli import cli
    from cskd_fastai.rundir import load_checkpoint
    from cskd_fastai.testing.replicas import make_imagefolder
    folder = make_imagefolder(tmp_path / "d", n_per_class=6, n_classes=3, n_test_per_class=2)
    methods = [{"name": "ps_kd"}, {"name": "tf_kd"}, {"name": "cskd", "variant": "decoupled"},
               {"name": "cskd", "variant": "in_batch"}, {"name": "cskd", "variant": "gated"},
               {"name": "tf_kd", "mix": "mixup", "label": "tfkd-mixup"}, {"name": "cskd_stored"}]
    rec = dict(name="all", dataset=dict(name="imagefolder", root=str(folder), image_size=16, valid_pct=0.25),
               model=dict(arch="small_cnn"), train=dict(epochs=2, bs=4, lr=0.05, schedule="one_cycle", augment="flip"),
               methods=methods)
    f = tmp_path / "r.yaml"; f.write_text(yaml.safe_dump(rec))
    code, out = cli("train", f, "--out", tmp_path / "o", "--no-progress")
    assert code == 0, out
    for label, facts in (("pskd-a0.8", {"alpha_T": 0.8}), ("tfkd-a0.9-T20-w0.1", {"a": 0.9, "temp": 20.0}),
                         ("cskd-lam1-T4-dec0-1", {"variant": "decoupled"}), ("cskd-lam1-T4-inbatch", {"variant": "in_batch"}),
                         ("cskd-lam1-T4-gated", {"variant": "gated"}), ("tfkd-mixup", {"mix": "mixup"})):
        run = tmp_path / "o" / "all" / label / "seed0"
        m = json.loads((run / "metrics.json").read_text())
        for k, v in facts.items(): assert m["facts"][k] == v, (label, k)
        assert 0 <= m["test"]["top1_err"] <= 1
    st = load_checkpoint(tmp_path / "o" / "all" / "pskd-a0.8" / "seed0")
    assert st["cbs"]["PSKD"]["store"].shape[1] == 3 and bool(st["cbs"]["PSKD"]["seen"].all())
    st = load_checkpoint(tmp_path / "o" / "all" / "cskd-lam1-T4-stored-gated" / "seed0")
    assert st["cbs"]["StoredCSKD"]["store"].shape[1] == 3 and bool(st["cbs"]["StoredCSKD"]["seen"].any())


# ---- precision: every loss term computes in at least float32 ------------------------------------------------
def _loss_terms():
    from cskd_fastai.losses import class_wise_kd, soft_cross_entropy, teacher_kd
    y = torch.tensor([0, 2, 1, 2])
    soft = F.one_hot(y, 5).float() * 0.7 + 0.06
    return [("class_wise_kd", lambda s, t: class_wise_kd(s, t, 4.0)),
            ("softened_kl_per_sample", lambda s, t: softened_kl_per_sample(s, t, 4.0)),
            ("decoupled_kd", lambda s, t: decoupled_kd(s, t, y, 4.0, 0.5, 1.0)),
            ("informativeness", lambda s, t: informativeness(t, 4.0)),
            ("tf_kd_loss", lambda s, t: tf_kd_loss(s, y)),
            ("soft_cross_entropy", lambda s, t: soft_cross_entropy(s, soft)),
            ("teacher_kd", lambda s, t: teacher_kd(s, t, 4.0))]


@pytest.mark.parametrize("name, fn", _loss_terms(), ids=[n for n, _ in _loss_terms()])
def test_loss_terms_upcast_low_precision_logits(name, fn):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 5, generator=g) * 3, torch.randn(4, 5, generator=g) * 3
    sb, tb = s.bfloat16(), t.bfloat16()
    out = fn(sb, tb)
    assert out.dtype == torch.float32, f"{name} computed in {out.dtype}"
    # the same numbers as float32 on the bf16-rounded inputs: the upcast happens before any arithmetic
    assert torch.allclose(out, fn(sb.float(), tb.float()), rtol=1e-6, atol=1e-7)
    assert fn(s.double(), t.double()).dtype == torch.float64        # float64 is never downcast
