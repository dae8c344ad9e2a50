"Teacher KD beside CS-KD: eval-mode teacher under no_grad on the anchors, exact loss, class-list check."
from __future__ import annotations

import numpy as np
import pytest
import torch
from fastai.callback.core import Callback
from fastai.optimizer import SGD
from torch import nn

from cskd_fastai import CSKD, cskd_learner
from cskd_fastai.callbacks.teacher import TeacherKD
from conftest import write_folder, make_dls
from test_callback import TinyNet, np_kd, np_log_softmax, ToDouble


class Recompute(Callback):
    order = 100
    def __init__(self): self.rows = []
    def after_loss(self):
        if not self.training: return
        m, cb, t = self.learn.model, self.learn.cskd, self.learn.teacher_kd
        with torch.no_grad():
            za = m(self.learn.xb[0]).double().numpy(); zp = m(cb.partner_xb[0]).double().numpy()
            zt = t.teacher(self.learn.xb[0]).double().numpy()
        y = self.learn.yb[0].numpy()
        ce = float(-np_log_softmax(za)[np.arange(len(y)), y].mean())
        want = ce + cb.lam * np_kd(za, zp, cb.temp) + t.weight * np_kd(za, zt, t.temp)
        self.rows.append((self.learn.loss.item(), want))
        self.learn.loss = self.learn.loss.float()


def test_teacher_term_is_added_exactly(dls):
    teacher = TinyNet(bn=True).double()
    seen = []
    teacher.bn.register_forward_hook(lambda mod, i, o: seen.append((mod.training, i[0].shape[0], torch.is_grad_enabled())))
    rec = Recompute()
    tkd = TeacherKD(teacher, teacher_classes=list(dls.vocab), weight=0.7, temp=2.0)
    learn = cskd_learner(dls, TinyNet().double(), lam=1.5, cbs=[tkd, rec, ToDouble()], opt_func=SGD, lr=0.01)
    learn.fit(1)
    assert rec.rows
    for got, want in rec.rows: assert got == pytest.approx(want, abs=1e-6)
    train_calls = seen[::2]                                       # every other call is Recompute's own
    assert all(not training for training, _, _ in seen)            # the teacher is always in eval mode
    assert all(b == dls.train.bs and not grad for _, b, grad in train_calls)   # anchors only, no graph


def test_teacher_with_other_classes_is_rejected(dls):
    tkd = TeacherKD(TinyNet(), teacher_classes=["cat", "dog", "fox"])
    learn = cskd_learner(dls, TinyNet(), cbs=[tkd], opt_func=SGD, lr=0.01)
    with pytest.raises(ValueError, match="teacher classes differ"):
        learn.fit(1)


def test_teacher_from_a_cli_run(tmp_path):
    "End to end: train a teacher run, then a CS-KD + teacher student that reads it by run dir."
    import yaml
    from test_cli import cli, write_recipe
    from cskd_fastai.testing.replicas import make_imagefolder
    root = make_imagefolder(tmp_path / "d", n_per_class=6, n_classes=3, n_test_per_class=2)
    t_recipe = write_recipe(tmp_path / "t.yaml", root, epochs=1, methods=[dict(name="ce")])
    code, out = cli("train", t_recipe, "--out", tmp_path / "runs", "--no-progress")
    assert code == 0, out
    teacher_dir = tmp_path / "runs" / "tiny" / "ce" / "seed0"
    s_recipe = write_recipe(tmp_path / "s.yaml", root, epochs=1,
                            methods=[dict(name="cskd", lam=1.0, teacher=str(teacher_dir), teacher_weight=0.5)])
    code, out = cli("train", s_recipe, "--out", tmp_path / "runs2", "--no-progress")
    assert code == 0, out
    d = tmp_path / "runs2" / "tiny" / "cskd-lam1-T4+teacher" / "seed0"
    assert (d / "DONE").exists()
    assert yaml.safe_load((d / "recipe.yaml").read_text())["methods"][0]["teacher"] == str(teacher_dir)
